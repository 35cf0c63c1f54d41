r"""The base of the parametric mixtures (:class:`~contmix.GMM`, :class:`~contmix.MFA`,
:class:`~contmix.HierarchicalMFA`, :class:`~contmix.CWM`), as scikit-learn's
``BaseMixture`` is that of its mixtures: the mechanism they share is written here once,
and each model supplies only what differs.

Parameters. A model's parameters are a list of tensors of the shapes ``shapes``. An
unconditional model (``context=0``) holds them as free parameters ``phi``; a conditional
one computes them from the context :math:`c` with a hypernetwork ``hyper``, a
:class:`zuko.nn.MLP` whose output is split into these shapes
(:func:`zuko.utils.unpack`), as zuko's mixtures do. A fit writes its parameters into
``phi``, or as the bias of the hypernetwork's last layer (:func:`set_parameters`).

Positive values. Standard deviations (:class:`~contmix.GMM`, :class:`~contmix.CWM`)
and variances (:class:`~contmix.MFA`, :class:`~contmix.HierarchicalMFA`) are
:math:`s = \exp(\phi) + \epsilon` (:func:`shifted_exp`), and a fitted :math:`s` is
written back as :math:`\phi = \log \max(s - \epsilon, \text{tiny})`
(:func:`shifted_log`), the exact inverse wherever :math:`s > \epsilon`. Lower
triangular factors are their diagonal and their strictly lower triangle, row by row
(:func:`lower_triangular`, :func:`triangle`).

The variance floor. The smallest variance of a component is the larger of that of the
parameterization, :math:`\epsilon^2` for standard deviations and :math:`\epsilon` for
variances (:attr:`ParametricMixture.smallest_variance`), and ``reg``, the variance that
EM adds to the covariances or floors the diagonals at, where the fit uses it (not the
k-means starts of :class:`~contmix.HierarchicalMFA`, which ignore it;
:meth:`ParametricMixture.variance_floor`). Samples whose variance is at most
this floor in every feature are refused by ``initialize`` and ``em``, which would fit
every component at the floor.
"""

__all__ = [
    "ParametricMixture",
    "check_fit",
    "check_unconditional",
    "lower_triangular",
    "set_parameters",
    "shifted_exp",
    "shifted_log",
    "triangle",
]

from collections.abc import Iterable, Sequence
from math import prod

import torch
import torch.nn as nn

from torch import Size, Tensor
from torch.distributions import Distribution
from zuko.lazy import LazyDistribution
from zuko.nn import MLP
from zuko.utils import unpack

from .clustering import Clustering
from .conditional import check_contexts, check_steps, initialize_context, restore_on_error
from .start import STRATEGIES, check_data, check_strategy
from ..cluster import check_generator
from ..distributed import Data
from ..em.base import check_em, check_reg
from ..report import FitReport, best_of, check_progress
from ..utils import check_context, check_samples, check_scale, check_sizes


def check_fit(n_init: int, generator: torch.Generator | None, reg: float) -> None:
    r"""Raises an error unless the arguments shared by the ``initialize`` methods are
    valid: ``n_init`` a positive integer, ``generator`` a :class:`torch.Generator` or
    :py:`None`, ``reg`` a finite non-negative number.

    Example:
        >>> check_fit(1, None, 1e-6)
        >>> check_fit(0, None, 1e-6)
        Traceback (most recent call last):
            ...
        ValueError: n_init must be an integer of at least 1, got 0.
    """

    check_sizes(n_init=n_init)
    check_generator(generator)
    check_reg(reg)


def check_unconditional(model: nn.Module, what: str) -> None:
    r"""Raises a :class:`ValueError` if ``model`` is conditional (``model.context > 0``),
    whose parameters are the outputs of a hypernetwork, which ``what`` cannot fit.

    Example:
        >>> from contmix import GMM
        >>> check_unconditional(GMM(2, context=3), "em()")
        Traceback (most recent call last):
            ...
        ValueError: em() fits an unconditional GMM, but this one has context=3: ...
    """

    if model.context > 0:
        raise ValueError(
            f"{what} fits an unconditional {type(model).__name__}, but this one has "
            f"context={model.context}: its parameters come from a hypernetwork; train it "
            "by gradient descent."
        )


@torch.no_grad()
def set_parameters(module: nn.Module, params: Sequence[Tensor]) -> None:
    r"""Writes fitted parameters, in the layout of ``module.shapes``, into the free
    parameters ``module.phi`` or, for a conditional module, as the output bias of its
    hypernetwork ``module.hyper``, whose output weights are scaled by :math:`10^{-2}` so
    that it starts out producing these parameters whatever the context (as zuko does).

    Raises a :class:`ValueError`, changing nothing, if a parameter is not finite.

    Example:
        >>> from contmix import GMM
        >>> gmm = GMM(features=1, components=2, covariance_type="diagonal")
        >>> set_parameters(gmm, [torch.zeros(2), torch.tensor([[-1.0], [1.0]]), torch.zeros(2, 1)])
        >>> gmm().mean
        tensor([0.], grad_fn=<SumBackward1>)
    """

    if not all(torch.isfinite(p).all() for p in params):
        raise ValueError("The fitted parameters are not finite: the data is degenerate.")

    if hasattr(module, "hyper"):
        module.hyper[-1].weight.mul_(1e-2)
        module.hyper[-1].bias.copy_(torch.cat([p.flatten() for p in params]))
    else:
        for p, value in zip(module.phi, params, strict=True):
            p.copy_(value)


def shifted_exp(phi: Tensor, epsilon: float) -> Tensor:
    r"""Returns the positive values :math:`s = \exp(\phi) + \epsilon` of unconstrained
    parameters, at least :math:`\epsilon`.

    Example:
        >>> shifted_exp(torch.zeros(2), 1e-6)
        tensor([1.0000, 1.0000])
    """

    return phi.exp() + epsilon


def shifted_log(value: Tensor, epsilon: float) -> Tensor:
    r"""Returns :math:`\phi = \log \max(s - \epsilon, \text{tiny})`, the inverse of
    :func:`shifted_exp` for :math:`s > \epsilon`, the smallest value
    (:math:`\text{tiny}` of the dtype) for :math:`s \leq \epsilon`.

    Example:
        >>> s = torch.tensor([2.0, 1e-7])
        >>> shifted_exp(shifted_log(s, 1e-6), 1e-6)  # 1e-7 is below epsilon
        tensor([2.0000e+00, 1.0000e-06])
    """

    return (value - epsilon).clamp(min=torch.finfo(value.dtype).tiny).log()


def lower_triangular(diag: Tensor, lower: Tensor) -> Tensor:
    r"""Returns the lower triangular matrices of diagonal ``diag``, with shape
    :math:`(*, D)`, and strictly lower triangle ``lower``, with shape :math:`(*, D (D -
    1) / 2)`, row by row (the order of :func:`torch.tril_indices`).

    Example:
        >>> lower_triangular(torch.ones(2), torch.tensor([3.0]))
        tensor([[1., 0.],
                [3., 1.]])
    """

    tril = torch.diag_embed(diag)
    mask = torch.tril(torch.ones_like(tril, dtype=torch.bool), diagonal=-1)

    return torch.masked_scatter(tril, mask, lower)


def triangle(tril: Tensor) -> tuple[Tensor, Tensor]:
    r"""Returns the diagonal and the strictly lower triangle, row by row, of lower
    triangular matrices with shape :math:`(*, D, D)`: the inverse of
    :func:`lower_triangular`.

    Example:
        >>> triangle(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
        (tensor([1., 2.]), tensor([3.]))
    """

    D = tril.shape[-1]
    rows, cols = torch.tril_indices(D, D, offset=-1, device=tril.device)

    return tril.diagonal(dim1=-2, dim2=-1), tril[..., rows, cols]


class ParametricMixture(Clustering, LazyDistribution):
    r"""The base of the parametric mixtures, a :class:`zuko.lazy.LazyDistribution`
    whose parameters are free (``phi``) or the outputs of a hypernetwork of the context
    (``hyper``), which clusters samples by its components (:class:`Clustering`),
    and whose ``initialize`` and ``em`` share one template: the checks of
    the samples and of the settings, ``n_init`` restarts of which the best lower bound
    is kept (:func:`~contmix.report.best_of`), the fit of the hypernetwork to the
    contexts (:mod:`contmix.mixtures.conditional`), and nothing changed if an error is
    raised (:func:`~contmix.mixtures.conditional.restore_on_error`).

    A model supplies what differs:

    * :meth:`initial_parameters`, the initial values of ``phi``;
    * :meth:`distribution`, its distribution given the parameters;
    * ``_start(x, strategy, tol, max_iter, reg, generator, progress)``, one fit of
      ``initialize``, returning parameters for :meth:`_write` and a
      :class:`~contmix.report.FitReport`;
    * ``_run_em(x, tol, max_iter, reg, progress)``, the EM of ``em``, returning
      parameters in the layout of :attr:`shapes` and a report;
    * and, where they differ, :attr:`strategies`, :attr:`smallest_variance`,
      :attr:`out_of_core`, :meth:`minimum_samples`, :meth:`_write` and
      :meth:`_context_parameters`.

    Arguments:
        features: The number of features.
        context: The number of context features.
        components: The number of components.
        epsilon: The numerical stability term of the positive parameters
            (:func:`shifted_exp`).
        shapes: The shapes of the parameters.
        kwargs: Keyword arguments passed to the hypernetwork :class:`zuko.nn.MLP`.
    """

    strategies: tuple[str, ...] = STRATEGIES  # the strategies of initialize
    out_of_core: bool = True  # whether initialize and em take iterables of batches
    variance_power: int = 2  # epsilon is added to standard deviations (2) or variances (1)

    def __init__(
        self,
        features: int,
        context: int,
        components: int,
        epsilon: float,
        shapes: Sequence[Size],
        **kwargs,
    ) -> None:
        super().__init__()

        self.features = features
        self.context = context
        self.components = components
        self.epsilon = epsilon

        self.shapes = list(shapes)
        self.total = sum(prod(s) for s in self.shapes)
        self.fit_report: FitReport | None = None

        if context > 0:
            self.hyper = MLP(context, self.total, **kwargs)
        else:
            self.phi = nn.ParameterList(self.initial_parameters(self.shapes))

    @staticmethod
    def initial_parameters(shapes: Sequence[Size]) -> list[Tensor]:
        r"""Returns the initial values of the free parameters ``phi``: standard normal
        draws of the shapes :attr:`shapes`, as zuko's mixtures."""

        return [torch.randn(*s) for s in shapes]

    def forward(self, c: Tensor | None = None) -> Distribution:
        c = check_context(c, self.context, next(self.parameters()), ignore=True)

        return self.distribution(self.unpacked(c), c)

    def unpacked(self, c: Tensor | None) -> list[Tensor]:
        r"""Returns the parameters, in the layout of :attr:`shapes`: ``phi`` for an
        unconditional model (``c`` is :py:`None`), the output of the hypernetwork at
        ``c``, with batch shape :math:`(*)`, otherwise."""

        if c is None:
            return list(self.phi)

        return list(unpack(self.hyper(c), self.shapes))

    def distribution(self, params: list[Tensor], c: Tensor | None) -> Distribution:
        r"""Returns the distribution of parameters ``params``, in the layout of
        :attr:`shapes`, at the context ``c``."""

        raise NotImplementedError

    @property
    def smallest_variance(self) -> float:
        r"""The smallest variance of a component that the parameterization represents:
        :math:`\epsilon^2` where :math:`\epsilon` is added to standard deviations,
        :math:`\epsilon` where it is added to variances."""

        return self.epsilon**self.variance_power

    def variance_floor(self, reg: float, strategy: str = "em") -> float:
        r"""The smallest variance of a component fitted by ``strategy`` (``"em"`` for
        :meth:`em` too): :math:`\max(\text{smallest variance}, \text{reg})`."""

        return max(self.smallest_variance, reg)

    def minimum_samples(self, em: bool = False) -> int:
        r"""The smallest number of samples of ``initialize`` (or of ``em``, with
        ``em``): more samples than components."""

        return self.components + 1

    def _check_samples(self, x: Data, minimum: int, floor: float) -> None:
        r"""Raises an error unless :math:`x` is valid samples for a fit of at least
        ``minimum`` samples, some feature of which varies more than the variance floor
        (:meth:`variance_floor`); an iterable of batches only if :attr:`out_of_core`
        (:func:`~contmix.mixtures.start.check_data`)."""

        reference = next(self.parameters())

        if self.out_of_core:
            check_data(x, self.features, minimum, reference, floor, "epsilon and reg")
        else:
            check_samples(x, self.features, minimum, reference)
            check_scale(x, floor, "epsilon and reg")

    @torch.no_grad()
    def _initialize(
        self,
        x: Data,
        strategy: str,
        tol: float,
        max_iter: int,
        reg: float,
        n_init: int,
        generator: torch.Generator | None,
        progress: bool | None,
        c: Tensor | None,
        steps: int,
        lr: float,
        **extra,
    ) -> FitReport:
        r"""The template of ``initialize``: checks the settings and the samples, keeps
        the best of ``n_init`` fits of ``_start`` (given ``extra`` too), writes it
        (:meth:`_write`), fits the hypernetwork to the contexts ``c`` if given, keeps
        the report as ``fit_report`` and returns it; changes nothing if an error is
        raised."""

        check_strategy(strategy, self.strategies)
        check_fit(n_init, generator, reg)
        check_em(tol, max_iter)
        check_progress(progress)
        self._check_samples(x, self.minimum_samples(), self.variance_floor(reg, strategy))
        check_contexts(self, x, c)
        check_steps(steps, lr)

        start = lambda: self._start(x, strategy, tol, max_iter, reg, generator, progress, **extra)
        params, report = best_of(start, n_init, progress)

        with restore_on_error(self):
            self._write(params)
            parameters = self._context_parameters()
            report = initialize_context(self, x, c, report, parameters, steps, lr, progress)
        self.fit_report = report

        return report

    def _write(self, params: Sequence[Tensor]) -> None:
        r"""Writes the parameters of ``_start`` into the model: by default, natural
        parameters turned into the layout of :attr:`shapes` by ``_layout``."""

        set_parameters(self, self._layout(*params))

    def _context_parameters(self) -> Iterable[nn.Parameter] | None:
        r"""The parameters of the context fit: :py:`None` for those of the
        hypernetwork."""

        return None

    @torch.no_grad()
    def _em(
        self, x: Data, tol: float, max_iter: int, reg: float, progress: bool | None
    ) -> FitReport:
        r"""The template of ``em``: checks the model (unconditional), the settings and
        the samples, runs ``_run_em``, writes its parameters, keeps its report as
        ``fit_report`` and returns it; changes nothing if an error is raised."""

        check_unconditional(self, "em()")
        check_reg(reg)
        check_em(tol, max_iter)
        check_progress(progress)
        self._check_samples(x, self.minimum_samples(em=True), self.variance_floor(reg))

        params, report = self._run_em(x, tol, max_iter, reg, progress)
        set_parameters(self, params)
        self.fit_report = report

        return report
