r"""Preprocessing of bounded data: dequantization, the logit transform, and bits per
dimension of the data through them."""

__all__ = [
    "LogitTransform",
    "dequantize",
    "dequantize_logit",
    "logit_bits_per_dim",
]

import math

import torch

from torch import Tensor
from torch.distributions import Transform, constraints

from .metrics import bits_per_dim


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


def dequantize_logit(
    v: Tensor,
    levels: int = 256,
    alpha: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""Dequantizes integer levels :math:`v \in \{0, \dots, L - 1\}` and maps them to
    logit space, the preprocessing of image density models (RealNVP, FFJORD).

    .. math:: x = \operatorname{logit}(\alpha + (1 - 2 \alpha) y), \quad
        y = \frac{v + u}{L}, \quad u \sim \mathcal{U}(0, 1)

    The noise is drawn and the transform computed in float64, then cast to ``dtype``.
    :func:`logit_bits_per_dim` turns log-densities of :math:`x` back into bits per
    dimension of :math:`v`.

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803

        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
        | Models (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367

    Arguments:
        v: The levels, integers in :math:`[0, L)` of any shape.
        levels: The number of levels :math:`L`.
        alpha: The squeeze :math:`\alpha` of :class:`LogitTransform`.
        generator: The generator of the noise.
        dtype: The floating point type of the result (the default type if :py:`None`).

    Returns:
        The values :math:`x`, with the shape of :math:`v`.

    Example:
        >>> v = torch.tensor([0, 128, 255])
        >>> x = dequantize_logit(v, generator=torch.Generator().manual_seed(0))
        >>> (LogitTransform(0.05).inv(x) * 256).floor().long()
        tensor([  0, 128, 255])
    """

    v = torch.as_tensor(v)
    low, high = (v.min().item(), v.max().item()) if v.numel() > 0 else (0, 0)
    if low < 0 or high >= levels:
        raise ValueError(
            f"the levels must lie in [0, {levels}), got values from {low} to {high}: pass "
            "the right number of levels (levels=...)."
        )

    y = dequantize(v.to(torch.float64), levels, generator)

    return LogitTransform(alpha)(y).to(dtype or torch.get_default_dtype())


def logit_bits_per_dim(
    log_prob: Tensor, x: Tensor, levels: int = 256, alpha: float = 0.05
) -> Tensor:
    r"""Returns the bits per dimension of the levels :math:`v` from a model's
    log-density :math:`\log p_X(x)` in logit space, :math:`x` from
    :func:`dequantize_logit`, the logit transform's Jacobian and the dequantization
    included, as normalizing flows report them.

    With :math:`x = f(y)` the transform of :class:`LogitTransform` and :math:`y \in [0, 1]^D`
    the dequantized levels,

    .. math:: \text{bpd} = \frac{-\log p_X(x) - \sum_{i=1}^D \log f'(y_i) + D \log L}
        {D \log 2}

    which bounds :math:`-\log_2 P(v) / D` from above in expectation over the noise, so
    that figures compare with image models whatever their preprocessing (see
    :func:`~contmix.metrics.bits_per_dim`). The sums are computed in float64.

    Arguments:
        log_prob: The log-densities :math:`\log p_X(x)`, in nats, with shape :math:`(*)`.
        x: The samples in logit space, with shape :math:`(*, D)`.
        levels: The number of levels :math:`L` of each dimension.
        alpha: The squeeze :math:`\alpha` with which :math:`x` was computed.

    Returns:
        The bits per dimension, with shape :math:`(*)`, in the type of ``log_prob``.

    Example:
        >>> x = dequantize_logit(torch.randint(256, (5, 784)))
        >>> # the image of the uniform density on [0, 1]^D: 8 bits for 256 levels
        >>> log_prob = (x.sigmoid().log() + (-x).sigmoid().log() - math.log(0.9)).sum(-1)
        >>> bpd = logit_bits_per_dim(log_prob, x)
        >>> bpd.shape, torch.allclose(bpd, torch.tensor(8.0))
        (torch.Size([5]), True)
    """

    log_prob, x = torch.as_tensor(log_prob), torch.as_tensor(x)
    if x.dim() == 0 or log_prob.shape != x.shape[:-1]:
        raise ValueError(
            f"log_prob must have the shape of x without its last dimension (the features), "
            f"got {tuple(log_prob.shape)} and {tuple(x.shape)}."
        )

    x64 = x.to(torch.float64)
    log_det = LogitTransform(alpha).log_abs_det_jacobian(None, x64).sum(dim=-1)
    log_py = log_prob.to(torch.float64) + log_det

    return bits_per_dim(log_py, x.shape[-1], levels).to(log_prob.dtype)
