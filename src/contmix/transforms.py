r"""Preprocessing of bounded data: dequantization and the logit transform."""

__all__ = [
    "LogitTransform",
    "dequantize",
]

import math

import torch

from torch import Tensor
from torch.distributions import Transform, constraints


def dequantize(x: Tensor, levels: int = 256, generator: torch.Generator | None = None) -> Tensor:
    r"""Turns integer levels :math:`v \in \{0, \dots, L - 1\}` into continuous values in
    :math:`(0, 1)` by uniform noise.

    .. math:: y = \frac{v + u}{L}, \quad u \sim \mathcal{U}(0, 1)

    A density :math:`p(y)` on :math:`[0, 1]^D` then lower-bounds the probability of the
    levels: :math:`\log P(v) \geq \mathbb{E}_u[\log p(y)] - D \log L`.

    References:
        | A note on the evaluation of generative models (Theis et al., 2016)
        | https://arxiv.org/abs/1511.01844

    Example:
        >>> y = dequantize(torch.tensor([0, 255]))
        >>> bool((y > torch.tensor([0.0, 255 / 256])).all() and (y < 1).all())
        True
    """

    x = torch.as_tensor(x)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    u = torch.rand(x.shape, dtype=dtype, device=x.device, generator=generator)

    return (x.to(dtype) + u) / levels


class LogitTransform(Transform):
    r"""Creates the logit transform of values in :math:`[0, 1]`, squeezed away from the
    bounds by :math:`\alpha`.

    .. math:: f(y) = \operatorname{logit}(s), \quad s = \alpha + (1 - 2 \alpha) y,
        \quad \log \left| \frac{df}{dy} \right| = \log(1 - 2\alpha) - \log s - \log(1 - s)

    A density :math:`p_Z` in logit space gives the density of the data
    :math:`\log p_Y(y) = \log p_Z(f(y)) + \sum_i \log |f'(y_i)|`.

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803

    Arguments:
        alpha: The squeeze :math:`\alpha \in [0, 0.5)`.

    Example:
        >>> t = LogitTransform(alpha=0.05)
        >>> y = torch.tensor([0.1, 0.5, 0.9])
        >>> torch.allclose(t.inv(t(y)), y)
        True
        >>> t.log_abs_det_jacobian(y, t(y))
        tensor([2.0116, 1.2809, 2.0116])
    """

    bijective = True
    sign = +1
    domain = constraints.unit_interval
    codomain = constraints.real

    def __init__(self, alpha: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)

        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha}.")

        self.alpha = alpha

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(alpha={self.alpha})"

    def __eq__(self, other) -> bool:
        return isinstance(other, LogitTransform) and other.alpha == self.alpha

    def _call(self, y: Tensor) -> Tensor:
        return torch.logit(self.alpha + (1 - 2 * self.alpha) * y)

    def _inverse(self, x: Tensor) -> Tensor:
        return (torch.sigmoid(x) - self.alpha) / (1 - 2 * self.alpha)

    def log_abs_det_jacobian(self, y: Tensor, x: Tensor) -> Tensor:
        softplus = torch.nn.functional.softplus
        return math.log(1 - 2 * self.alpha) + softplus(x) + softplus(-x)
