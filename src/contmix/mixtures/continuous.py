r"""The machinery that continuous mixtures share: :math:`C` trajectories of one (or
:math:`C`) neural ODE(s) whose states at :math:`G` pseudotimes are the components of a
mixture of factor analyzers (:class:`~contmix.CPMM`, :class:`~contmix.HierarchicalCPMM`).

The state :math:`h(t)` (:class:`~contmix.mixtures.state.StateLayout`) evolves by
:math:`\dot{h} = f(h, t, c)` (:mod:`contmix.nn`), solved by a
:class:`~contmix.mixtures.solver.Solver`, from a learnable initial state :math:`h(0)`.
"""

import math

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from torch import Tensor
from zuko.lazy import LazyDistribution
from zuko.nn import MLP

from .clustering import Clustering
from .conditional import restore_on_error
from .groups import best_statistics
from .paths import PathComponents, path_components, path_groups
from .penalty import diagonal_shift, keep_loaded_start
from .regression import fit_components, fit_path
from .solver import Solver, _Resolve, pseudotimes
from .start import check_strategy
from .state import State, StateLayout, inverse_soft_clip, soft_clip
from ..cluster import check_generator
from ..distributions import GaussianMixture, LowRankNormal
from ..nn import ConvDynamics, Dynamics, reset_linear
from ..report import FitReport, check_progress
from ..utils import check_context, check_samples, check_scale, check_sizes

STRATEGIES = ("random", "kmeans", "em")
STEPS = {"kmeans": 100, "em": 1000}  # the default regression steps of each strategy


class _ContinuousMixture(Clustering, LazyDistribution):
    r"""The machinery shared by :class:`CPMM` and :class:`HierarchicalCPMM`: :math:`C`
    trajectories of one (or :math:`C`) neural ODE(s) evaluated at :math:`G`
    pseudotimes."""

    def __init__(
        self,
        features: int | Sequence[int],
        context: int,
        trajectories: int,
        components: int,
        rank: int,
        solver: Solver | None = None,
        *,
        augment: float = 2.0,
        learn_weights: bool = False,
        spherical: bool = False,
        log_diag_min: float = -10.0,
        epsilon: float = 1e-6,
        random_times: int = 0,
        **kwargs,
    ) -> None:
        super().__init__()

        shape = {"features": features}
        if isinstance(features, Sequence):  # an image shape (C, H, W)
            shape = dict(zip(("channels", "height", "width"), features, strict=False))
        check_sizes(**shape, trajectories=trajectories, components=components, rank=rank)
        check_sizes(0, context=context, random_times=random_times)

        self.layout = StateLayout.of(features, rank, augment, learn_weights, spherical)
        self.shape, self.features = self.layout.shape, self.layout.features
        self.context = context
        self.trajectories, self.components, self.rank = trajectories, components, rank
        self.log_diag_min, self.epsilon = log_diag_min, epsilon
        self.solver = Solver() if solver is None else solver
        self.random_times = random_times

        self.dynamics = self._dynamics(**kwargs)
        if context > 0:
            self.start = MLP(context, trajectories * self.layout.size, self.hidden_features)
        else:
            self.start = nn.Parameter(self._default_start(torch.zeros(self.features, 1)))

        start = torch.full((trajectories, components, self.features), math.log1p(epsilon))
        self.register_buffer("start_log_diag", start)  # set by initialize
        keep_loaded_start(self)
        self._cache = None
        self.fit_report: FitReport | None = None

    def _dynamics(
        self,
        hidden_features: Sequence[int] | None = None,
        activation: Literal["sin", "tanh"] = "sin",
        separate: bool = False,
    ) -> Dynamics | ConvDynamics:
        r"""The dynamics :math:`f`: an MLP of flat states, :py:`(256, 256)` by default, or
        a CNN of states in image shape, :py:`(64, 64)` channels by default; one per
        trajectory if ``separate``. Keeps ``hidden_features`` for the context networks."""

        copies = self.trajectories if separate else 1

        if self.shape is None:
            self.hidden_features = tuple(hidden_features or (256, 256))
            return Dynamics(
                self.layout.size, self.context, self.hidden_features, activation, copies
            )

        self.hidden_features = tuple(hidden_features or (64, 64))
        shape = (self.layout.channels, *self.shape[1:])
        return ConvDynamics(shape, self.context, self.hidden_features, activation, copies)

    # state and solve

    def _default_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""Initial states with the means at zero, unit diagonals, small random loadings
        (drawn from ``generator``), zero augmented part and equal weights, of the dtype
        and on the device of :math:`x`."""

        C, M, R = self.trajectories, self.features, self.rank
        loc = torch.zeros(C, M, dtype=x.dtype, device=x.device)
        device = x.device if generator is None else generator.device
        noise = torch.randn(C, M, R, dtype=x.dtype, device=device, generator=generator)
        state = State(
            loc=loc,
            factor=1e-2 * noise.to(x.device),
            log_diag=torch.zeros_like(loc[..., : self.layout.shapes["log_diag"][0]]),
            log_weight=torch.zeros_like(loc[..., :1]),
            alpha=torch.zeros(C, self.layout.augmented, dtype=x.dtype, device=x.device),
        )

        return self.layout.pack(state)

    def initial_state(self, c: Tensor | None = None) -> Tensor:
        r"""Returns the initial states :math:`h_c(0)`, with shape :math:`(*, C, S)`."""

        if c is None:
            return self.start

        return self.start(c).unflatten(-1, (self.trajectories, self.layout.size))

    def solve(self, times: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the states :math:`h_c(t)` at increasing pseudotimes, with shape
        :math:`(*, C, T, S)`.

        The ODE is integrated from :math:`t = 0`; when the first time is positive,
        :math:`0` is prepended to the solve and dropped from the result.

        Raises:
            SolverError: When the solver fails (:meth:`Solver.solve`).
        """

        check_context(c, self.context, self._reference())

        h0 = self.initial_state(c)
        if c is not None:
            context = c.unsqueeze(-2).expand(*h0.shape[:-1], self.context)
            h0 = torch.cat((h0, context), dim=-1)

        times = times.to(h0)
        if h0.numel() == 0:  # an empty batch of contexts: nothing to solve
            h = h0[..., None, : self.layout.size]
            return h.expand(*h0.shape[:-1], len(times), self.layout.size)

        prepend = bool(times[0] > 0)
        if prepend:
            times = torch.cat((times.new_zeros(1), times))

        h = self.solver.solve(self.dynamics, h0, times)
        h = h[1:] if prepend else h

        return h[..., : self.layout.size].movedim(0, -2)

    def _settings(self) -> tuple:
        r"""What the grid states depend on besides the values of the parameters: the
        grid, the solver's settings and each parameter's identity, shape, dtype and
        device."""

        layout = tuple((id(p), p.shape, p.dtype, p.device) for p in self.parameters())

        return self.components, repr(self.solver), layout

    def _cached(self) -> Tensor | None:
        r"""The cached grid states, if the settings and the values of the parameters are
        those they were solved with."""

        if self._cache is None:
            return None

        settings, values, h = self._cache
        if settings != self._settings():
            return None

        for p, value in zip(self.parameters(), values, strict=True):
            if not torch.equal(p.detach(), value):
                return None

        return h

    def _grid_states(self, c: Tensor | None) -> Tensor:
        r"""The states at the evaluation grid; for an unconditional model, cached.

        The cache holds the states with a copy of the parameters they were solved with,
        and is used only while the parameters have exactly those values, whichever way
        they changed (an optimizer step, an in-place or :py:`.data` edit,
        :meth:`load_state_dict`, :meth:`to`, a change of the solver's settings):
        checking is one pass over the parameters (about 1 ns per parameter on one CPU
        thread), far less than a solve. When gradients are enabled and parameters
        require them, the states are differentiable, so that a model trains in
        evaluation mode too: solved with autograd on a miss, and on a hit solved again
        only if the backward pass runs."""

        grid = torch.linspace(0, 1, self.components)

        if c is not None:
            return self.solve(grid, c)

        parameters = tuple(self.parameters())
        differentiable = torch.is_grad_enabled() and any(p.requires_grad for p in parameters)
        h = self._cached()

        if h is None:
            values = [p.detach().clone() for p in parameters]
            with torch.set_grad_enabled(differentiable):
                h = self.solve(grid)
            self._cache = (self._settings(), values, h.detach())
        elif differentiable:
            h = _Resolve.apply(lambda: self.solve(grid), h, *parameters)

        return h

    def train(self, mode: bool = True):
        if mode:
            self._cache = None
        return super().train(mode)

    def states(self, c: Tensor | None = None) -> Tensor:
        r"""Returns the states of the components, with shape :math:`(*, C, G, S)`: at
        sorted uniform pseudotimes in training mode
        with ``random_times``, else at the fixed grid
        :math:`t_j = (j - 1) / (G - 1)` in evaluation mode (cached for an unconditional
        model while the parameters keep their values, and differentiable when
        gradients are enabled)."""

        if self.training and self.random_times:
            return self.solve(pseudotimes(self.random_times, self._reference()), c)

        return self._grid_states(c)

    def penalty(self, d: GaussianMixture) -> Tensor:
        r"""Returns the squared shift of the components' log-variances from those of the
        start, summed over the features and averaged over the components,

        .. math:: \Omega = \frac{1}{C G} \sum_{c = 1}^C \sum_{j = 1}^G
            \| \log \operatorname{diag}(D_{cj}) - \log \operatorname{diag}(D^0_{cj}) \|^2 ,

        where :math:`D^0_{cj}` are the diagonals of the components at the end of
        :meth:`initialize` (for a conditional model, those of the fit it started from:
        the MFA fitted by EM, or the k-means clusters) and :math:`D_{cj}` those of
        ``d = model(c)``: a penalty towards the starting point (L2-SP) on the diagonals
        alone. Added to the loss, it keeps the noise of the components where the data
        are too few to fix it, as on the 8x8 digits (about 14 samples per component in
        64 dimensions), where training without it halves the diagonals as the model
        overfits (see the benchmarks of CPMM training). Its weight does not shrink as
        the data grow, and it can cost more than it saves: on 10,000 Fashion-MNIST
        images (40 per component in 784 dimensions), 1000 steps with it end at 5.05
        bits/dim on the test set, 4.86 without it, with the training set 0.04 below
        the test set; choose it on held-out data.

        References:
            | Explicit Inductive Bias for Transfer Learning with Convolutional Networks
            | (Li et al., 2018)
            | https://arxiv.org/abs/1802.01483

        Arguments:
            d: The distribution of the model, ``model(c)``, whose loss is penalized.

        Example:
            >>> from contmix import HierarchicalCPMM
            >>> model = HierarchicalCPMM(2, trajectories=2, components=3, hidden_features=(16,))
            >>> x = torch.randn(64, 2)
            >>> report = model.initialize(x, steps=5)
            >>> d = model()
            >>> loss = -d.log_prob(x).mean() + model.penalty(d)
            >>> loss.backward()
        """

        return diagonal_shift(d, self.start_log_diag)

    def _reference(self) -> Tensor:
        return next(self.dynamics.parameters())

    def parameters_of(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Returns the mixture parameters of states :math:`h`, with shape
        :math:`(*, S)`: the log-weights, means, loadings and the log-diagonals
        :math:`\log d`, soft-clipped from below (one value spread over the features
        when they are spherical), in :class:`~contmix.MFA`'s layout."""

        state = self.layout.unpack(h)

        if state.log_weight is None:
            logits = torch.zeros_like(h[..., 0])
        else:
            logits = state.log_weight.squeeze(-1)

        log_diag = soft_clip(state.log_diag, self.log_diag_min).expand_as(state.loc)

        return logits, state.loc, state.factor, log_diag

    def _inner(self, h: Tensor) -> GaussianMixture:
        logits, loc, factor, log_diag = self.parameters_of(h)
        return GaussianMixture(LowRankNormal(loc, factor, log_diag.exp() + self.epsilon), logits)

    def _extracted_states(self, components: int | None, c: Tensor | None) -> Tensor:
        if self.context > 0 and (c is None or c.dim() != 1):
            raise ValueError(
                "extract() of a conditional model needs one context c "
                f"with shape ({self.context},)."
            )

        if components is None and c is None:
            return self._grid_states(None)
        if components is not None:
            check_sizes(components=components)

        return self.solve(torch.linspace(0, 1, components or self.components), c)

    # initialization

    def _initialize(
        self,
        x: Tensor,
        strategy: str,
        y: Tensor | None,
        steps: int,
        lr: float,
        n_init: int,
        generator: torch.Generator | None,
        progress: bool | None,
    ) -> tuple[Tensor, FitReport]:
        r"""Initializes the initial states and the dynamics; returns the log-sizes of
        the groups and the report of the fit."""

        check_strategy(strategy, STRATEGIES)

        check_sizes(n_init=n_init)
        if steps is None:
            steps = STEPS.get(strategy, 0)
        check_sizes(0, steps=steps)
        if lr is None:
            lr = self.regression_lr()
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be a positive finite number, got {lr!r}.")
        check_generator(generator)
        check_progress(progress)
        reference = self._reference()
        check_samples(x, self.features, self.trajectories + 1, reference)
        if x.dtype != reference.dtype:
            raise TypeError(
                f"x is {x.dtype} but the model is {reference.dtype}: use x.to({reference.dtype})."
            )
        check_scale(x, math.exp(self.log_diag_min) + self.epsilon, "log_diag_min")

        if strategy == "em":
            labels = path_groups(x, self.trajectories, self.components, y, generator)
            paths = path_components(
                x, labels, self.trajectories, self.components, self.rank, n_init, generator
            )
        else:
            sizes, floor = (self.trajectories, self.components), math.exp(self.log_diag_min)
            stats = best_statistics(x, *sizes, strategy, y, n_init, floor, self.epsilon, generator)
            factor = self.layout.unpack(self._default_start(x, generator)).factor
            factor = factor * stats.variances.mean(dim=(-1, -2)).sqrt()[:, None, None]
            paths = PathComponents(
                stats.logits,
                torch.zeros_like(stats.means[..., 0]),
                stats.means,
                factor.unsqueeze(-3).expand(*stats.means.shape, self.rank),
                stats.variances,
            )

        h0 = self._path_start(paths)
        self._cache = None

        with restore_on_error(self):
            with torch.no_grad():
                self._reset(generator)
                if self.context > 0:
                    self.start[-1].bias.copy_(h0.flatten())
                else:
                    self.start.copy_(h0)

            if strategy == "kmeans" and self.context == 0 and steps > 0:
                log_var = self._log_diag(self._diag(paths.diag))
                fit_path(self, paths.loc, log_var, x.var(dim=0).mean(), steps, lr)
            elif strategy == "em" and self.context == 0 and steps > 0:
                fit_components(self, paths, steps, lr, progress)

            self._keep_start(paths)

        return paths.logits, self._report(x, strategy, paths.logits)

    def regression_lr(self) -> float:
        r"""Returns the default learning rate of the regression in :meth:`initialize`,
        :math:`10^{-2} \min(1, 2048 / n)` for dynamics whose first layer has :math:`n`
        inputs per unit (the state, the pseudotime and the context for an MLP; the
        channels times the kernel for a CNN).

        An Adam step moves each weight by about the learning rate, so the input of a
        unit by about :math:`\eta n` times the state's scale: the widest dynamics
        measured to regress well at :math:`10^{-2}` had 1153 inputs (the 8x8 digits);
        at 784-D, 14,113 inputs (3 trajectories of 5 components of rank 4 on 2,000
        Fashion-MNIST images), the regression made no progress at :math:`10^{-2}` (its
        best loss the first one) and reached a divergence of 0.05 per feature in 200
        steps at :math:`10^{-3}`.

        Example:
            >>> from contmix import HierarchicalCPMM
            >>> HierarchicalCPMM(2, trajectories=2, components=3).regression_lr()
            0.01
            >>> model = HierarchicalCPMM(784, trajectories=2, components=3, rank=4)
            >>> round(model.regression_lr(), 6)
            0.001451
        """

        first = next(p for p in self.dynamics.parameters() if p.dim() > 1)
        inputs = first.shape[-1] if self.shape is None else first[0].numel()

        return 1e-2 * min(1.0, 2048 / inputs)

    @torch.no_grad()
    def _report(self, x: Tensor, strategy: str, logits: Tensor) -> FitReport:
        r"""The report of an initialization, with the mean log-likelihood of :math:`x` at
        the grid (the outer weights set to ``logits``), kept as ``fit_report``."""

        inner = self._inner(
            self._grid_states(None)
            if self.context == 0
            else self.solve(torch.linspace(0, 1, self.components), x.new_zeros(self.context))
        )
        mixture = GaussianMixture(inner, logits) if inner.batch_shape else inner
        self.fit_report = FitReport.of(strategy, mixture.log_prob(x).mean())

        return self.fit_report

    def _diag(self, diag: Tensor) -> Tensor:
        r"""The diagonals of the state's kind nearest ``diag``: their mean over the
        features, with shape :math:`(*, 1)`, when they are spherical."""

        return diag.mean(dim=-1, keepdim=True) if self.layout.spherical else diag

    def _log_diag(self, diag: Tensor) -> Tensor:
        r"""The state's :math:`\log d` of diagonals ``diag``, above the soft floor."""

        log_var = (diag - self.epsilon).clamp(min=torch.finfo(diag.dtype).tiny).log()
        return inverse_soft_clip(log_var.clamp(min=self.log_diag_min + 0.1), self.log_diag_min)

    @torch.no_grad()
    def _keep_start(self, paths: PathComponents) -> None:
        r"""Keeps the log-diagonals of the start for :meth:`penalty`: those of the grid's
        components, or for a conditional model (whose grid depends on the context) those
        of the fit."""

        if self.context == 0:
            self._keep_grid_start()
        else:
            log_diag = soft_clip(self._log_diag(self._diag(paths.diag)), self.log_diag_min)
            self.start_log_diag.copy_((log_diag.exp() + self.epsilon).log())

    @torch.no_grad()
    def _keep_grid_start(self) -> None:
        r"""Makes the diagonals of the model's own grid its start, for an unconditional
        model (a conditional one keeps the start it has)."""

        if self.context == 0:
            self.start_log_diag.copy_(self._inner(self._grid_states(None)).base.cov_diag.log())

    def _path_start(self, paths: PathComponents) -> Tensor:
        r"""The initial states of the paths' first components: their means, loadings,
        log-diagonals and log-weights, and a zero augmented part."""

        loc = paths.loc[:, 0]
        state = State(
            loc=loc,
            factor=paths.factor[:, 0],
            log_diag=self._log_diag(self._diag(paths.diag[:, 0])),
            log_weight=paths.log_weights[:, :1],
            alpha=loc.new_zeros(loc.shape[0], self.layout.augmented),
        )

        return self.layout.pack(state)

    def _reset(self, generator: torch.Generator | None) -> None:
        r"""Draws the dynamics (and the context networks) afresh from ``generator``, with
        their last layers scaled down: the trajectories start slow (and the same
        whatever the context), whatever the model was before."""

        self.dynamics.reset_parameters(generator)
        for p in self.dynamics.output_layer():
            p.mul_(1e-2)

        for mlp in (self.start, getattr(self, "logits", None)):
            if isinstance(mlp, nn.Module):
                reset_linear(mlp, generator)
                mlp[-1].weight.mul_(1e-2)
