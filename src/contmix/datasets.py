r"""Data sets: scikit-learn's digits in logit space, and the paper's synthetic sets."""

__all__ = [
    "digits",
]

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
