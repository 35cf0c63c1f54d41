r"""The ODE solver of continuous mixtures: its settings in one object, and the solve.

The methods are those that torchdiffeq documents (its README, "Solvers"): adaptive ones
follow the ODE to a tolerance with as many steps as they need, fixed-step ones step from
one requested time to the next (or by ``options["step_size"]``).

References:
    | torchdiffeq (Chen, 2018)
    | https://github.com/rtqichen/torchdiffeq
"""

__all__ = [
    "ADAPTIVE",
    "FIXED",
    "METHODS",
    "Solver",
    "SolverError",
    "pseudotimes",
]

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torchdiffeq

from torch import Tensor
from torch.autograd.function import once_differentiable

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
METHODS = (*ADAPTIVE, *FIXED, "scipy_solver")


class SolverError(RuntimeError):
    r"""Raised when the ODE solver of a CPMM fails: it exceeds its step budget (the ODE
    became stiff), its step size underflows or the state becomes non-finite."""


@dataclass(frozen=True)
class Solver:
    r"""The settings of the ODE solver of a continuous mixture.

    Arguments:
        method: The torchdiffeq method: ``"euler"`` (the default) and the other
            fixed-step methods step from one pseudotime to the next, e.g. ``"rk4"`` with
            four evaluations per step; adaptive ones, e.g. ``"dopri5"``, follow the ODE
            to ``rtol`` and ``atol`` with as many steps as they need.
        rtol: The relative tolerance of adaptive methods.
        atol: The absolute tolerance of adaptive methods.
        adjoint: Whether to backpropagate with the adjoint method
            (:func:`torchdiffeq.odeint_adjoint`), whose memory does not grow with the
            number of solver steps.
        max_steps: The step budget of adaptive methods between two pseudotimes, beyond
            which a :class:`SolverError` is raised (torchdiffeq's ``max_num_steps``). A
            smooth trajectory takes one to a few steps per interval (about 50 dynamics
            evaluations per solve over 3000 Adam steps on the spiral), so the budget
            stops a stiff solve early instead of letting it stall.
        options: Other options of the method, e.g. ``{"step_size": 0.05}``.

    Example:
        >>> solver = Solver("dopri5", rtol=1e-5, atol=1e-6)
        >>> solver.adaptive, solver.max_steps
        (True, 100)
        >>> import torch
        >>> f = lambda t, y: -y
        >>> y = solver.solve(f, torch.ones(1), torch.tensor([0.0, 1.0]))
        >>> round(y[-1].item(), 4)
        0.3679
    """

    method: str = "euler"
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: bool = False
    max_steps: int = 100
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"Unknown method '{self.method}': choose a torchdiffeq solver, e.g. 'dopri5' "
                "or 'rk4'."
            )

        object.__setattr__(self, "options", dict(self.options))  # a copy of its own

    @property
    def adaptive(self) -> bool:
        r"""Whether the method adapts its steps to the tolerances."""

        return self.method in ADAPTIVE

    def solve(self, f: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t: Tensor) -> Tensor:
        r"""Returns the solution :math:`y(t)` of :math:`\dot{y} = f(t, y)` from
        :math:`y(t_0) = y_0`, with shape :math:`(T, *)`.

        Raises:
            SolverError: When an adaptive method exceeds ``max_steps`` steps between two
                times or its step size underflows, or the state becomes non-finite.
        """

        options = dict(self.options)
        if self.adaptive:
            options.setdefault("max_num_steps", self.max_steps)

        odeint = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint

        try:
            y = odeint(
                f, y0, t, rtol=self.rtol, atol=self.atol, method=self.method, options=options
            )
        except AssertionError as error:  # how torchdiffeq stops an adaptive solve
            raise self._error(
                f"it took more than max_steps={self.max_steps} steps between two pseudotimes "
                "or its step size underflowed"
            ) from error

        if not y.isfinite().all():
            raise self._error("the state became NaN or infinite")

        return y

    def _error(self, what: str) -> SolverError:
        return SolverError(
            f"The ODE solver ({self.method}, rtol={self.rtol}, atol={self.atol}) failed: {what}; "
            "the ODE became stiff. Lower the learning rate, clip the gradients, use a "
            "fixed-step solver (Solver('rk4')) or, if the model is fine, raise max_steps."
        )


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
