r"""Data sets: scikit-learn's digits, Fashion-MNIST and MNIST-like idx files in logit
space, and the paper's synthetic sets.

Nothing is downloaded. Fashion-MNIST comes from Debian's package
``dataset-fashion-mnist`` (``apt-get update && apt-get install dataset-fashion-mnist``),
which puts its four idx files in :data:`FASHION_MNIST_ROOT`,
``/usr/share/datasets/fashion-mnist``; its ten class names, in the order of the labels,
are :data:`FASHION_MNIST_CLASSES`.

.. data:: FASHION_MNIST_ROOT

    The folder of Fashion-MNIST's idx files, read by default.

.. data:: FASHION_MNIST_CLASSES

    The names of Fashion-MNIST's classes 0 to 9: ``"T-shirt/top"``, ``"Trouser"``,
    ``"Pullover"``, ``"Dress"``, ``"Coat"``, ``"Sandal"``, ``"Shirt"``, ``"Sneaker"``,
    ``"Bag"``, ``"Ankle boot"``.
"""

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "digits",
    "digits_28x28",
    "fashion_mnist",
    "fashion_mnist_images",
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

from .transforms import dequantize_logit

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FASHION_MNIST_INSTALL = (
    "Fashion-MNIST comes from Debian's package dataset-fashion-mnist: install it with "
    "`sudo apt-get update && sudo apt-get install dataset-fashion-mnist` (its files go to "
    f"{FASHION_MNIST_ROOT}, read by default)."
)


def digits(
    train: float = 0.8, seed: int = 0, alpha: float = 0.05, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Returns scikit-learn's 8x8 digits, dequantized and in logit space, split into
    train and test sets.

    Each pixel :math:`v \in \{0, \dots, 16\}` gets uniform noise,
    :math:`y = (v + u) / 17` with :math:`u \sim \mathcal{U}(0, 1)`, then
    :math:`x = \operatorname{logit}(\alpha + (1 - 2\alpha) y)` (see
    :func:`~contmix.transforms.dequantize_logit`),
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

    x = dequantize_logit(torch.as_tensor(data.data), 17, alpha, generator, dtype)
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


def _find_idx(root: Path, name: str, install: str = "") -> Path:
    for folder in (root, root / "raw"):
        for path in (folder / name, folder / f"{name}.gz"):
            if path.exists():
                return path

    raise FileNotFoundError(
        f"{name} (or {name}.gz) is not in {root} nor in {root / 'raw'}. Nothing is "
        f"downloaded: put the four idx files {', '.join(IDX_FILES)} (gzipped or not) there."
        + (f" {install}" if install else "")
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


def _read_split(root: Path, train: bool, install: str = "") -> tuple[Tensor, Tensor]:
    r"""Reads the images and labels of the train or test split of an idx folder."""

    prefix = "train" if train else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    images, labels = (_read_idx(_find_idx(root, name, install)) for name in names)

    if len(images) != len(labels):
        raise ValueError(
            f"{len(images)} images but {len(labels)} labels in {root}: the idx files do not "
            "match (each split needs its images and labels files from the same data set)."
        )

    return images, labels.long()


def _logit_splits(
    splits: list[tuple[Tensor, Tensor]],
    limit: int | None,
    seed: int,
    alpha: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Subsets, flattens, dequantizes and maps to logit space the train and test splits."""

    generator = torch.Generator().manual_seed(seed)
    samples = []

    for v, y in splits:
        if limit is not None:
            index = torch.randperm(len(v), generator=generator)[:limit]
            v, y = v[index], y[index]

        samples.append((dequantize_logit(v.flatten(1), 256, alpha, generator, dtype), y))

    (x, y), (x_test, y_test) = samples

    return x, x_test, y, y_test


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
    :math:`x = \operatorname{logit}(\alpha + (1 - 2\alpha) y)` (see
    :func:`~contmix.transforms.dequantize_logit`;
    :func:`~contmix.transforms.logit_bits_per_dim` turns a model's log-densities of
    :math:`x` into bits per dimension of the pixels). The four standard files
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
    splits = [_read_split(root, train) for train in (True, False)]

    return _logit_splits(splits, limit, seed, alpha, dtype)


def fashion_mnist_images(
    root: str | os.PathLike | None = None, train: bool = True
) -> tuple[Tensor, Tensor]:
    r"""Returns the images of Fashion-MNIST as stored, 256 levels of grey, and their
    labels.

    The 60,000 train (or 10,000 test) images of 28x28 pixels, 6,000 (or 1,000) of each of
    the ten classes :data:`FASHION_MNIST_CLASSES`, are read from the idx files in ``root``
    or ``root/raw``, gzipped or not: by default :data:`FASHION_MNIST_ROOT`, where the
    Debian package ``dataset-fashion-mnist`` installs them
    (``apt-get update && apt-get install dataset-fashion-mnist``). Nothing is downloaded.
    :func:`fashion_mnist` returns them preprocessed for density models.

    References:
        | Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
        | Algorithms (Xiao et al., 2017)
        | https://arxiv.org/abs/1708.07747

    Arguments:
        root: The folder of the idx files (:data:`FASHION_MNIST_ROOT` by default).
        train: Whether to read the train split or the test split.

    Returns:
        The images, unsigned bytes with shape :math:`(N, 28, 28)`, and their labels
        (integers in :math:`[0, 10)`).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())  # idx files of two blank images per split
        >>> for split, labels in (("train", [9, 0]), ("t10k", [1, 8])):
        ...     head = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
        ...     _ = (root / f"{split}-images-idx3-ubyte").write_bytes(head + bytes(2 * 784))
        ...     head = bytes([0, 0, 8, 1, 0, 0, 0, 2])
        ...     _ = (root / f"{split}-labels-idx1-ubyte").write_bytes(head + bytes(labels))
        >>> images, labels = fashion_mnist_images(root)  # fashion_mnist_images() reads Debian's
        >>> images.shape, images.dtype, [FASHION_MNIST_CLASSES[i] for i in labels]
        (torch.Size([2, 28, 28]), torch.uint8, ['Ankle boot', 'T-shirt/top'])
    """

    root = FASHION_MNIST_ROOT if root is None else Path(root).expanduser()

    return _read_split(root, train, _FASHION_MNIST_INSTALL)


def fashion_mnist(
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    alpha: float = 0.05,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Returns Fashion-MNIST flattened, dequantized and in logit space, as its train and
    test sets, the preprocessing of Bender et al. (2023) and of normalizing flows.

    The images of :func:`fashion_mnist_images` (from :data:`FASHION_MNIST_ROOT` by
    default), each pixel :math:`v \in \{0, \dots, 255\}` made
    :math:`y = (v + u) / 256` with :math:`u \sim \mathcal{U}(0, 1)`, then
    :math:`x = \operatorname{logit}(\alpha + (1 - 2\alpha) y)`, exactly as :func:`mnist`.
    :func:`~contmix.transforms.logit_bits_per_dim` turns a model's log-densities of
    :math:`x` into bits per dimension of the 256-level pixels, the transform's Jacobian
    included, the figures of the paper's Table 1. With the default :math:`\alpha = 0.05`
    (RealNVP's; FFJORD's code uses :math:`10^{-6}`) the background pixels stay close to
    uniform in logit space, which Gaussian components fit better; bits per dimension of
    the pixels compare across values of :math:`\alpha`.

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023), Section 5.2
        | https://proceedings.mlr.press/v202/bender23a.html

        | Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
        | Algorithms (Xiao et al., 2017)
        | https://arxiv.org/abs/1708.07747

    Arguments:
        root: The folder of the idx files (:data:`FASHION_MNIST_ROOT` by default).
        limit: At most this many samples of each split, drawn at random (all by default).
        seed: The seed of the noise and of the subsets.
        alpha: The squeeze :math:`\alpha` of the logit transform.
        dtype: The floating point type of the samples.

    Returns:
        The train samples, with shape :math:`(N, 784)`, the test samples, and their
        labels.

    Example:
        With the Debian package installed, ``fashion_mnist()`` returns samples of shapes
        :math:`(60000, 784)` and :math:`(10000, 784)`; without it, it says how to get them.

        >>> fashion_mnist("/nowhere")
        Traceback (most recent call last):
          ...
        FileNotFoundError: train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) is not in
        /nowhere nor in /nowhere/raw. ... `sudo apt-get update && sudo apt-get install
        dataset-fashion-mnist` ...
    """

    splits = [fashion_mnist_images(root, train) for train in (True, False)]

    return _logit_splits(splits, limit, seed, alpha, dtype)


def digits_28x28() -> tuple[Tensor, Tensor]:
    r"""Returns scikit-learn's 8x8 digits in MNIST's layout, 28x28 pixels of 256 levels,
    the outliers of the paper's Table 3 for models of Fashion-MNIST.

    Each digit, 17 levels :math:`\{0, \dots, 16\}`, is resized to 20x20 pixels by
    bilinear interpolation (pixel centres aligned, as
    :func:`torch.nn.functional.interpolate` with ``align_corners=False``), scaled to
    :math:`\{0, \dots, 255\}` by :math:`\operatorname{round}(255 v / 16)`, and placed in a
    28x28 frame so that its centre of mass falls within half a pixel of the frame's
    centre, as MNIST's digits were (LeCun et al., 1998). Nothing is random: every call
    returns the same images. Preprocess them as the inliers, e.g. with
    :func:`~contmix.transforms.dequantize_logit`. Requires scikit-learn.

    References:
        | Gradient-based learning applied to document recognition (LeCun et al., 1998)
        | http://yann.lecun.com/exdb/mnist/

        | Continuously Parameterized Mixture Models (Bender et al., 2023), Appendix E
        | https://proceedings.mlr.press/v202/bender23a.html

    Returns:
        The 1797 images, unsigned bytes with shape :math:`(1797, 28, 28)`, and their
        labels.

    Example:
        >>> images, labels = digits_28x28()
        >>> images.shape, images.dtype, labels[:5].tolist()
        (torch.Size([1797, 28, 28]), torch.uint8, [0, 1, 2, 3, 4])
    """

    from sklearn.datasets import load_digits

    data = load_digits()
    small = torch.as_tensor(data.images, dtype=torch.float64)[:, None]
    big = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear")[:, 0]
    big = (big * 255 / 16).round()

    # the offset of the 20x20 box that brings its centre of mass to 13.5, the frame's
    mass = big.sum(dim=(1, 2))
    coords = torch.arange(20, dtype=torch.float64)
    com = torch.stack(((big.sum(2) @ coords) / mass, (big.sum(1) @ coords) / mass), -1)
    offsets = (13.5 - com).round().clamp(0, 8).long().tolist()

    images = torch.zeros(len(big), 28, 28, dtype=torch.uint8)
    for image, box, (i, j) in zip(images, big, offsets, strict=True):
        image[i : i + 20, j : j + 20] = box.to(torch.uint8)

    return images, torch.as_tensor(data.target).long()


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
