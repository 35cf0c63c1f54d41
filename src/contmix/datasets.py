r"""Data sets: scikit-learn's digits in logit space, and the paper's synthetic sets."""

__all__ = [
    "digits",
    "spiral",
    "two_circles",
]

import math

import torch

from torch import Tensor

from .transforms import LogitTransform, dequantize


def digits(
    train: float = 0.8, seed: int = 0, alpha: float = 0.05, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Returns scikit-learn's 8x8 digits, dequantized and in logit space, split into
    train and test sets.

    Each pixel :math:`v \in \{0, \dots, 16\}` gets uniform noise,
    :math:`y = (v + u) / 17` with :math:`u \sim \mathcal{U}(0, 1)`, then
    :math:`x = \operatorname{logit}(\alpha + (1 - 2\alpha) y)` (see
    :func:`~contmix.transforms.dequantize` and :class:`~contmix.transforms.LogitTransform`),
    the usual preprocessing of image density models. The noise and the split are fixed by
    ``seed``, so every model sees the same data. Requires scikit-learn.

    Returns:
        The train samples, with shape :math:`(N, 64)`, the test samples, and their
        labels.

    Example:
        >>> x, x_test, y, y_test = digits()
        >>> x.shape, x_test.shape
        (torch.Size([1437, 64]), torch.Size([360, 64]))
    """

    from sklearn.datasets import load_digits

    data = load_digits()
    generator = torch.Generator().manual_seed(seed)

    y = dequantize(torch.as_tensor(data.data, dtype=torch.float64), 17, generator)
    x = LogitTransform(alpha)(y).to(dtype)
    labels = torch.as_tensor(data.target)

    order = torch.randperm(len(x), generator=generator)
    n = int(train * len(x))
    train_idx, test_idx = order[:n], order[n:]

    return x[train_idx], x[test_idx], labels[train_idx], labels[test_idx]


def two_circles(
    samples: int = 2048,
    seed: int = 0,
    ratio: float = 1.1,
    noise: float = 0.02,
    gap: float = 0.6,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""Returns two broken concentric circles whose radii differ by 10%.

    Half the samples lie on the unit circle, half on the circle of radius ``ratio``,
    each with an arc of ``gap`` radians missing (at opposite sides), with isotropic
    Gaussian noise of standard deviation ``noise`` (both circles equally thick). The
    paper uses this set to probe how a CPMM separates close manifolds.

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023), Section 5.1
        | https://proceedings.mlr.press/v202/bender23a.html

    Returns:
        The samples, with shape :math:`(N, 2)`, and their circle (0 inner, 1 outer).

    Example:
        >>> x, y = two_circles(1000)
        >>> x.shape, y.bincount().tolist()
        (torch.Size([1000, 2]), [500, 500])
        >>> radius = x.norm(dim=-1)
        >>> bool(radius[y == 1].mean() / radius[y == 0].mean() > 1.09)
        True
    """

    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) * 2 // samples

    angle = gap / 2 + (2 * math.pi - gap) * torch.rand(samples, generator=generator)
    angle = angle + math.pi * labels  # the gaps face each other
    radius = torch.where(labels == 1, ratio, 1.0)

    x = radius[:, None] * torch.stack((angle.cos(), angle.sin()), dim=-1)
    x = x + noise * torch.randn(samples, 2, generator=generator)

    return x.to(dtype), labels


def spiral(
    samples: int = 2500,
    seed: int = 0,
    arms: int = 5,
    noise: float = 0.04,
    outliers: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""Returns a noisy spiral with five arms that starts near the origin and curves
    outward, plus outliers between the arms.

    Arm :math:`k` is :math:`r (\cos \theta, \sin \theta)` with
    :math:`\theta = 2 \pi k / K + \pi r`, :math:`r \sim \mathcal{U}(0.1, 1)`, with Gaussian
    noise of standard deviation ``noise`` times :math:`(0.5 + r)`. A fraction
    ``outliers`` of the samples lies halfway between two arms, with larger noise and no
    clear cluster: their label is :math:`-1`.

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023), Section 5.1
        | https://proceedings.mlr.press/v202/bender23a.html

    Returns:
        The samples, with shape :math:`(N, 2)`, and their arm (:math:`-1` for outliers).

    Example:
        >>> x, y = spiral(1000)
        >>> x.shape, y.unique().tolist()
        (torch.Size([1000, 2]), [-1, 0, 1, 2, 3, 4])
    """

    generator = torch.Generator().manual_seed(seed)
    n_out = int(outliers * samples)
    n_arm = samples - n_out

    arm = torch.arange(n_arm) * arms // n_arm
    r = 0.1 + 0.9 * torch.rand(n_arm, generator=generator)
    theta = 2 * math.pi * arm / arms + math.pi * r
    x = r[:, None] * torch.stack((theta.cos(), theta.sin()), dim=-1)
    x = x + noise * (0.5 + r[:, None]) * torch.randn(n_arm, 2, generator=generator)

    between = torch.randint(arms, (n_out,), generator=generator) + 0.5
    r = 0.2 + 0.8 * torch.rand(n_out, generator=generator)
    theta = 2 * math.pi * between / arms + math.pi * r
    outer = r[:, None] * torch.stack((theta.cos(), theta.sin()), dim=-1)
    outer = outer + 2 * noise * torch.randn(n_out, 2, generator=generator)

    x = torch.cat((x, outer))
    labels = torch.cat((arm, torch.full((n_out,), -1)))

    return x.to(dtype), labels
