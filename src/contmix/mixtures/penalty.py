r"""The penalty of a continuous mixture towards its start: the squared shift of its
components' log-variances from those that :meth:`~contmix.CPMM.initialize` left, kept
in the state dict as the buffer ``start_log_diag``.

A state dict without that buffer for the model's grid (saved before contmix had the
penalty, or by a model with another number of components) loads as before: the start
is then the loaded model itself, the diagonals of its grid (for an unconditional
model), as L2-SP takes a pretrained network for its starting point.

References:
    | Explicit Inductive Bias for Transfer Learning with Convolutional Networks
    | (Li et al., 2018)
    | https://arxiv.org/abs/1802.01483
"""

__all__ = ["diagonal_shift", "keep_loaded_start"]

import torch.nn as nn

from torch import Tensor
from torch.distributions import Distribution

from ..distributions import GaussianMixture, LowRankNormal

KEY = "start_log_diag"


def diagonal_shift(d: Distribution, start: Tensor) -> Tensor:
    r"""Returns the squared shift of the log-variances of the low-rank components of
    ``d`` (a mixture, or a mixture of mixtures, of them) from ``start``, summed over the
    features and averaged over the rest.

    Example:
        >>> import torch
        >>> base = LowRankNormal(torch.zeros(3, 2), torch.zeros(3, 2, 1), torch.ones(3, 2))
        >>> d = GaussianMixture(base, torch.zeros(3))
        >>> diagonal_shift(d, torch.full((3, 2), 0.5)).item()
        0.5
    """

    while isinstance(d, GaussianMixture):
        d = d.base
    if not isinstance(d, LowRankNormal):
        raise TypeError(f"d must be the distribution model(c), got {type(d).__name__}.")
    if d.cov_diag.shape[-2:] != start.shape[-2:]:
        raise ValueError(
            f"d must be model(c) at the grid of {start.shape[-2]} components, got "
            f"{d.cov_diag.shape[-2]} (random_times in training mode: call model.eval())."
        )

    return (d.cov_diag.log() - start).square().sum(dim=-1).mean()


def keep_loaded_start(module: nn.Module) -> None:
    r"""Registers the load hooks of ``module``'s ``start_log_diag``: a state dict that
    lacks it, or holds it for another grid, loads strictly all the same, and the start
    becomes the loaded model's own diagonals (``module._keep_grid_start()``; a
    conditional model keeps the start it had)."""

    def before(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        key = prefix + KEY
        saved = state_dict.get(key)
        module._loading_start = saved is not None and saved.shape == getattr(module, KEY).shape
        if saved is not None and not module._loading_start:
            del state_dict[key]

    def after(module: nn.Module, incompatible) -> None:
        missing = [k for k in incompatible.missing_keys if k.rsplit(".", 1)[-1] == KEY]
        for key in missing:
            incompatible.missing_keys.remove(key)
        if not module._loading_start:
            module._keep_grid_start()

    module.register_load_state_dict_pre_hook(before)
    module.register_load_state_dict_post_hook(after)
