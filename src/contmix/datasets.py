r"""Data sets: scikit-learn's digits and MNIST-like idx files in logit space, and the
paper's synthetic sets."""

__all__ = [
    "digits",
    "mnist",
    "spiral",
    "two_circles",
]

import gzip
import math
import os

from pathlib import Path

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


IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find_idx(root: Path, name: str) -> Path:
    for folder in (root, root / "raw"):
        for path in (folder / name, folder / f"{name}.gz"):
            if path.exists():
                return path

    raise FileNotFoundError(
        f"{name} (or {name}.gz) is not in {root} nor in {root / 'raw'}. Nothing is "
        f"downloaded: put the four idx files {', '.join(IDX_FILES)} (gzipped or not) there."
    )


def _read_idx(path: Path) -> Tensor:
    r"""Reads an idx file of unsigned bytes (magic number 0x00000801 to 0x00000803)."""

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()

    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an idx file of unsigned bytes (it must start 00 00 08).")

    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    values = data[4 + 4 * dims :]

    if len(values) != math.prod(shape):
        raise ValueError(f"{path} holds {len(values)} values but its header says {shape}.")

    return torch.frombuffer(bytearray(values), dtype=torch.uint8).reshape(shape)


def mnist(
    root: str | os.PathLike,
    limit: int | None = None,
    seed: int = 0,
    alpha: float = 0.05,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Returns MNIST, or any data set in its idx format (Fashion-MNIST), from local
    files, flattened, dequantized and in logit space, as its train and test sets.

    As in :func:`digits`, each pixel :math:`v \in \{0, \dots, 255\}` becomes
    :math:`y = (v + u) / 256` with :math:`u \sim \mathcal{U}(0, 1)`, then
    :math:`x = \operatorname{logit}(\alpha + (1 - 2\alpha) y)`. The four standard files
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, gzipped or not) are read from ``root`` or ``root/raw``;
    nothing is downloaded.

    References:
        | Gradient-based learning applied to document recognition (LeCun et al., 1998)
        | http://yann.lecun.com/exdb/mnist/

        | Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
        | Algorithms (Xiao et al., 2017)
        | https://arxiv.org/abs/1708.07747

    Arguments:
        root: The folder of the idx files.
        limit: At most this many samples of each split, drawn at random (all by default).
        seed: The seed of the noise and of the subsets.
        alpha: The squeeze :math:`\alpha` of the logit transform.
        dtype: The floating point type of the samples.

    Returns:
        The train samples, with shape :math:`(N, H W)`, the test samples, and their
        labels.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> def write(name, shape, values):  # a tiny idx file of unsigned bytes
        ...     header = bytes([0, 0, 8, len(shape)])
        ...     header += b"".join(n.to_bytes(4, "big") for n in shape)
        ...     (root / name).write_bytes(header + bytes(values))
        >>> write("train-images-idx3-ubyte", (3, 2, 2), range(12))
        >>> write("train-labels-idx1-ubyte", (3,), [7, 2, 1])
        >>> write("t10k-images-idx3-ubyte", (1, 2, 2), [255] * 4)
        >>> write("t10k-labels-idx1-ubyte", (1,), [9])
        >>> x, x_test, y, y_test = mnist(root)
        >>> x.shape, x_test.shape, y.tolist(), y_test.tolist()
        (torch.Size([3, 4]), torch.Size([1, 4]), [7, 2, 1], [9])
    """

    root = Path(root).expanduser()
    paths = [_find_idx(root, name) for name in IDX_FILES]
    images, labels, images_test, labels_test = map(_read_idx, paths)

    generator = torch.Generator().manual_seed(seed)
    logit = LogitTransform(alpha)
    splits = []

    for v, y in ((images, labels), (images_test, labels_test)):
        if len(v) != len(y):
            raise ValueError(f"{len(v)} images but {len(y)} labels: the idx files do not match.")
        if limit is not None:
            index = torch.randperm(len(v), generator=generator)[:limit]
            v, y = v[index], y[index]

        y_ = dequantize(v.flatten(1).to(torch.float64), 256, generator)
        splits.append((logit(y_).to(dtype), y.long()))

    (x, y), (x_test, y_test) = splits

    return x, x_test, y, y_test


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
