r"""The curriculum through spaces: a continuous normalizing flow as the map from the data
to a standard Gaussian, and training back through its intermediate spaces.

A :class:`zuko.flows.CNF` transports the data :math:`x` to its latent
:math:`z \sim \mathcal{N}(0, I)` along the ODE :math:`\dot{u} = g(u, t)`. Integrated only
up to a time :math:`v \in [0, 1]`, it gives the intermediate space :math:`u_v(x)`, with
:math:`u_0(x) = x` and :math:`u_1(x) = z`. A mixture is first fitted on :math:`u_1`, where
the data is a standard Gaussian, then trained on :math:`u_v` for :math:`v` going from 1 to
0 in small steps, each space a small perturbation of the last, and finally fine-tuned on
the data (Bender et al., 2023, Section 3.3).
"""

__all__ = [
    "Curriculum",
    "Spaces",
]

import math
import os

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torch import Tensor
from torch.distributions import Distribution
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchdiffeq import odeint as odeint_dense
from zuko.flows.continuous import FFJTransform
from zuko.lazy import Flow, LazyDistribution
from zuko.utils import odeint

from . import distributed
from .utils import check_context, check_samples

Callback = Callable[[nn.Module, dict], None]
Regularizer = Callable[[nn.Module, Distribution, Tensor], Tensor]
Scheduler = Callable[[Optimizer, int], LRScheduler]


def max_norm(error: Tensor) -> Tensor:
    r"""The largest scaled error: zuko's step-size criterion."""

    return error.abs().max()


def std(x: Tensor) -> Tensor:
    r"""The standard deviation of each feature, over all shards inside
    :func:`~contmix.distributed.sharded`."""

    if not distributed.is_sharded():
        return x.std(dim=0)

    squares = distributed.all_reduce((x - distributed.mean(x)).square().sum(dim=0))

    return (squares / (distributed.samples(x) - 1)).sqrt()


def batches(x: Tensor, samples: int, batch_size: int) -> tuple[tuple[Tensor, ...], Tensor, Any]:
    r"""Returns the indices of the batches of one epoch in this shard, the sizes of the
    whole batches (over all shards, when sharded) and the random generator of the epoch.

    There are :math:`\lceil N / B \rceil` batches, for :math:`N` samples in all
    (``samples``) and a batch size :math:`B`; each shard is split evenly into as many
    of them, in a random order drawn from a generator seeded from the global one and
    the rank of the process. Batches empty on every shard are dropped.
    """

    seed = torch.randint(2**62, ()).item() + distributed.rank()
    generator = torch.Generator(x.device).manual_seed(seed)

    order = torch.randperm(len(x), generator=generator, device=x.device)
    indices = order.tensor_split(math.ceil(samples / batch_size))
    sizes = distributed.all_reduce(torch.tensor([len(i) for i in indices], device=x.device))
    keep = sizes > 0  # a batch is empty on every shard when they all are small
    indices = tuple(i for i, k in zip(indices, keep.tolist(), strict=True) if k)

    return indices, sizes[keep], generator


def progress_bar(total: int, initial: int = 0, enabled: bool = True):
    r"""Returns a :mod:`tqdm` progress bar (disabled when ``enabled`` is false)."""

    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        if enabled:
            raise ImportError(
                "The progress bar needs tqdm: pip install tqdm, or pass progress=False."
            ) from error
        return None

    return tqdm(total=total, initial=initial, disable=not enabled, leave=False)


@dataclass
class Spaces:
    r"""The data in the intermediate spaces :math:`u_v(x)` of a curriculum.

    Iterating gives the pairs :math:`(v, u_v(x))` in the order of the curriculum, from
    :math:`v = 1` (the Gaussian) to :math:`v = 0` (the data).

    Arguments:
        v: The times :math:`1 = v_1 > \dots > v_T = 0`, with shape :math:`(T,)`.
        u: The spaces :math:`u_{v_t}(x)`, with shape :math:`(T, N, D)`.
        c: The contexts of the samples, with shape :math:`(N, C)`, or :py:`None`.
        meta: How the spaces were made (tolerances, augmentation).

    Example:
        >>> spaces = Spaces(torch.linspace(1, 0, 3), torch.randn(3, 10, 2))
        >>> [tuple(u.shape) for v, u in spaces]
        [(10, 2), (10, 2), (10, 2)]
    """

    v: Tensor
    u: Tensor
    c: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.v.dim() != 1 or self.u.dim() != 3 or len(self.v) != len(self.u):
            raise ValueError(
                f"v must have shape (T,) and u shape (T, N, D), got {tuple(self.v.shape)} "
                f"and {tuple(self.u.shape)}."
            )
        if len(self.v) > 1 and not (self.v[1:] < self.v[:-1]).all():
            raise ValueError("v must decrease, from the Gaussian (v = 1) to the data (v = 0).")
        if self.c is not None and self.c.shape[:-1] != self.u.shape[1:2]:
            raise ValueError(
                f"c must have shape ({self.u.shape[1]}, C), one context per sample, "
                f"got {tuple(self.c.shape)}."
            )

    def __len__(self) -> int:
        return len(self.v)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return zip(self.v, self.u, strict=True)

    def save(self, path: str | os.PathLike) -> None:
        r"""Saves the spaces to ``path`` with :func:`torch.save`."""

        torch.save({"v": self.v, "u": self.u, "c": self.c, "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = None) -> "Spaces":
        r"""Loads spaces saved by :meth:`save`."""

        state = torch.load(path, map_location=map_location, weights_only=True)
        missing = {"v", "u", "c", "meta"} - set(state)

        if missing:
            raise ValueError(f"{path} is not a saved Spaces: it lacks {sorted(missing)}.")

        return cls(**state)


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
        >>> losses = curriculum.train(gmm, spaces, finetune_epochs=1, progress=False)
        >>> len(losses)  # one epoch per space, then one of fine-tuning
        6
    """

    def __init__(self, cnf: Flow) -> None:
        if not isinstance(cnf, Flow) or not isinstance(cnf.transform, FFJTransform):
            raise TypeError(
                f"cnf must be a zuko.flows.CNF (a Flow with an FFJTransform), got "
                f"{type(cnf).__name__}: build one with zuko.flows.CNF(features, context)."
            )

        self.cnf = cnf
        self.features = cnf.base().event_shape[-1]
        inputs = cnf.transform.ode[0].in_features
        self.context = inputs - self.features - 2 * len(cnf.transform.freqs)

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
        progress: bool = True,
    ) -> list[float]:
        r"""Trains the CNF by maximum likelihood on :math:`x` with minibatches.

        .. math:: \max_\phi \frac{1}{N} \sum_n \log p_\phi(x_n \mid c_n)

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
            progress: Whether to show a progress bar.

        Returns:
            The mean negative log-likelihood of each epoch.
        """

        c = self._check(x, c)
        samples = distributed.samples(x)
        distributed.broadcast(*self.cnf.state_dict().values())
        optim = optimizer(self.cnf.parameters(), lr=lr)
        bar = progress_bar(epochs, enabled=progress and distributed.rank() == 0)
        history = []

        self.cnf.train()

        for epoch in range(epochs):
            total = torch.zeros((), dtype=x.dtype, device=x.device)
            indices, sizes, _ = batches(x, samples, batch_size)

            for index, size in zip(indices, sizes.to(x), strict=True):
                cb = None if c is None else c[index]
                loss = -self.cnf(cb).log_prob(x[index]).sum() / size

                optim.zero_grad()
                loss.backward()
                (loss,) = distributed.all_reduce_gradients(self.cnf.parameters(), loss.detach())
                optim.step()

                total = total + loss * size

            history.append((total / samples).item())

            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{history[-1]:.4f}")

            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"The CNF's loss is not finite at epoch {epoch}: lower the learning rate."
                )

        if bar is not None:
            bar.close()

        self.cnf.eval()

        return history

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
        augment: float = 0.0,
        chunk_size: int = 4096,
    ) -> Spaces:
        r"""Returns the data in the spaces :math:`u_v(x)` for :math:`T` evenly spaced
        :math:`v` from 1 (the Gaussian) to 0 (the data).

        The ODE is solved once per chunk of samples, with every :math:`v` as an output
        time (Dormand-Prince with dense output, the CNF's tolerances and zuko's
        step-size criterion). The last space is :math:`x` itself, not a solution.

        As in Appendix B of Bender et al. (2023), an augmentation shared by all spaces
        can be drawn before mapping,

        .. math:: \tilde{x} = x + a \, \sigma \odot \epsilon ,
            \quad \epsilon \sim \mathcal{N}(0, I) ,

        where :math:`\sigma` is the standard deviation of each feature and :math:`a` is
        ``augment`` (the paper uses 0.01 to 0.1); the spaces are then those of
        :math:`\tilde{x}`.

        Inside :func:`~contmix.distributed.sharded`, ``x`` is this process's shard:
        each process maps its own samples, and only the standard deviations
        :math:`\sigma` of the augmentation are summed over the shards.

        Arguments:
            x: The samples, with shape :math:`(N, D)`.
            c: Their contexts, with shape :math:`(N, C)` or :math:`(C,)`, or :py:`None`.
            steps: The number of spaces :math:`T \geq 2`, both ends included.
            augment: The relative scale :math:`a` of the noise added before mapping.
            chunk_size: The number of samples per ODE solve (memory).

        Returns:
            The spaces, with :math:`v` of shape :math:`(T,)` and :math:`u` of shape
            :math:`(T, N, D)`.
        """

        c = self._check(x, c)

        if steps < 2:
            raise ValueError(f"steps must be at least 2 (the Gaussian and the data), got {steps}.")
        if augment < 0:
            raise ValueError(f"augment must be non-negative, got {augment}.")

        if augment > 0:
            x = x + augment * std(x) * torch.randn_like(x)

        transform = self.cnf.transform
        v = torch.linspace(1, 0, steps, dtype=x.dtype, device=x.device)
        t = self._times(v.flip(0))
        u = x.new_empty(steps, *x.shape)

        for index in torch.arange(len(x), device=x.device).split(chunk_size):
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

        meta = {"augment": augment, "atol": transform.atol, "rtol": transform.rtol}

        return Spaces(v, u, c, meta)

    def train(
        self,
        model: LazyDistribution,
        x: Tensor | Spaces,
        c: Tensor | None = None,
        steps: int = 51,
        augment: float = 0.0,
        epochs_per_space: int = 1,
        finetune_epochs: int = 10,
        optimizer: Callable[..., Optimizer] = torch.optim.Adam,
        lr: float = 1e-3,
        batch_size: int = 256,
        noise: float = 0.01,
        strategy: str | None = "random",
        callbacks: Sequence[Callback] = (),
        checkpoint: str | os.PathLike | None = None,
        progress: bool = True,
        regularizer: Regularizer | None = None,
        scheduler: Scheduler | None = None,
    ) -> list[float]:
        r"""Trains a model through the curriculum, by maximum likelihood.

        The model is first initialized on the Gaussian space :math:`u_1` (when it has an
        ``initialize`` method), then trained for ``epochs_per_space`` epochs on each
        space from :math:`v = 1` to :math:`v = 0`, then for ``finetune_epochs`` on the
        data, minimizing

        .. math:: -\frac{1}{|B|} \sum_{n \in B} \log p(u_v(x_n) + \sigma \epsilon_n \mid c_n),
            \quad \epsilon_n \sim \mathcal{N}(0, I) ,

        with a small noise :math:`\sigma` (``noise``, 0.01 in the paper) on the inputs in
        every space, plus an optional ``regularizer(model, d, x)`` of the batch, where
        ``d`` is the model's distribution that gave the likelihood: e.g.
        :py:`lambda model, d, x: -0.1 * model.entropy(x, d=d)` for the entropy across
        the trajectories of a :class:`~contmix.HierarchicalCPMM`, which the paper finds
        helpful for clustering. One optimizer runs through the whole schedule.

        With a ``checkpoint`` path, the model, the optimizer, the position in the
        schedule and the random states are saved after the initialization and after
        every epoch; if the file exists when training starts, training resumes from it,
        and ends with the same model as an uninterrupted run with the same seed. The
        spaces are not saved there: pass the same data again (or save the spaces with
        :meth:`Spaces.save`).

        Inside :func:`~contmix.distributed.sharded`, the spaces are this process's shard
        (e.g. from :meth:`spaces` called on the shard, inside the same context). The
        model is initialized on the Gaussian space of all shards (by the sharded EM and
        k-means of the models that use them), then copied from the process of rank 0
        to the others; every step draws its batch from each shard (one batch per step
        per process, the ``batch_size`` samples of a step split over the processes by
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
            x: The samples, with shape :math:`(N, D)`, or their :class:`Spaces`.
            c: The contexts, with shape :math:`(N, C)`, when ``x`` is a tensor.
            steps: The number of spaces, when ``x`` is a tensor.
            augment: The augmentation before mapping (see :meth:`spaces`), when ``x``
                is a tensor.
            epochs_per_space: The number of epochs on each space.
            finetune_epochs: The number of epochs on the data, after the schedule.
            optimizer: An optimizer class or factory, called as
                :py:`optimizer(parameters, lr=lr)`.
            lr: The learning rate.
            batch_size: The minibatch size.
            noise: The standard deviation of the noise on the model's inputs.
            strategy: The strategy passed to :py:`model.initialize` on the Gaussian
                space, or :py:`None` not to initialize.
            callbacks: Functions called as :py:`callback(model, info)` after every
                optimizer step, where ``info`` has the keys ``"step"``, ``"epoch"``,
                ``"space"`` (the index of :math:`v`), ``"v"`` and ``"loss"``.
            checkpoint: A file to save to and resume from, or :py:`None`.
            progress: Whether to show a progress bar.
            regularizer: A term added to the loss of every batch, or :py:`None`.
                Inside :func:`~contmix.distributed.sharded`, it is computed by each
                process on its part of the batch and its gradients are summed.
            scheduler: A learning-rate schedule, called as
                :py:`scheduler(optimizer, epochs)` with the number of epochs of the
                whole schedule and stepped after every epoch (saved in the
                checkpoint), e.g. :py:`lambda o, n: CosineAnnealingLR(o, n)`; or
                :py:`None` for a constant learning rate.

        Returns:
            The mean loss of each epoch of the schedule (regularizer included).
        """

        if not isinstance(model, LazyDistribution):
            raise TypeError(
                f"model must be a zuko LazyDistribution, got {type(model).__name__}: pass "
                "the module itself (not wrapped in DistributedDataParallel; inside "
                "contmix.distributed.sharded() the gradients are summed over processes)."
            )
        if epochs_per_space < 1 or finetune_epochs < 0:
            raise ValueError(
                "epochs_per_space must be at least 1 and finetune_epochs non-negative, got "
                f"{epochs_per_space} and {finetune_epochs}."
            )

        if isinstance(x, Spaces):
            if c is not None:
                raise ValueError("Pass the contexts with the spaces, Spaces(v, u, c), not as c.")
            spaces = x
        else:
            spaces = self.spaces(x, c, steps=steps, augment=augment)

        schedule = [t for t in range(len(spaces)) for _ in range(epochs_per_space)]
        schedule += [len(spaces) - 1] * finetune_epochs

        state = Schedule(
            model, spaces, schedule, optimizer, lr, checkpoint, regularizer, scheduler
        )
        state.start(strategy)
        bar = progress_bar(len(schedule), state.epoch, progress and distributed.rank() == 0)

        while state.epoch < len(schedule):
            loss = state.run_epoch(batch_size, noise, callbacks)

            if bar is not None:
                bar.update()
                bar.set_postfix(v=f"{state.v[schedule[state.epoch - 1]]:.2f}", loss=f"{loss:.4f}")

        if bar is not None:
            bar.close()

        return state.history


class Schedule:
    r"""The state of a curriculum run: model, optimizer, position and random states, saved
    to and restored from a checkpoint."""

    def __init__(
        self,
        model: LazyDistribution,
        spaces: Spaces,
        schedule: list[int],
        optimizer: Callable[..., Optimizer],
        lr: float,
        checkpoint: str | os.PathLike | None,
        regularizer: Regularizer | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.model = model
        self.regularizer = regularizer
        self.scheduler, self.lr_schedule = scheduler, None
        self.spaces = spaces
        self.schedule = schedule
        self.optimizer = optimizer
        self.lr = lr
        self.path = None if checkpoint is None else Path(checkpoint)
        self.v = spaces.v.tolist()
        self.epoch = 0
        self.step = 0
        self.history = []
        self.samples = distributed.samples(spaces.u[0])  # of all shards
        self.signature = [len(spaces), self.samples, spaces.u.shape[-1], len(schedule)]

    def start(self, strategy: str | None) -> None:
        r"""Resumes from the checkpoint if there is one (on the process of rank 0), or
        initializes the model on the Gaussian space."""

        exists = self.path is not None and self.path.exists() and distributed.rank() == 0
        exists = distributed.all_reduce(self.spaces.u.new_tensor(float(exists))) > 0

        if exists:
            self.make_optimizer()
            self.load()
            return

        if strategy is not None and hasattr(self.model, "initialize"):
            self.model.initialize(self.spaces.u[0], strategy=strategy)

        distributed.broadcast(*self.model.state_dict().values())

        self.make_optimizer()
        self.save()

    def make_optimizer(self) -> None:
        r"""Creates the optimizer and, if any, its learning-rate schedule."""

        self.optim = self.optimizer(self.model.parameters(), lr=self.lr)
        if self.scheduler is not None:
            self.lr_schedule = self.scheduler(self.optim, len(self.schedule))

    def run_epoch(self, batch_size: int, noise: float, callbacks: Iterable[Callback]) -> float:
        r"""Runs one epoch on the space of the current position, then saves."""

        space = self.schedule[self.epoch]
        u, c = self.spaces.u[space], self.spaces.c
        reference = next(self.model.parameters())
        total = torch.zeros((), dtype=reference.dtype, device=reference.device)
        indices, sizes, generator = batches(u, self.samples, batch_size)

        self.model.train()

        for index, size in zip(indices, sizes.to(reference), strict=True):
            xb = u[index].to(reference)
            cb = None if c is None else c[index].to(reference)

            if noise > 0:
                epsilon = torch.randn(
                    xb.shape, generator=generator, dtype=xb.dtype, device=u.device
                )
                xb = xb + noise * epsilon.to(xb.device)

            d = self.model(cb)
            loss = -d.log_prob(xb).sum() / size
            if self.regularizer is not None:
                loss = loss + self.regularizer(self.model, d, xb)

            self.optim.zero_grad()
            loss.backward()
            (loss,) = distributed.all_reduce_gradients(self.model.parameters(), loss.detach())
            self.optim.step()

            total = total + loss * size

            info = {
                "step": self.step,
                "epoch": self.epoch,
                "space": space,
                "v": self.v[space],
                "loss": loss,
            }

            for callback in callbacks:
                callback(self.model, info)

            self.step += 1

        mean = (total / self.samples).item()

        if not torch.isfinite(total):
            raise FloatingPointError(
                f"The loss is not finite at epoch {self.epoch} (space v = {self.v[space]:.3f}):"
                " lower the learning rate or raise the noise, and resume from the checkpoint."
            )

        self.history.append(mean)
        self.epoch += 1
        if self.lr_schedule is not None:
            self.lr_schedule.step()
        self.save()

        return mean

    def save(self) -> None:
        r"""Writes the checkpoint (atomically: a temporary file, then a rename), on the
        process of rank 0 only."""

        if self.path is None or distributed.rank() != 0:
            return

        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optim.state_dict(),
            "scheduler": None if self.lr_schedule is None else self.lr_schedule.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "signature": self.signature,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.path)

    def load(self) -> None:
        r"""Restores the state from the checkpoint."""

        reference = next(self.model.parameters())
        state = torch.load(self.path, map_location=reference.device, weights_only=True)

        if state["signature"] != self.signature:
            raise ValueError(
                f"The checkpoint {self.path} is of another run: (spaces, samples, features, "
                f"epochs) = {tuple(state['signature'])}, not {tuple(self.signature)}. Pass "
                "the same data and schedule, or another checkpoint path."
            )

        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optimizer"])
        if self.lr_schedule is not None and state.get("scheduler") is not None:
            self.lr_schedule.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]

        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
