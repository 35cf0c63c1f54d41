r"""The regression of the trajectories of a continuous mixture on a start: the
components of an EM fit laid along paths (:func:`fit_components`) or ordered cluster
centres (:func:`fit_path`), so that training starts where a direct fit ends.

Each function takes the model, a continuous mixture (:class:`~contmix.CPMM` or
:class:`~contmix.HierarchicalCPMM`), and trains its parameters in place.
"""

__all__ = ["divergence", "fit_components", "fit_path", "warm_cosine"]

import math

from functools import partial

import torch
import torch.nn as nn

from torch import Tensor
from torch.distributions import LowRankMultivariateNormal, kl_divergence

from .paths import PathComponents
from ..report import progress_bar


@torch.no_grad()
def _restore(parameters: list[nn.Parameter], values: list[Tensor]) -> None:
    r"""Copies ``values`` into ``parameters``."""

    for p, value in zip(parameters, values, strict=True):
        p.copy_(value)


def _warm_cosine_adam(
    parameters: list[nn.Parameter], lr: float, steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    r"""Adam at ``lr`` with the schedule of :func:`warm_cosine` over ``steps``."""

    optimizer = torch.optim.Adam(parameters, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warm_cosine, steps))

    return optimizer, schedule


def warm_cosine(steps: int, step: int) -> float:
    r"""The factor of the learning rate at ``step`` of ``steps``: a linear warm-up over
    the first tenth of the steps, then a cosine decay from one to a hundredth."""

    warm = max(steps // 10, 1)
    cosine = 0.01 + 0.99 * (1 + math.cos(math.pi * step / steps)) / 2

    return min(1.0, (step + 1) / warm) * cosine


def fit_components(
    model: nn.Module, paths: PathComponents, steps: int, lr: float, progress: bool | None = None
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
    divergence per feature from 0.7 to 6.9 on the digits at 1e-2), or when it has not
    improved on its best for a tenth of the steps (at least 10: a rate too high for the
    dynamics to settle, as at 784-D, where the loss rose from 0.32 to 0.6-0.8 and
    stayed there for 900 of 1000 steps), the parameters go back to their best values
    and the rest of the steps run at half the rate; the best parameters are kept at
    the end. Gradients are clipped to norm one; the
    divergences are computed in float64."""

    grid = torch.linspace(0, 1, model.components)
    target = LowRankMultivariateNormal(*(p.double() for p in paths[2:]))
    parameters = list(model.parameters())
    optimizer, schedule = _warm_cosine_adam(parameters, lr, steps)
    best, kept, since = math.inf, None, 0
    patience = max(steps // 10, 10)
    bar = progress_bar(steps, "CPMM regression", progress)

    for step in range(steps):
        with torch.enable_grad():
            loss = divergence(model, target, paths.log_weights, grid)
        value = loss.item()  # one sync per regression step, not in training
        bar.update()
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if value < best:
            best, kept, since = value, [p.detach().clone() for p in parameters], 0
        else:
            since += 1
        # (1 + KL) e times its best, a divergence; or no progress for a tenth of the steps
        if value > best + 1 or since > patience:
            _restore(parameters, kept)
            lr, since = lr / 2, 0
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


def divergence(
    model: nn.Module, target: LowRankMultivariateNormal, log_weights: Tensor, grid: Tensor
) -> Tensor:
    r"""The regression loss of :func:`fit_components` at the grid."""

    logits, loc, factor, log_diag = model.parameters_of(model.solve(grid))
    diag = log_diag.exp() + model.epsilon
    p = LowRankMultivariateNormal(loc.double(), factor.double(), diag.double())
    loss = (kl_divergence(target, p) / model.features).log1p().mean().to(loc.dtype)
    if model.layout.weights:
        loss = loss + (logits.log_softmax(dim=-1) - log_weights).square().mean()

    return loss


def fit_path(
    model: nn.Module, means: Tensor, log_diag: Tensor, scale: Tensor, steps: int, lr: float
) -> None:
    r"""Regresses the trajectories on the ordered sub-cluster centres and
    log-variances at the evaluation grid: the trajectories start out spread along
    the data instead of sitting at their initial state. The squared errors of the
    means and loadings are in units of ``scale``, the variance of the data (positive
    by :func:`~contmix.utils.check_scale`, where the spread of the centres is zero or
    undefined for one centre per trajectory)."""

    grid = torch.linspace(0, 1, model.components)
    factor0 = model.layout.unpack(model.start.detach()).factor.unsqueeze(-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr / 10)

    with torch.enable_grad():
        for _ in range(steps):
            state = model.layout.unpack(model.solve(grid))
            loss = (
                (state.loc - means).square().mean() / scale
                + (state.log_diag - log_diag).square().mean()
                + (state.factor - factor0).square().mean() / scale
            )
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
