r"""Continuously parameterized mixture models: mixtures whose components ride a neural ODE.

A CPMM keeps the parameters of a mixture of factor analyzers (MFA) component in a state

.. math:: h(t) = [\mu(t), \operatorname{vec}(A(t)), \log d(t), (\log \pi(t)), \alpha(t)]

that evolves by a learned ODE :math:`\dot{h} = f(h, t)` from a learnable initial state
:math:`h(0)`. Its components are the states at :math:`G` pseudotimes in :math:`[0, 1]`.
Once trained, :meth:`CPMM.extract` returns a plain :class:`~contmix.MFA` (or
:class:`~contmix.HierarchicalMFA`) holding the components: the ODE is gone.
"""

__all__ = [
    "CPMM",
    "ConvDynamics",
    "Dynamics",
    "HierarchicalCPMM",
    "SolverError",
    "State",
    "StateLayout",
]

import itertools
import math

from collections.abc import Sequence
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchdiffeq

from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.distributions import LowRankMultivariateNormal, kl_divergence
from zuko.lazy import LazyDistribution
from zuko.nn import MLP

from .conditional import restore_on_error
from .groups import GroupStatistics, group_labels, group_statistics
from .hierarchical import HierarchicalMFA
from .mfa import MFA
from .paths import PathComponents, path_components
from ..cluster import check_generator
from ..distributions import GaussianMixture, LowRankNormal
from ..report import FitReport, check_progress, progress_bar
from ..utils import check_context, check_samples, check_scale, check_sizes

ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = (
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
)
SOLVERS = (*ADAPTIVE, *FIXED, "scipy_solver")  # torchdiffeq's methods (its list is private)
STRATEGIES = ("random", "kmeans", "em")
STEPS = {"kmeans": 100, "em": 1000}  # the default regression steps of each strategy


class SolverError(RuntimeError):
    r"""Raised when the ODE solver of a CPMM fails: it exceeds its step budget (the ODE
    became stiff), its step size underflows or the state becomes non-finite."""


class State(NamedTuple):
    r"""The parts of a CPMM state, each with shape :math:`(*, \dots)`: means
    :math:`(*, M)`, loadings :math:`(*, M, R)`, log-diagonals :math:`(*, M)`, log-weights
    :math:`(*, 1)` (or :py:`None` when the weights are constant) and the augmented part
    :math:`(*, L)`."""

    loc: Tensor
    factor: Tensor
    log_diag: Tensor
    log_weight: Tensor | None
    alpha: Tensor


class StateLayout:
    r"""The layout of the CPMM state, defined once.

    .. math:: h = [\mu, \operatorname{vec}(A^T), \log d, (\log \pi), \alpha] \in
        \mathbb{R}^{J + L}, \quad J = (R + 2) M \, (+ 1)

    where the loadings are stored column after column (each column :math:`A_{:, r}` is
    one contiguous block of :math:`M` values), :math:`\log \pi` is present only when the
    weights are learned and :math:`\alpha \in \mathbb{R}^L` is the augmented part, never
    read by the mixture.

    For image-shaped features :math:`M = C \times H \times W` (``shape``), the same
    flat state is a stack of :math:`(R + 2) C + L / (H W)` image channels: :math:`C`
    channels of means, :math:`R C` of loadings, :math:`C` of log-diagonals and
    :math:`L / (H W)` augmented ones (:meth:`image`).

    Arguments:
        features: The number of features :math:`M`.
        rank: The rank :math:`R` of the loadings.
        augment: The size :math:`L` of the augmented part.
        weights: Whether :math:`\log \pi` is in the state.
        shape: The image shape :math:`(C, H, W)` of the features, if any.

    Example:
        >>> layout = StateLayout(features=2, rank=1, augment=3)
        >>> layout.size, layout.slices["log_diag"]
        (9, slice(4, 6, None))
        >>> h = torch.randn(5, layout.size)
        >>> torch.equal(layout.pack(layout.unpack(h)), h)
        True
        >>> layout = StateLayout(features=16, rank=2, augment=32, shape=(1, 4, 4))
        >>> layout.image(torch.randn(5, layout.size)).shape
        torch.Size([5, 6, 4, 4])
    """

    def __init__(
        self,
        features: int,
        rank: int,
        augment: int,
        weights: bool = False,
        shape: Sequence[int] | None = None,
    ):
        self.features, self.rank, self.augment, self.weights = features, rank, augment, weights
        self.shape = None if shape is None else tuple(shape)

        shapes = {
            "loc": (features,),
            "factor": (rank, features),
            "log_diag": (features,),
            "log_weight": (1,) if weights else (0,),
            "alpha": (augment,),
        }

        self.shapes, self.slices, start = {}, {}, 0
        for name, shape in shapes.items():
            self.shapes[name] = shape
            self.slices[name] = slice(start, start + math.prod(shape))
            start += math.prod(shape)

        self.size = start
        self.mixture = self.slices["alpha"].start

        if self.shape is not None:
            pixels = math.prod(self.shape[1:])
            if len(self.shape) != 3 or math.prod(self.shape) != features or augment % pixels:
                raise ValueError(
                    f"shape must be (C, H, W) with C * H * W = features = {features} and the "
                    f"augmented size a multiple of H * W, got shape={self.shape} and "
                    f"augment={augment}."
                )
            if weights:
                raise ValueError(
                    "Learned weights are not available with image-shaped features: use "
                    "learn_weights=False or flat features."
                )
            self.channels = self.size // pixels

    def __repr__(self) -> str:
        return f"StateLayout({', '.join(f'{k}={v}' for k, v in self.shapes.items())})"

    def unpack(self, h: Tensor) -> State:
        r"""Splits states with shape :math:`(*, J + L)` into their named parts."""

        parts = {
            name: h[..., s].unflatten(-1, self.shapes[name]) for name, s in self.slices.items()
        }
        parts["factor"] = parts["factor"].mT

        if not self.weights:
            parts["log_weight"] = None

        return State(**parts)

    def pack(self, state: State) -> Tensor:
        r"""Concatenates named parts into states with shape :math:`(*, J + L)`."""

        loc = state.loc
        log_weight = state.log_weight if self.weights else loc[..., :0]
        parts = (loc, state.factor.mT.flatten(-2), state.log_diag, log_weight, state.alpha)

        return torch.cat(parts, dim=-1)

    def image(self, h: Tensor) -> Tensor:
        r"""Views states with shape :math:`(*, J + L)` as stacks of image channels, with
        shape :math:`(*, (R + 2) C + L / (H W), H, W)`."""

        return h.unflatten(-1, (self.channels, *self.shape[1:]))


def _uniform(p: Tensor, bound: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Fills ``p`` in place with values drawn uniformly in :math:`[-b, b]` from
    ``generator`` (on its device), or from torch's global generator of ``p``'s device
    when it is :py:`None`."""

    if generator is None or generator.device == p.device:
        return p.uniform_(-bound, bound, generator=generator)

    value = torch.empty(p.shape, dtype=p.dtype, device=generator.device)
    return p.copy_(value.uniform_(-bound, bound, generator=generator))


def _reset_linear(mlp: nn.Module, generator: torch.Generator | None = None) -> None:
    r"""Draws the weights and biases of the linear layers of ``mlp`` (those of
    :class:`torch.nn.Linear` or :class:`zuko.nn.Linear`) afresh, uniformly in
    :math:`[-1 / \sqrt{n}, 1 / \sqrt{n}]` for :math:`n` inputs, their default law, from
    ``generator``."""

    for layer in mlp.modules():
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            bound = weight.shape[-1] ** -0.5
            _uniform(weight.data, bound, generator)
            if isinstance(bias, nn.Parameter):
                _uniform(bias.data, bound, generator)


class Sine(nn.Module):
    r"""The sine activation :math:`x \mapsto \sin(x)`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATIONS = {"sin": Sine, "tanh": nn.Tanh}


def make_activation(name: str) -> nn.Module:
    r"""Returns the activation ``"sin"`` or ``"tanh"`` of the dynamics."""

    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation '{name}': choose one of {list(ACTIVATIONS)}.")

    return ACTIVATIONS[name]()


class Dynamics(nn.Module):
    r"""Creates the dynamics :math:`f(h, t, c)` of a CPMM: an MLP of the state, the
    pseudotime and the context.

    .. math:: \frac{dh}{dt} = f([h, t, c]; \theta)

    The context is carried in the ODE state with zero derivative, so that gradients
    reach it with the adjoint method too: :meth:`forward` takes :math:`y = [h, c]` and
    returns :math:`[f, 0]`. With ``copies > 1`` (one ODE per trajectory), each of
    :math:`C` trajectories along the second to last dimension of :math:`y` has its own
    weights.

    Arguments:
        state: The size of the state :math:`h`.
        context: The number of context features.
        hidden_features: The widths of the hidden layers.
        activation: ``"sin"`` or ``"tanh"``.
        copies: The number of independent dynamics.

    Example:
        >>> f = Dynamics(state=5, hidden_features=(16,))
        >>> f(torch.tensor(0.5), torch.randn(3, 5)).shape
        torch.Size([3, 5])
    """

    def __init__(
        self,
        state: int,
        context: int = 0,
        hidden_features: Sequence[int] = (256, 256),
        activation: Literal["sin", "tanh"] = "sin",
        copies: int = 1,
    ) -> None:
        super().__init__()

        self.state, self.context, self.copies = state, context, copies
        self.activation = make_activation(activation)

        sizes = (state + 1 + context, *hidden_features, state)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()

        for before, after in itertools.pairwise(sizes):
            self.weights.append(nn.Parameter(torch.empty(copies, before, after)))
            self.biases.append(nn.Parameter(torch.empty(copies, after)))

        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Draws the weights and biases of each layer uniformly in
        :math:`[-1 / \sqrt{n}, 1 / \sqrt{n}]`, for :math:`n` inputs, from
        ``generator`` (torch's global generator if :py:`None`).

        Example:
            >>> f, g = Dynamics(3, hidden_features=(8,)), Dynamics(3, hidden_features=(8,))
            >>> f.reset_parameters(torch.Generator().manual_seed(0))
            >>> g.reset_parameters(torch.Generator().manual_seed(0))
            >>> torch.equal(f.weights[0], g.weights[0])
            True
        """

        with torch.no_grad():
            for weight, bias in zip(self.weights, self.biases, strict=True):
                bound = weight.shape[-2] ** -0.5
                _uniform(weight, bound, generator)
                _uniform(bias, bound, generator)

    def extra_repr(self) -> str:
        sizes = [w.shape[-2] for w in self.weights] + [self.state]
        return f"sizes={sizes}, activation={self.activation}, copies={self.copies}"

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if self.copies == 1:
            return x @ weight[0] + bias[0]
        return (x.unsqueeze(-2) @ weight).squeeze(-2) + bias

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        h = y[..., : self.state]
        t = t.to(y).expand(*y.shape[:-1], 1)
        x = torch.cat((h, t, y[..., self.state :]), dim=-1)

        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i > 0:
                x = self.activation(x)
            x = self._linear(x, weight, bias)

        return F.pad(x, (0, self.context))


class ConvDynamics(nn.Module):
    r"""Creates the dynamics :math:`f(h, t, c)` of an image-shaped CPMM: a CNN over the
    state kept in image shape.

    The state :math:`h` is a stack of image channels (:meth:`StateLayout.image`); the
    pseudotime and the context features enter as constant extra channels, and
    convolutions with ``kernel_size`` and "same" padding, separated by the activation,
    map the :math:`S + 1 + C_{tx}` input channels through the hidden channels to the
    :math:`S` channels of :math:`dh/dt`. As in :class:`Dynamics`, :meth:`forward` takes
    the flat :math:`y = [h, c]` and returns :math:`[f, 0]`, and ``copies > 1`` gives
    each trajectory (second to last dimension of :math:`y`) its own weights (a grouped
    convolution).

    The paper uses three convolutions (``hidden_channels=(64, 64)``) with sine
    activations.

    Arguments:
        shape: The image shape of the state, :math:`(S, H, W)` channels.
        context: The number of context features.
        hidden_channels: The channels of the hidden layers.
        activation: ``"sin"`` or ``"tanh"``.
        copies: The number of independent dynamics.
        kernel_size: The size of the (odd) convolution kernels.

    Example:
        >>> f = ConvDynamics(shape=(6, 8, 8), hidden_channels=(16, 16))
        >>> f(torch.tensor(0.5), torch.randn(3, 6 * 8 * 8)).shape
        torch.Size([3, 384])
    """

    def __init__(
        self,
        shape: Sequence[int],
        context: int = 0,
        hidden_channels: Sequence[int] = (64, 64),
        activation: Literal["sin", "tanh"] = "sin",
        copies: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()

        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")

        self.shape, self.context, self.copies = tuple(shape), context, copies
        self.state = math.prod(self.shape)
        self.activation = make_activation(activation)

        sizes = (self.shape[0] + 1 + context, *hidden_channels, self.shape[0])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()

        for before, after in itertools.pairwise(sizes):
            weight = torch.empty(copies * after, before, kernel_size, kernel_size)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.empty(copies * after)))

        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Draws the weights and biases of each convolution uniformly in
        :math:`[-1 / \sqrt{n}, 1 / \sqrt{n}]`, for :math:`n = C_{in} k^2` inputs, from
        ``generator`` (torch's global generator if :py:`None`).

        Example:
            >>> f = ConvDynamics(shape=(2, 4, 4), hidden_channels=(8,))
            >>> f.reset_parameters(torch.Generator().manual_seed(0))
            >>> bool(f.weights[0].abs().max() <= (3 * 3 * 3) ** -0.5)
            True
        """

        with torch.no_grad():
            for weight, bias in zip(self.weights, self.biases, strict=True):
                bound = weight[0].numel() ** -0.5
                _uniform(weight, bound, generator)
                _uniform(bias, bound, generator)

    def extra_repr(self) -> str:
        channels = [w.shape[1] for w in self.weights] + [self.shape[0]]
        kernel = self.weights[0].shape[-1]
        return (
            f"shape={self.shape}, channels={channels}, kernel_size={kernel}, "
            f"activation={self.activation}, copies={self.copies}"
        )

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        batch, (_, H, W) = y.shape[:-1], self.shape
        h = y[..., : self.state].unflatten(-1, self.shape)
        t = t.to(y).expand(*batch, 1, H, W)
        c = y[..., self.state :, None, None].expand(*batch, self.context, H, W)
        x = torch.cat((h, t, c), dim=-3)

        if self.copies > 1:  # the trajectories' channels side by side, one group each
            x = x.flatten(-4, -3)
        x = x.reshape(-1, *x.shape[-3:])

        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i > 0:
                x = self.activation(x)
            x = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=self.copies)

        return F.pad(x.reshape(*batch, self.state), (0, self.context))


def pseudotimes(n: int, like: Tensor) -> Tensor:
    r"""Returns :math:`n` sorted pseudotimes drawn uniformly in :math:`(0, 1)`: the
    normalized cumulative sums of :math:`n + 1` exponential spacings, whose law is that
    of the order statistics of :math:`n` uniforms, kept strictly increasing.

    Example:
        >>> t = pseudotimes(5, torch.zeros(()))
        >>> bool((t[1:] > t[:-1]).all() and t[0] > 0 and t[-1] < 1)
        True
    """

    spacings = torch.empty(n + 1, dtype=like.dtype, device=like.device).exponential_()
    spacings = spacings.clamp(min=1e-3)
    times = spacings.cumsum(dim=0) / spacings.sum()

    return times[:-1]


@torch.no_grad()
def _restore(parameters: list[nn.Parameter], values: list[Tensor]) -> None:
    r"""Copies ``values`` into ``parameters``."""

    for p, value in zip(parameters, values, strict=True):
        p.copy_(value)


def _warm_cosine_adam(
    parameters: list[nn.Parameter], lr: float, steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    r"""Adam at ``lr`` with the schedule of :func:`_warm_cosine` over ``steps``."""

    optimizer = torch.optim.Adam(parameters, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_warm_cosine, steps))

    return optimizer, schedule


def _warm_cosine(steps: int, step: int) -> float:
    r"""The factor of the learning rate at ``step`` of ``steps``: a linear warm-up over
    the first tenth of the steps, then a cosine decay from one to a hundredth."""

    warm = max(steps // 10, 1)
    cosine = 0.01 + 0.99 * (1 + math.cos(math.pi * step / steps)) / 2

    return min(1.0, (step + 1) / warm) * cosine


def soft_clip(x: Tensor, floor: float) -> Tensor:
    r"""Clips :math:`x` smoothly from below, :math:`m + \operatorname{softplus}(x - m)`."""

    return floor + F.softplus(x - floor)


def inverse_soft_clip(y: Tensor, floor: float) -> Tensor:
    r"""The inverse of :func:`soft_clip`, for :math:`y > m`."""

    z = (y - floor).clamp(min=1e-4)
    return floor + z + torch.log(-torch.expm1(-z))


class _Resolve(torch.autograd.Function):
    r"""Cached states made differentiable: the forward pass returns the cached states
    :math:`h(\theta)` and the backward pass solves again, with autograd, for
    :math:`\partial h / \partial \theta` (as gradient checkpointing does)."""

    @staticmethod
    def forward(ctx, solve, h: Tensor, *parameters: Tensor) -> Tensor:
        ctx.solve, ctx.parameters = solve, parameters
        ctx.save_for_backward(*parameters)  # autograd checks that they stay unchanged
        return h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        ctx.saved_tensors  # noqa: B018 (raises if a parameter changed in place)
        needed = ctx.needs_input_grad[2:]
        inputs = [p for p, n in zip(ctx.parameters, needed, strict=True) if n]

        with torch.enable_grad():
            grads = iter(torch.autograd.grad(ctx.solve(), inputs, grad, allow_unused=True))

        return None, None, *(next(grads) if n else None for n in needed)


class _ContinuousMixture(LazyDistribution):
    r"""The machinery shared by :class:`CPMM` and :class:`HierarchicalCPMM`: :math:`C`
    trajectories of one (or :math:`C`) neural ODE(s) evaluated at :math:`G`
    pseudotimes."""

    def __init__(
        self,
        features: int | Sequence[int],
        context: int = 0,
        trajectories: int = 1,
        components: int = 25,
        rank: int = 2,
        augment: float = 2.0,
        hidden_features: Sequence[int] | None = None,
        activation: Literal["sin", "tanh"] = "sin",
        learn_weights: bool = False,
        log_diag_min: float = -10.0,
        separate: bool = False,
        method: str = "euler",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        adjoint: bool = False,
        max_steps: int = 100,
        options: dict | None = None,
        pseudotimes: int | None = None,
        epsilon: float = 1e-6,
        random_times: bool = False,
    ) -> None:
        super().__init__()

        shape = {"features": features}
        if isinstance(features, Sequence):  # an image shape (C, H, W)
            shape = dict(zip(("channels", "height", "width"), features, strict=False))
        check_sizes(**shape, trajectories=trajectories, components=components, rank=rank)
        check_sizes(0, context=context)

        if method not in SOLVERS:
            raise ValueError(
                f"Unknown method '{method}': choose a torchdiffeq solver, e.g. 'dopri5' or 'rk4'."
            )

        self.shape = None if isinstance(features, int) else tuple(features)
        self.features = features if self.shape is None else math.prod(self.shape)
        self.context = context
        self.trajectories, self.components, self.rank = trajectories, components, rank
        self.log_diag_min, self.epsilon = log_diag_min, epsilon
        self.method, self.rtol, self.atol, self.adjoint = method, rtol, atol, adjoint
        self.max_steps, self.options = max_steps, dict(options or {})
        self.pseudotimes = pseudotimes or components
        self.random_times = random_times

        self.layout = self._layout(rank, augment, learn_weights)
        S = self.layout.size
        copies = trajectories if separate else 1

        if self.shape is None:
            hidden_features = hidden_features or (256, 256)
            self.dynamics = Dynamics(S, context, hidden_features, activation, copies)
        else:
            hidden_features = hidden_features or (64, 64)
            shape = (self.layout.channels, *self.shape[1:])
            self.dynamics = ConvDynamics(shape, context, hidden_features, activation, copies)

        self.hidden_features = tuple(hidden_features)
        if context > 0:
            self.start = MLP(context, trajectories * S, hidden_features)
        else:
            self.start = nn.Parameter(self._default_start(torch.zeros(self.features, 1)))

        self._cache = None
        self.fit_report: FitReport | None = None

    def _layout(self, rank: int, augment: float, learn_weights: bool) -> StateLayout:
        r"""The state layout: an augmented part of ``augment`` times the mixture part,
        in whole image channels for image-shaped features."""

        M = self.features
        if self.shape is None:
            mixture = (rank + 2) * M + learn_weights
            return StateLayout(M, rank, math.ceil(augment * mixture), learn_weights)

        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(
                f"Image-shaped features must be (C, H, W) with positive sizes, got {self.shape}."
            )

        channels, pixels = self.shape[0], math.prod(self.shape[1:])
        augment = math.ceil(augment * (rank + 2) * channels) * pixels

        return StateLayout(M, rank, augment, learn_weights, shape=self.shape)

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
            log_diag=torch.zeros_like(loc),
            log_weight=torch.zeros_like(loc[..., :1]),
            alpha=torch.zeros(C, self.layout.augment, dtype=x.dtype, device=x.device),
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
            SolverError: When the solver exceeds ``max_steps`` steps between two times,
                its step size underflows or the state becomes non-finite.
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

        options = dict(self.options)
        if self.method in ADAPTIVE:
            options.setdefault("max_num_steps", self.max_steps)

        odeint = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
        kwargs = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=options)

        try:
            h = odeint(self.dynamics, h0, times, **kwargs)
        except AssertionError as error:
            raise self._solver_error(str(error)) from error

        if not torch.isfinite(h).all():
            raise self._solver_error("non-finite values in state")

        h = h[1:] if prepend else h

        return h[..., : self.layout.size].movedim(0, -2)

    def _solver_error(self, reason: str) -> SolverError:
        if "max_num_steps" in reason:
            what = f"it took more than max_steps={self.max_steps} steps between two pseudotimes"
        elif "underflow" in reason:
            what = "its step size underflowed"
        else:
            what = "the state became NaN or infinite"

        return SolverError(
            f"The ODE solver ({self.method}, rtol={self.rtol}, atol={self.atol}) failed: {what}; "
            "the ODE became stiff. Lower the learning rate, clip the gradients, use a "
            "fixed-step solver (method='rk4') or, if the model is fine, raise max_steps."
        )

    def _settings(self) -> tuple:
        r"""What the grid states depend on besides the values of the parameters: the
        grid, the solver's settings and each parameter's identity, shape, dtype and
        device."""

        solver = (self.method, self.rtol, self.atol, self.max_steps, repr(self.options))
        layout = tuple((id(p), p.shape, p.dtype, p.device) for p in self.parameters())

        return self.components, self.adjoint, solver, layout

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
        sorted uniform pseudotimes in training mode, at the fixed grid
        :math:`t_j = (j - 1) / (G - 1)` in evaluation mode (cached for an unconditional
        model while the parameters keep their values, and differentiable when
        gradients are enabled)."""

        if self.training and self.random_times:
            return self.solve(pseudotimes(self.pseudotimes, self._reference()), c)

        return self._grid_states(c)

    def _reference(self) -> Tensor:
        return self.dynamics.weights[0]

    def parameters_of(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Returns the mixture parameters of states :math:`h`, with shape
        :math:`(*, S)`: the log-weights, means, loadings and the log-diagonals
        :math:`\log d`, soft-clipped from below, in :class:`~contmix.MFA`'s layout."""

        state = self.layout.unpack(h)

        if state.log_weight is None:
            logits = torch.zeros_like(h[..., 0])
        else:
            logits = state.log_weight.squeeze(-1)

        return logits, state.loc, state.factor, soft_clip(state.log_diag, self.log_diag_min)

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

        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy '{strategy}': choose one of {STRATEGIES}.")

        check_sizes(n_init=n_init)
        if steps is None:
            steps = STEPS.get(strategy, 0)
        check_sizes(0, steps=steps)
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
            labels = group_labels(x, self.trajectories, "kmeans", y, generator)
            paths = path_components(
                x, labels, self.trajectories, self.components, self.rank, n_init, generator
            )
        else:
            stats = self._statistics(x, strategy, y, n_init, generator)
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
                log_var = self._log_diag(paths.diag)
                self._fit_path(paths.loc, log_var, x.var(dim=0).mean(), steps, lr)
            elif strategy == "em" and self.context == 0 and steps > 0:
                self._fit_components(paths, steps, lr, progress)

        return paths.logits, self._report(x, strategy, paths.logits)

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

    def _log_diag(self, diag: Tensor) -> Tensor:
        r"""The state's :math:`\log d` of diagonals ``diag``, above the soft floor."""

        log_var = (diag - self.epsilon).clamp(min=torch.finfo(diag.dtype).tiny).log()
        return inverse_soft_clip(log_var.clamp(min=self.log_diag_min + 0.1), self.log_diag_min)

    def _path_start(self, paths: PathComponents) -> Tensor:
        r"""The initial states of the paths' first components: their means, loadings,
        log-diagonals and log-weights, and a zero augmented part."""

        loc = paths.loc[:, 0]
        state = State(
            loc=loc,
            factor=paths.factor[:, 0],
            log_diag=self._log_diag(paths.diag[:, 0]),
            log_weight=paths.log_weights[:, :1],
            alpha=loc.new_zeros(loc.shape[0], self.layout.augment),
        )

        return self.layout.pack(state)

    def _reset(self, generator: torch.Generator | None) -> None:
        r"""Draws the dynamics (and the context networks) afresh from ``generator``, with
        their last layers scaled down: the trajectories start slow (and the same
        whatever the context), whatever the model was before."""

        self.dynamics.reset_parameters(generator)
        self.dynamics.weights[-1].mul_(1e-2)
        self.dynamics.biases[-1].mul_(1e-2)

        for mlp in (self.start, getattr(self, "logits", None)):
            if isinstance(mlp, nn.Module):
                _reset_linear(mlp, generator)
                mlp[-1].weight.mul_(1e-2)

    def _statistics(
        self,
        x: Tensor,
        strategy: str,
        y: Tensor | None,
        n_init: int,
        generator: torch.Generator | None,
    ) -> GroupStatistics:
        r"""The groups and their ordered sub-clusters (:func:`group_statistics`): of
        ``n_init`` draws, each from its own centres, the one whose mixture (of the
        sub-clusters' diagonal Gaussians, the start that the trajectories regress on)
        has the highest mean log-likelihood on :math:`x`."""

        best, score = None, None

        for _ in range(n_init):
            labels = group_labels(x, self.trajectories, strategy, y, generator)
            stats = group_statistics(
                x, labels, self.trajectories, self.components, strategy, generator=generator
            )
            if n_init == 1:
                return stats

            value = self._log_likelihood(x, stats)
            if best is None or value > score:
                best, score = stats, value

        return best

    def _log_likelihood(self, x: Tensor, stats: GroupStatistics) -> Tensor:
        r"""The mean log-likelihood of :math:`x` under the diagonal Gaussians of the
        sub-clusters, around the data mean."""

        shift = x.mean(dim=0)
        diag = stats.variances.clamp(min=math.exp(self.log_diag_min)) + self.epsilon
        factor = torch.zeros_like(stats.means).unsqueeze(-1)
        base = LowRankNormal(stats.means - shift, factor, diag)
        inner = GaussianMixture(base, torch.zeros_like(stats.means[..., 0]))

        return GaussianMixture(inner, stats.logits).log_prob(x - shift).mean()

    def _fit_components(
        self, paths: PathComponents, steps: int, lr: float, progress: bool | None = None
    ) -> None:
        r"""Regresses the trajectories on the paths' components at the evaluation grid:
        minimizes the mean of :math:`\log(1 + \mathrm{KL}(q_{cj} \,\|\, p_{cj}) / M)` over
        the components, with :math:`q_{cj}` the path's component and :math:`p_{cj}` the
        trajectory's, which is zero when the trajectories pass through the components
        (whatever the rotation of their loadings), close to the divergence per feature
        near there, and keeps the components still far off from dominating the first
        steps; plus the squared error of the log-weights when they are learned.

        Adam with a learning rate ``lr`` that rises linearly over the first tenth of the
        steps and then decays to a hundredth of it (cosine): without the warm-up, the
        first steps of the dynamics could throw a trajectory off its path for good (on
        one seed of the spiral, a divergence of 3 nats per feature at the end against
        0.002 with it). When the loss rises by more than one from its best, a mean
        :math:`1 + \mathrm{KL}` e times its best (a step too long for the dynamics: a
        divergence per feature from 0.7 to 6.9 on the digits at 1e-2), the parameters
        go back to their best values and the rest of the steps run at half the rate; the
        best parameters are kept at the end. Gradients are clipped to norm one; the
        divergences are computed in float64."""

        grid = torch.linspace(0, 1, self.components)
        target = LowRankMultivariateNormal(*(p.double() for p in paths[2:]))
        parameters = list(self.parameters())
        optimizer, schedule = _warm_cosine_adam(parameters, lr, steps)
        best, kept = math.inf, None
        bar = progress_bar(steps, "CPMM regression", progress)

        for step in range(steps):
            with torch.enable_grad():
                loss = self._divergence(target, paths.log_weights, grid)
            value = loss.item()  # one sync per regression step, not in training
            bar.update()
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if value < best:
                best, kept = value, [p.detach().clone() for p in parameters]
            elif value > best + 1:  # (1 + KL) e times its best: a divergence, not noise
                _restore(parameters, kept)
                lr = lr / 2
                optimizer, schedule = _warm_cosine_adam(parameters, lr, steps - step)
                continue
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()

        bar.close()
        if kept is not None:
            _restore(parameters, kept)

    def _divergence(self, target: LowRankMultivariateNormal, log_weights: Tensor, grid: Tensor):
        r"""The regression loss of :meth:`_fit_components` at the grid."""

        logits, loc, factor, log_diag = self.parameters_of(self.solve(grid))
        diag = log_diag.exp() + self.epsilon
        p = LowRankMultivariateNormal(loc.double(), factor.double(), diag.double())
        loss = (kl_divergence(target, p) / self.features).log1p().mean().to(loc.dtype)
        if self.layout.weights:
            loss = loss + (logits.log_softmax(dim=-1) - log_weights).square().mean()

        return loss

    def _fit_path(
        self, means: Tensor, log_diag: Tensor, scale: Tensor, steps: int, lr: float
    ) -> None:
        r"""Regresses the trajectories on the ordered sub-cluster centres and
        log-variances at the evaluation grid: the trajectories start out spread along
        the data instead of sitting at their initial state. The squared errors of the
        means and loadings are in units of ``scale``, the variance of the data (positive
        by :func:`~contmix.utils.check_scale`, where the spread of the centres is zero or
        undefined for one centre per trajectory)."""

        grid = torch.linspace(0, 1, self.components)
        factor0 = self.layout.unpack(self.start.detach()).factor.unsqueeze(-3)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr / 10)

        with torch.enable_grad():
            for _ in range(steps):
                state = self.layout.unpack(self.solve(grid))
                loss = (
                    (state.loc - means).square().mean() / scale
                    + (state.log_diag - log_diag).square().mean()
                    + (state.factor - factor0).square().mean() / scale
                )
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.parameters(), 1.0)
                optimizer.step()
                schedule.step()


class CPMM(_ContinuousMixture):
    r"""Creates a continuously parameterized mixture model (CPMM).

    A mixture of :math:`G` factor analyzers whose parameters are the states of one
    neural-ODE trajectory at pseudotimes :math:`t_1 < \dots < t_G` in :math:`[0, 1]`,

    .. math:: p(x \mid c) = \sum_{j = 1}^G \pi(t_j) \,
        \mathcal{N}(x \mid \mu(t_j), D(t_j) + A(t_j) A(t_j)^T) ,
        \quad \frac{dh}{dt} = f(h, t, c), \quad h(0) = h_0(c) ,

    with the state :math:`h = [\mu, \operatorname{vec}(A), \log d, (\log \pi), \alpha]`
    (:class:`StateLayout`), :math:`D = \operatorname{diag}(\exp(m +
    \operatorname{softplus}(\log d - m)) + \epsilon)` with :math:`\log d` soft-clipped
    from below at :math:`m` (``log_diag_min``), and :math:`\alpha` an augmented part
    that the mixture never reads. The weights are constant, :math:`\pi = 1 / G`, unless
    ``learn_weights``. The dynamics :math:`f` are an MLP of :math:`[h, t, c]`
    (:class:`Dynamics`) and the initial state :math:`h_0` is a learnable parameter, or
    an MLP of the context.

    With image-shaped features :math:`(C, H, W)`, the state is kept in image shape: the
    means, each column of the loadings, the log-diagonals and the augmented part are
    image channels (:meth:`StateLayout.image`), and the dynamics are a CNN with the
    pseudotime (and the context) as extra constant channels (:class:`ConvDynamics`:
    three convolutions with 64 hidden channels and sine activations by default, as in
    the paper). The state is flattened only to evaluate the likelihood: samples are
    flat, with shape :math:`(N, C H W)` (``x.flatten(1)``), and the weights constant.

    The components sit at the fixed grid :math:`t_j = (j - 1)/(G - 1)`, in training
    and evaluation modes alike, solved once and cached until the parameters change
    (however they change); gradients flow in both modes. With ``random_times``,
    training mode instead draws sorted uniform pseudotimes at every call, as in the
    paper. The ODE is solved by Euler steps between the pseudotimes by default (one
    evaluation of the dynamics per component): the trajectory is then that of the
    discrete map, the same in training, evaluation and :meth:`extract`, which returns a
    plain :class:`~contmix.MFA` with the components.

    Training: :meth:`initialize` with its default ``"em"`` start, then Adam at a
    learning rate of :math:`3 \times 10^{-4}` on the negative log-likelihood, in a plain
    loop (``benchmarks/cpmm_training.py``: on the two circles, the spiral and the
    digits, the test log-likelihood never falls by more than 0.05 nats between
    checkpoints 100 steps apart). :math:`10^{-3}` oscillates on the 2-D sets.

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023)
        | https://proceedings.mlr.press/v202/bender23a.html

        | Neural Ordinary Differential Equations (Chen et al., 2018)
        | https://arxiv.org/abs/1806.07366

    Arguments:
        features: The number of features :math:`M`, or an image shape :math:`(C, H, W)`
            with :math:`M = C H W`.
        context: The number of context features.
        components: The number of components :math:`G`.
        rank: The rank :math:`R` of the loadings.
        augment: The size of the augmented part :math:`\alpha`, as a multiple of the
            mixture part of the state (the paper uses 2 to 4), rounded up to whole
            channels for images.
        hidden_features: The widths of the hidden layers of the dynamics (and of the
            context MLP): :py:`(256, 256)` by default, or the hidden channels of the
            CNN, :py:`(64, 64)` by default, for images.
        activation: The activation of the dynamics, ``"sin"`` or ``"tanh"``.
        learn_weights: Whether :math:`\log \pi` is in the state (learned weights).
        log_diag_min: The soft lower bound :math:`m` of :math:`\log d`, in the units of
            :math:`x^2`: -10 by default, a standard deviation of 0.007; the paper uses -6
            (0.05) on images in logit space, which floors the narrow components of
            data at the scale of the 2-D sets (0.02 noise on the circles).
        method: The torchdiffeq solver: ``"euler"`` (the default) and the other fixed-step
            methods step from one pseudotime to the next, e.g. ``"rk4"`` with four
            evaluations per step; adaptive ones, e.g. ``"dopri5"``, follow the ODE to
            ``rtol`` and ``atol`` with as many steps as they need.
        rtol: The relative tolerance of adaptive solvers.
        atol: The absolute tolerance of adaptive solvers.
        adjoint: Whether to backpropagate with the adjoint method
            (:func:`torchdiffeq.odeint_adjoint`), whose memory does not grow with the
            number of solver steps.
        max_steps: The step budget of adaptive solvers between two pseudotimes, beyond
            which a :class:`SolverError` is raised. A smooth trajectory takes one to a
            few steps per interval (about 50 dynamics evaluations per solve over 3000
            Adam steps on the spiral), so the budget stops a stiff solve early instead
            of letting it stall.
        options: Other options of the solver, e.g. ``{"step_size": 0.05}``.
        pseudotimes: The number of pseudotimes drawn in training mode with
            ``random_times`` (:math:`G` by default).
        epsilon: A numerical stability term added to the diagonal.
        random_times: Whether training mode draws sorted uniform pseudotimes at every
            call (the paper's scheme) instead of the grid.

    Example:
        >>> model = CPMM(features=2, components=8, rank=1, hidden_features=(32,))
        >>> x = torch.randn(64, 2)
        >>> report = model.initialize(x, steps=5)  # the "em" start
        >>> model().log_prob(x).shape
        torch.Size([64])
        >>> mfa = model.eval().extract()
        >>> torch.allclose(mfa().log_prob(x), model().log_prob(x))
        True

        An image-shaped CPMM, with CNN dynamics:

        >>> model = CPMM(features=(1, 8, 8), components=4, hidden_features=(16, 16))
        >>> model().log_prob(torch.randn(5, 1, 8, 8).flatten(1)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int | Sequence[int],
        context: int = 0,
        components: int = 25,
        rank: int = 2,
        **kwargs,
    ):
        super().__init__(features, context, 1, components, rank, **kwargs)

    def forward(self, c: Tensor | None = None) -> GaussianMixture:
        c = check_context(c, self.context, self._reference(), ignore=True)
        return self._inner(self.states(c).squeeze(-3))

    def predict_proba(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the posterior of the components :math:`p(j \mid x)` by Bayes' rule,
        with shape :math:`(*, G)`, whose rows sum to one (the exponential of the
        distribution's :meth:`~contmix.distributions.GaussianMixture.posterior`).

        Example:
            >>> model = CPMM(2, components=4, rank=1, hidden_features=(8,))
            >>> model.predict_proba(torch.randn(5, 2)).sum(dim=-1).allclose(torch.ones(5))
            True
        """

        return self(c).posterior(x).exp()

    def predict(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the most probable component :math:`\arg\max_j p(j \mid x)`."""

        return self(c).predict(x)

    def initialize(
        self,
        x: Tensor,
        strategy: Literal["random", "kmeans", "em"] = "em",
        steps: int | None = None,
        lr: float = 1e-2,
        *,
        n_init: int = 1,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> FitReport:
        r"""Initializes the trajectory from data.

        ``"em"`` (the default): an :class:`~contmix.MFA` with :math:`G` components is
        fitted to :math:`x` by EM, its components are ordered along a path and their
        loadings aligned along it (:func:`~contmix.mixtures.paths.path_components`); the initial
        state gets the first component, the dynamics are drawn afresh with their last
        layer scaled down, and the trajectory is regressed on the components at the
        evaluation grid for ``steps`` Adam steps (1000 by default), by the
        Kullback-Leibler divergence from each component to the trajectory's: training
        starts where a direct fit ends (the weights along the trajectory are equal, as
        the MFA's are not).
        ``"kmeans"`` (the paper's heuristic, extended): the data is split by k-means
        into :math:`G` clusters whose centres are ordered along a path
        (:func:`~contmix.mixtures.groups.order_path`); the initial state gets the first
        centre, the log-variances of its cluster as :math:`\log d`, small random
        loadings and a zero augmented part; the dynamics are drawn afresh with their
        last layer scaled down, so that the trajectory starts slow, and then, for
        ``steps`` Adam steps, the trajectory is regressed on the ordered centres and
        log-variances at the evaluation grid. ``"random"``: the initial state starts at
        a random sample with the log-variances of the data, the dynamics drawn afresh
        and scaled down, no regression. With one component (:math:`G = 1`), it is the
        Gaussian of the data (diagonal, with small loadings). For a conditional model,
        the context MLP starts out producing that initial state whatever the context,
        and there is no regression.

        Of ``n_init`` sets of clusters, each from its own centres, the one whose
        mixture of the clusters' diagonal Gaussians has the highest mean log-likelihood
        on :math:`x` is kept. Every random draw comes from ``generator``: the same seed
        gives the same parameters, whatever the model was before, and the global seed
        is left alone.

        Nothing changes if an error is raised.

        Arguments:
            x: The samples, with shape :math:`(N, M)`.
            strategy: ``"em"``, ``"kmeans"`` or ``"random"``.
            steps: The number of regression steps (0 to skip): 1000 for ``"em"``, 100
                for ``"kmeans"`` by default.
            lr: The initial learning rate of the regression (Adam, cosine decay to a
                hundredth of it for ``"em"``, a tenth for ``"kmeans"``).
            n_init: The number of sets of clusters, of which the best is kept.
            generator: The random generator (torch's global generator if :py:`None`).
            progress: Whether to show progress bars (:py:`None`: only in a terminal, see
                :func:`~contmix.report.progress_bar`).

        Returns:
            The :class:`~contmix.report.FitReport` of the fit, also kept as
            ``fit_report``: the strategy and the mean log-likelihood of :math:`x` at the
            grid once initialized (for a conditional model, at a zero context).

        Example:
            >>> x = torch.randn(64, 2)
            >>> a = CPMM(2, components=4, rank=1, hidden_features=(8,))
            >>> b = CPMM(2, components=4, rank=1, hidden_features=(8,))
            >>> _ = a.initialize(x, steps=3, n_init=2, generator=torch.Generator().manual_seed(0))
            >>> report = b.initialize(x, 'em', steps=3, n_init=2,
            ...     generator=torch.Generator().manual_seed(0))
            >>> report is b.fit_report and report.strategy
            'em'
            >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
            True
        """

        return self._initialize(x, strategy, None, steps, lr, n_init, generator, progress)[1]

    @torch.no_grad()
    def extract(self, components: int | None = None, c: Tensor | None = None) -> MFA:
        r"""Returns a :class:`~contmix.MFA` holding the components at the evaluation grid
        (or at ``components`` evenly spaced pseudotimes): no ODE in its forward, the same
        :meth:`log_prob` as the CPMM in evaluation mode, saved and loaded on its own.
        With a fixed-step solver (Euler by default), another number of components is
        another discretization: its states follow the ODE to the order of the step, not
        of a tolerance.

        Arguments:
            components: The number of components :math:`G'` (:math:`G` by default).
            c: For a conditional model, one context, with shape :math:`(C_{tx},)`.
        """

        h = self._extracted_states(components, c).squeeze(-3)
        mfa = MFA(self.features, components=h.shape[-2], rank=self.rank, epsilon=self.epsilon)
        mfa = mfa.to(h)

        for p, value in zip(mfa.phi, self.parameters_of(h), strict=True):
            p.copy_(value)

        return mfa


class HierarchicalCPMM(_ContinuousMixture):
    r"""Creates a hierarchical CPMM: a mixture of :math:`C` CPMM trajectories.

    .. math:: p(x \mid c) = \sum_{k = 1}^C \eta_k \sum_{j = 1}^G \pi_k(t_j) \,
        \mathcal{N}(x \mid \mu_k(t_j), D_k(t_j) + A_k(t_j) A_k(t_j)^T)

    The :math:`C` trajectories start from :math:`C` learnable initial states and share
    one ODE (or, with ``separate``, each has its own, as in the paper's ablation). The
    outer weights :math:`\eta = \operatorname{softmax}(\text{logits})` are learnable:
    a parameter, or for a conditional model an MLP of the context, so that the
    proportions of the groups :math:`\eta_k(c)` change with :math:`c`.
    Its distribution is the mixture family nested once: a
    :class:`~contmix.distributions.GaussianMixture` over :math:`C` trajectories whose
    components are mixtures with batch shape :math:`(C,)` over
    :class:`~contmix.distributions.LowRankNormal` with batch shape :math:`(C, G)`.
    Bayes' rule gives :math:`p(k \mid x)` for clustering (:meth:`predict`,
    :meth:`predict_proba`) and :meth:`joint_log_prob` the supervised likelihood.

    When training for clustering, the paper finds it helpful to regularize the entropy
    across trajectories (:meth:`entropy`).

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023), Section 3.2
        | https://proceedings.mlr.press/v202/bender23a.html

    Arguments:
        features: The number of features :math:`M`, or an image shape (see
            :class:`CPMM`).
        context: The number of context features.
        trajectories: The number of trajectories :math:`C`.
        components: The number of components :math:`G` per trajectory.
        rank: The rank :math:`R` of the loadings.
        separate: Whether each trajectory has its own ODE.
        kwargs: The other arguments of :class:`CPMM`.

    Example:
        >>> model = HierarchicalCPMM(2, trajectories=3, components=5, hidden_features=(32,))
        >>> x = torch.randn(64, 2)
        >>> report = model.initialize(x, steps=5)  # the "em" start
        >>> model().log_prob(x).shape
        torch.Size([64])
        >>> model.predict_proba(x).shape
        torch.Size([64, 3])
    """

    def __init__(
        self,
        features: int | Sequence[int],
        context: int = 0,
        trajectories: int = 10,
        components: int = 25,
        rank: int = 2,
        separate: bool = False,
        **kwargs,
    ):
        super().__init__(
            features, context, trajectories, components, rank, separate=separate, **kwargs
        )

        if context > 0:
            self.logits = MLP(context, trajectories, self.hidden_features)
        else:
            self.logits = nn.Parameter(torch.zeros(trajectories))

    def outer_logits(self, c: Tensor | None = None) -> Tensor:
        r"""Returns the logits of the outer weights :math:`\eta(c)`, with shape
        :math:`(*, C)`: a parameter, or an MLP of the context."""

        return self.logits if c is None else self.logits(c)

    def forward(self, c: Tensor | None = None) -> GaussianMixture:
        c = check_context(c, self.context, self._reference(), ignore=True)
        inner = self._inner(self.states(c))
        return GaussianMixture(inner, self.outer_logits(c).expand(inner.batch_shape))

    def predict_proba(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the posterior of the trajectories :math:`p(k \mid x)` by Bayes' rule,
        with shape :math:`(*, C)`.

        .. math:: p(k \mid x) = \frac{\eta_k p_k(x)}{\sum_l \eta_l p_l(x)}
        """

        return self(c).posterior(x).exp()

    def predict(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the most probable trajectory :math:`\arg\max_k p(k \mid x)`."""

        return self(c).predict(x)

    def joint_log_prob(self, x: Tensor, y: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the joint log-likelihood of samples and labels (trajectories), for
        supervised training.

        .. math:: \log p(x, y) = \log \eta_y + \log p(x \mid y)

        Arguments:
            x: The samples, with shape :math:`(*, M)`.
            y: The labels in :math:`[0, C)`, with shape :math:`(*)`.
            c: The context, if any.
        """

        if y.is_floating_point() or y.is_complex() or ((y < 0) | (y >= self.trajectories)).any():
            raise ValueError(
                f"y must hold integer labels in [0, {self.trajectories}), one per sample."
            )

        joint = self(c).joint(x)
        return joint.gather(-1, y.unsqueeze(-1).expand(*joint.shape[:-1], 1)).squeeze(-1)

    def entropy(
        self, x: Tensor, c: Tensor | None = None, d: GaussianMixture | None = None
    ) -> Tensor:
        r"""Returns the entropy of the average posterior over trajectories,

        .. math:: H(\bar{p}) = -\sum_{k = 1}^C \bar{p}_k \log \bar{p}_k , \quad
            \bar{p}_k = \frac{1}{N} \sum_{n = 1}^N p(k \mid x_n) ,

        which is :math:`\log C` when the batch spreads evenly over the trajectories and
        :math:`0` when a single trajectory takes it all. The opt-in regularized loss
        :math:`-\frac{1}{N} \sum_n \log p(x_n) - \lambda H(\bar{p})` keeps every
        trajectory in use.

        Arguments:
            x: A batch of samples, with shape :math:`(N, M)`.
            c: The context, if any.
            d: The model's distribution :py:`model(c)` when it is already at hand: in
                training mode, passing the one that gives the likelihood saves an ODE
                solve (and uses the same pseudotimes).

        Example:
            >>> model = HierarchicalCPMM(2, trajectories=3, components=4, hidden_features=(8,))
            >>> x = torch.randn(32, 2)
            >>> d = model()
            >>> loss = -d.log_prob(x).mean() - 0.1 * model.entropy(x, d=d)
            >>> bool(model.entropy(x) <= math.log(3))
            True
        """

        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(
                "entropy() is that of the average posterior over a batch: x must have shape "
                f"(N, {self.features}) with N >= 1, got {tuple(x.shape)}."
            )

        log_p = (self(c) if d is None else d).posterior(x)
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])

        return -(log_mean.exp() * log_mean).sum(dim=-1)

    def initialize(
        self,
        x: Tensor,
        strategy: Literal["random", "kmeans", "em"] = "em",
        y: Tensor | None = None,
        steps: int | None = None,
        lr: float = 1e-2,
        *,
        n_init: int = 1,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> FitReport:
        r"""Initializes the trajectories from data.

        The samples are split into :math:`C` groups: by the labels ``y`` when given
        (supervised), else by k-means (``"em"``, ``"kmeans"``) or around :math:`C`
        random samples (``"random"``). For ``"em"`` (the default), each group gets its
        own MFA fitted by EM, laid along its path, and the trajectories are regressed on
        them all at once, as in :meth:`CPMM.initialize`; otherwise each group is split
        into :math:`G` sub-clusters (k-means, or random samples) ordered along a path,
        and as in :meth:`CPMM.initialize` each initial state gets its group's first
        centre and log-variances, small random loadings, a zero augmented part, the
        dynamics are drawn afresh and scaled down and, for ``"kmeans"``, regressed for
        ``steps`` Adam steps on the ordered centres of every group at once. The outer
        weights are set to the group sizes. As in
        :meth:`CPMM.initialize`, the best of ``n_init`` sets of clusters is kept and
        every random draw comes from ``generator``.

        Nothing changes if an error is raised.

        Arguments:
            x: The samples, with shape :math:`(N, M)`.
            strategy: ``"em"``, ``"kmeans"`` or ``"random"``.
            y: Optional labels in :math:`[0, C)`, with shape :math:`(N,)`.
            steps: The number of regression steps (0 to skip): 1000 for ``"em"``, 100
                for ``"kmeans"`` by default.
            lr: The initial learning rate of the regression (Adam, cosine decay to a
                hundredth of it for ``"em"``, a tenth for ``"kmeans"``).
            n_init: The number of sets of clusters, of which the best is kept.
            generator: The random generator (torch's global generator if :py:`None`).
            progress: Whether to show progress bars (:py:`None`: only in a terminal).

        Returns:
            The :class:`~contmix.report.FitReport` of the fit, also kept as
            ``fit_report`` (see :meth:`CPMM.initialize`).

        Example:
            >>> x = torch.randn(64, 2)
            >>> model = HierarchicalCPMM(2, trajectories=2, components=3, hidden_features=(8,))
            >>> state = torch.random.get_rng_state()
            >>> _ = model.initialize(x, steps=3, generator=torch.Generator().manual_seed(0))
            >>> torch.equal(torch.random.get_rng_state(), state)  # the global seed is left alone
            True
        """

        logits, report = self._initialize(x, strategy, y, steps, lr, n_init, generator, progress)

        with torch.no_grad():
            if self.context > 0:  # the group sizes, whatever the context at first
                self.logits[-1].bias.copy_(logits)
            else:
                self.logits.copy_(logits)

        return report

    @torch.no_grad()
    def extract(self, components: int | None = None, c: Tensor | None = None) -> HierarchicalMFA:
        r"""Returns a :class:`~contmix.HierarchicalMFA` holding the :math:`C \times G`
        components at the evaluation grid (or :math:`G'` = ``components`` evenly spaced
        pseudotimes) and the outer weights: no ODE in its forward, the same
        :meth:`log_prob` and :meth:`predict` as the model in evaluation mode.

        Arguments:
            components: The number of components :math:`G'` per trajectory.
            c: For a conditional model, one context, with shape :math:`(C_{tx},)`.
        """

        h = self._extracted_states(components, c)
        C, G = h.shape[-3:-1]
        model = HierarchicalMFA(
            self.features, groups=C, components=G, rank=self.rank, epsilon=self.epsilon
        ).to(h)

        logits = self.outer_logits(c)
        for p, value in zip(model.phi, (logits, *self.parameters_of(h)), strict=True):
            p.copy_(value)

        return model
