r"""The trainer of a curriculum: a CNF's intermediate spaces and the training through them."""

__all__ = [
    "Curriculum",
    "max_norm",
]

import os
import warnings

from collections.abc import Callable, Sequence
from functools import partial

import torch

from torch import Tensor
from torch.optim import Optimizer
from torchdiffeq import odeint as odeint_dense
from zuko.flows.continuous import FFJTransform
from zuko.lazy import Flow, LazyDistribution
from zuko.utils import odeint

from .run import Run
from .settings import Callback, Settings
from .spaces import Spaces
from .. import distributed
from ..report import progress_bar
from ..utils import check_context, check_samples, check_sizes


def max_norm(error: Tensor) -> Tensor:
    r"""The largest scaled error: zuko's step-size criterion."""

    return error.abs().max()


class Curriculum:
    r"""Creates a curriculum through the intermediate spaces of a continuous normalizing
    flow (CNF).

    The CNF maps the data to a standard Gaussian by the ODE
    :math:`\frac{du}{dt} = g_\phi(u, t, c)` from :math:`t = 0` to :math:`t = 1`. The
    intermediate space at :math:`v \in [0, 1]` is

    .. math:: u_v(x) = x + \int_0^v g_\phi(u_s(x), s, c) \, ds ,

    so that :math:`u_0(x) = x` and :math:`u_1(x)` is the CNF's latent. A student model
    is trained on :math:`u_{v_1}, u_{v_2}, \dots, u_{v_T}` for evenly spaced
    :math:`1 = v_1 > \dots > v_T = 0`, one short phase per space, then fine-tuned on the
    data.

    The CNF is the user's, trained or not (:meth:`fit_teacher` trains it). Its own
    vector field and tolerances are reused: :math:`u_v` is the solution of the same ODE
    with the same Dormand-Prince method and step-size criterion as
    :py:`cnf(c).transform`.

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023)
        | https://arxiv.org/abs/2306.02939

        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
        | Models (Grathwohl et al., 2018)
        | https://arxiv.org/abs/1810.01367

    Arguments:
        cnf: A :class:`zuko.flows.CNF`, conditional or not.
        context: The number of context features of the CNF, as given to
            :py:`zuko.flows.CNF(features, context)` (checked by a call of its vector
            field).

    Example:
        >>> import zuko
        >>> from contmix import GMM
        >>> cnf = zuko.flows.CNF(2, hidden_features=(16,), atol=1e-4, rtol=1e-3)
        >>> curriculum = Curriculum(cnf)
        >>> x = torch.randn(64, 2)
        >>> spaces = curriculum.spaces(x, steps=5)
        >>> spaces.v
        tensor([1.0000, 0.7500, 0.5000, 0.2500, 0.0000])
        >>> torch.equal(spaces.u[-1], x)
        True
        >>> gmm = GMM(features=2, components=3)
        >>> settings = Settings(finetune_epochs=1)
        >>> losses = curriculum.train(gmm, spaces, settings=settings, progress=False)
        >>> len(losses)  # one epoch per space, then one of fine-tuning
        6
    """

    def __init__(self, cnf: Flow, context: int = 0) -> None:
        if not isinstance(cnf, Flow) or not isinstance(cnf.transform, FFJTransform):
            raise TypeError(
                f"cnf must be a zuko.flows.CNF (a Flow with an FFJTransform), got "
                f"{type(cnf).__name__}: build one with zuko.flows.CNF(features, context)."
            )

        self.cnf = cnf
        self.features = cnf.base().event_shape[-1]
        self.context = context
        self._check_context()

    def _check_context(self) -> None:
        r"""Raises a :class:`ValueError` unless the CNF's vector field takes
        ``context`` context features, by one call on a zero sample."""

        if not isinstance(self.context, int) or self.context < 0:
            raise ValueError(f"context must be a non-negative integer, got {self.context!r}.")

        t = self.cnf.transform.times[0]
        x = t.new_zeros(1, self.features)
        c = t.new_zeros(1, self.context) if self.context else None

        try:
            with torch.no_grad():
                self.cnf.transform.f(t, x, c)
        except RuntimeError as error:
            raise ValueError(
                f"The CNF's vector field does not take {self.features} features and "
                f"{self.context} context features: pass the context it was built with, "
                "Curriculum(cnf, context=C) for zuko.flows.CNF(features, C)."
            ) from error

    def _check(self, x: Tensor, c: Tensor | None) -> Tensor | None:
        r"""Checks the samples and contexts, and gives one context per sample."""

        reference = self.cnf.transform.times
        check_samples(x, self.features, 1, reference)

        if x.dtype != reference.dtype:
            raise TypeError(
                f"x is {x.dtype} but the CNF is {reference.dtype}: convert one of them, "
                f"e.g. cnf.to({x.dtype})."
            )

        check_context(c, self.context)

        if c is not None:
            if c.dim() == 1:
                c = c.expand(len(x), -1)
            elif c.shape[:-1] != x.shape[:-1]:
                raise ValueError(
                    f"c must have shape ({len(x)}, {self.context}) or ({self.context},), "
                    f"got {tuple(c.shape)}."
                )

        return c

    def _times(self, v: Tensor) -> Tensor:
        r"""Maps :math:`v \in [0, 1]` to the CNF's integration time."""

        t0, t1 = self.cnf.transform.times
        return t0 + v * (t1 - t0)

    def fit_teacher(
        self,
        x: Tensor,
        c: Tensor | None = None,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 1e-3,
        optimizer: Callable[..., Optimizer] = torch.optim.Adam,
        progress: bool | None = True,
        checkpoint: str | os.PathLike | None = None,
    ) -> list[float]:
        r"""Trains the CNF by maximum likelihood on :math:`x` with minibatches.

        .. math:: \max_\phi \frac{1}{N} \sum_n \log p_\phi(x_n \mid c_n)

        It is the curriculum's own training (:meth:`train`) with the data as its only
        space and no noise: the same batches, and the same checkpoints. With a
        ``checkpoint`` path, the CNF, the optimizer, the epoch, the losses and the
        random states are saved after every epoch, and a run that finds the file
        resumes from it, to end with the CNF of an uninterrupted run (with the
        Hutchinson trace estimator too, whose draws come from the saved global
        generator).

        Inside :func:`~contmix.distributed.sharded`, ``x`` is this process's shard: the
        CNF is first copied from the process of rank 0, each step draws its batch from
        every shard and the gradients are summed over the processes, as in
        :meth:`train`, so that every process holds the same CNF. With the exact
        log-determinant (zuko's default), the CNF draws no random numbers.

        Arguments:
            x: The samples, with shape :math:`(N, D)`.
            c: Their contexts, with shape :math:`(N, C)`, or :py:`None`.
            epochs: The number of passes over the data.
            batch_size: The minibatch size.
            lr: The learning rate.
            optimizer: An optimizer class or factory, called as
                :py:`optimizer(parameters, lr=lr)`.
            progress: Whether to show a progress bar (on the process of rank 0; see
                :func:`~contmix.report.progress_bar`).
            checkpoint: A file to save to and resume from, or :py:`None`.

        Returns:
            The mean negative log-likelihood of each epoch.
        """

        c = self._check(x, c)
        check_sizes(epochs=epochs, batch_size=batch_size)

        settings = Settings(
            epochs_per_space=1,
            finetune_epochs=epochs - 1,
            optimizer=optimizer,
            lr=lr,
            batch_size=batch_size,
            noise=0.0,
            strategy=None,
        )
        run = Run(self.cnf, Spaces(x.new_zeros(1), x[None], c), settings, checkpoint)
        run.start()
        show = progress if distributed.rank() == 0 else False
        bar = progress_bar(epochs, "CNF", show, initial=run.epoch)

        with bar:
            while not run.done:
                loss = run.run_epoch()
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")

        self.cnf.eval()

        return run.history

    @torch.no_grad()
    def transform(self, x: Tensor, v: float | Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the intermediate space :math:`u_v(x)` for one :math:`v`, by one
        solve with the CNF's own solver (:func:`zuko.utils.odeint`) from 0 to :math:`v`.

        For all spaces at once, :meth:`spaces` is much faster.

        Arguments:
            x: The samples, with shape :math:`(N, D)`.
            v: The time :math:`v \in [0, 1]`.
            c: Their contexts, with shape :math:`(N, C)`, or :py:`None`.

        Returns:
            :math:`u_v(x)`, with shape :math:`(N, D)`.

        Example:
            >>> import zuko
            >>> cnf = zuko.flows.CNF(2, hidden_features=(16,), atol=1e-4, rtol=1e-3)
            >>> x = torch.randn(64, 2)
            >>> z = Curriculum(cnf).transform(x, 1.0)  # the latent, cnf().transform(x)
            >>> torch.allclose(z, cnf().transform(x), atol=1e-5)
            True
        """

        c = self._check(x, c)

        if not 0 <= v <= 1:
            raise ValueError(f"v must be in [0, 1], got {float(v)}.")
        if v == 0:
            return x.clone()

        transform = self.cnf.transform
        f = partial(transform.f, c=c)
        t0 = self._times(torch.zeros((), dtype=x.dtype, device=x.device))
        t = self._times(torch.as_tensor(v, dtype=x.dtype, device=x.device))

        return odeint(f, x, t0, t, (), transform.atol, transform.rtol)

    @torch.no_grad()
    def spaces(
        self,
        x: Tensor,
        c: Tensor | None = None,
        steps: int = 51,
        jitter: float = 0.0,
        chunk_size: int = 4096,
        *,
        dtype: torch.dtype | None = None,
        augment: float | None = None,
    ) -> Spaces:
        r"""Returns the data in the spaces :math:`u_v(x)` for :math:`T` evenly spaced
        :math:`v` from 1 (the Gaussian) to 0 (the data).

        The ODE is solved once per chunk of samples, with every :math:`v` as an output
        time (Dormand-Prince with dense output, the CNF's tolerances and zuko's
        step-size criterion). The last space is :math:`x` itself, not a solution.

        As in Appendix B of Bender et al. (2023), the data can be jittered before
        mapping, by a noise drawn once and shared by all spaces,

        .. math:: \tilde{x} = x + a \, \sigma \odot \epsilon ,
            \quad \epsilon \sim \mathcal{N}(0, I) ,

        where :math:`\sigma` is the standard deviation of each feature and :math:`a` is
        ``jitter`` (the paper uses 0.01 to 0.1); the spaces are then those of
        :math:`\tilde{x}`.

        Inside :func:`~contmix.distributed.sharded`, ``x`` is this process's shard:
        each process maps its own samples, and only the standard deviations
        :math:`\sigma` of the jitter are computed over the shards
        (:func:`~contmix.distributed.std`).

        Arguments:
            x: The samples, with shape :math:`(N, D)`.
            c: Their contexts, with shape :math:`(N, C)` or :math:`(C,)`, or :py:`None`.
            steps: The number of spaces :math:`T \geq 2`, both ends included.
            jitter: The relative scale :math:`a` of the noise added before mapping.
            chunk_size: The number of samples per ODE solve (memory).
            dtype: The dtype the spaces are stored in, that of :math:`x` if
                :py:`None`. The solves run in the dtype of :math:`x`; a lower
                precision stores the spaces in less memory, e.g. :py:`torch.float16`
                in half that of float32 (51 spaces of 60,000 images of 784 pixels take
                4.8 GB instead of 9.6 GB), at a rounding of :math:`2^{-11}` relative to
                each value, and :meth:`train` casts every batch to the model's dtype.
                Spaces beyond the dtype's range raise an error.
            augment: The former name of ``jitter`` (deprecated).

        Returns:
            The spaces, with :math:`v` of shape :math:`(T,)` and :math:`u` of shape
            :math:`(T, N, D)`.
        """

        if augment is not None:
            warnings.warn(
                "spaces(augment=a) is now spaces(jitter=a): augment will be removed.",
                FutureWarning,
                stacklevel=3,
            )
            jitter = augment

        c = self._check(x, c)

        if steps < 2:
            raise ValueError(f"steps must be at least 2 (the Gaussian and the data), got {steps}.")
        if jitter < 0:
            raise ValueError(f"jitter must be non-negative, got {jitter}.")
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}.")

        if jitter > 0:
            x = x + jitter * distributed.std(x) * torch.randn_like(x)

        transform = self.cnf.transform
        v = torch.linspace(1, 0, steps, dtype=x.dtype, device=x.device)
        t = self._times(v.flip(0))
        u = x.new_empty(steps, *x.shape, dtype=dtype)

        for start in range(0, len(x), chunk_size):
            index = slice(start, start + chunk_size)
            f = partial(transform.f, c=None if c is None else c[index])
            u[:, index] = odeint_dense(
                f,
                x[index],
                t,
                rtol=transform.rtol,
                atol=transform.atol,
                method="dopri5",
                options={"norm": max_norm},
            ).flip(0)

        u[-1] = x

        if dtype is not None and not u.isfinite().all():  # x itself is finite
            raise ValueError(
                f"The spaces exceed the range of {u.dtype}: standardize x, or store them in "
                "a wider dtype."
            )

        meta = {"jitter": jitter, "atol": transform.atol, "rtol": transform.rtol}

        return Spaces(v, u, c, meta)

    def train(
        self,
        model: LazyDistribution,
        x: Tensor | Spaces,
        c: Tensor | None = None,
        settings: Settings | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint: str | os.PathLike | None = None,
        progress: bool | None = True,
    ) -> list[float]:
        r"""Trains a model through the curriculum, by maximum likelihood.

        The model is first initialized on the Gaussian space :math:`u_1` (when it has an
        ``initialize`` method and ``settings.strategy`` is not :py:`None`), then trained
        for ``settings.epochs_per_space`` epochs on each space from :math:`v = 1` to
        :math:`v = 0`, then for ``settings.finetune_epochs`` on the data, minimizing the
        loss of :class:`~contmix.curriculum.settings.Settings` (the negative
        log-likelihood of the noised inputs, plus an optional regularizer).

        With a ``checkpoint`` path, the model, the optimizer, the position in the
        schedule and the random states are saved after the initialization and after
        every epoch; if the file exists when training starts, training resumes from it,
        and ends with the same model as an uninterrupted run with the same seed. The
        spaces are not saved there: pass the same data again (or save the spaces with
        :meth:`~contmix.curriculum.spaces.Spaces.save`).

        Inside :func:`~contmix.distributed.sharded`, the spaces are this process's shard
        (e.g. from :meth:`spaces` called on the shard, inside the same context). The
        model is initialized on the Gaussian space of all shards (by the sharded EM and
        k-means of the models that use them), then copied from the process of rank 0
        to the others; every step draws its batch from each shard (one batch per step
        per process, the ``settings.batch_size`` samples of a step split over the processes by
        their shard sizes) and the gradients of the loss of the whole batch are summed
        over the processes (:func:`~contmix.distributed.all_reduce_gradients`), so
        that every process holds the same model throughout. Only the process of rank 0
        writes the checkpoint, which must be readable by all (a shared file system);
        all of them resume from it. As with any sharded step, seed the global random
        generator alike on every process; the batches and the noise are drawn from a
        generator seeded per epoch and per process.

        Arguments:
            model: Any lazy distribution (a contmix model, a zuko flow), conditional
                when the spaces have contexts.
            x: The :class:`~contmix.curriculum.spaces.Spaces`, or the samples, with
                shape :math:`(N, D)`, mapped by :meth:`spaces` with its defaults (call
                :meth:`spaces` for others).
            c: The contexts, with shape :math:`(N, C)`, when ``x`` is a tensor.
            settings: The schedule, the optimizer and the loss
                (:class:`~contmix.curriculum.settings.Settings`), :py:`Settings()` if
                :py:`None`.
            callbacks: Functions called as :py:`callback(model, info)` after every
                optimizer step, where ``info`` has the keys ``"step"``, ``"epoch"``,
                ``"space"`` (the index of :math:`v`), ``"v"`` and ``"loss"``.
            checkpoint: A file to save to and resume from, or :py:`None`.
            progress: Whether to show a progress bar (on the process of rank 0; see
                :func:`~contmix.report.progress_bar`).

        Returns:
            The mean loss of each epoch of the schedule (regularizer included).
        """

        if not isinstance(model, LazyDistribution):
            raise TypeError(
                f"model must be a zuko LazyDistribution, got {type(model).__name__}: pass "
                "the module itself (not wrapped in DistributedDataParallel; inside "
                "contmix.distributed.sharded() the gradients are summed over processes)."
            )
        if isinstance(c, Settings):
            raise TypeError("The third argument is the context c: pass settings=Settings(...).")
        if settings is None:
            settings = Settings()
        elif not isinstance(settings, Settings):
            raise TypeError(
                f"settings must be a contmix.curriculum.Settings, got {type(settings).__name__}."
            )

        if isinstance(x, Spaces):
            if c is not None:
                raise ValueError("Pass the contexts with the spaces, Spaces(v, u, c), not as c.")
            spaces = x
        else:
            spaces = self.spaces(x, c)

        run = Run(model, spaces, settings, checkpoint)
        run.start()
        show = progress if distributed.rank() == 0 else False
        bar = progress_bar(len(run.plan), "curriculum", show, initial=run.epoch)

        with bar:
            while not run.done:
                loss = run.run_epoch(callbacks)
                bar.update()
                bar.set_postfix(v=f"{run.v[run.plan[run.epoch - 1]]:.2f}", loss=f"{loss:.4f}")

        return run.history
