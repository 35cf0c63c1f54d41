r"""Tests for contmix.datasets (the synthetic sets, the idx loader, Fashion-MNIST and the
digits in MNIST's layout)."""

import gzip
import math
import re

import numpy as np
import pytest
import torch

from contmix import datasets
from contmix.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    digits_28x28,
    fashion_mnist,
    fashion_mnist_images,
    mnist,
    spiral,
    two_circles,
)
from contmix.transforms import LogitTransform

APT = "apt-get update && sudo apt-get install dataset-fashion-mnist"


def test_two_circles():
    x, y = two_circles(4000, seed=1)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert y.bincount().tolist() == [2000, 2000]

    radius = x.norm(dim=-1)
    inner, outer = radius[y == 0], radius[y == 1]
    assert abs(outer.mean() / inner.mean() - 1.1) < 0.005  # radii differ by 10%
    assert abs(inner.std() - outer.std()) < 0.005  # similar thickness

    # broken: each circle misses an arc, on opposite sides
    angle = torch.atan2(x[:, 1], x[:, 0])
    assert (angle[y == 0].abs() > 0.2).all()
    assert ((angle[y == 1].abs() - math.pi).abs() > 0.2).all()


def test_spiral():
    x, y = spiral(3000, seed=1)
    assert x.shape == (3000, 2)
    assert (y == -1).sum() == 300  # 10% outliers
    assert torch.bincount(y[y >= 0]).tolist() == [540] * 5

    # each arm curves outward: its angle grows with the radius
    r = x.norm(dim=-1)
    for k in range(5):
        arm = x[y == k]
        inner, outer = arm[r[y == k] < 0.3].mean(0), arm[r[y == k] > 0.8].mean(0)
        assert outer.norm() > 2 * inner.norm()

    # outliers lie between arms: farther from their nearest arm point than arm points are
    # (distances of neighbours, 0.016 apart: computed directly, not by cdist's matrix
    # product formula, whose cancellation depends on the BLAS kernel)
    arms = x[y >= 0]
    direct = {"compute_mode": "donot_use_mm_for_euclid_dist"}
    d_out = torch.cdist(x[y == -1], arms, **direct).min(dim=-1).values
    d_arm = torch.cdist(arms[:300], arms[300:], **direct).min(dim=-1).values
    assert d_out.median() > 2 * d_arm.median()


@pytest.mark.parametrize("make", [two_circles, spiral])
def test_seeded(make):
    a, b = make(100, seed=3), make(100, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], make(100, seed=4)[0])
    assert make(10, dtype=torch.float64)[0].dtype == torch.float64


def write_idx(path, array, compress=False):
    r"""Writes an idx file of unsigned bytes with numpy, independently of the loader."""

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + array.tobytes()

    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def idx_root(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 3, 4))
    labels = rng.integers(0, 10, size=20)
    images_test = rng.integers(0, 256, size=(6, 3, 4))
    labels_test = rng.integers(0, 10, size=6)

    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    (tmp_path / "raw").mkdir()  # gzipped, in raw/, as torchvision keeps them
    write_idx(tmp_path / "raw" / "t10k-images-idx3-ubyte", images_test, compress=True)
    write_idx(tmp_path / "raw" / "t10k-labels-idx1-ubyte", labels_test, compress=True)

    return tmp_path, (images, labels, images_test, labels_test)


def test_mnist_reads_idx(idx_root):
    root, (images, labels, images_test, labels_test) = idx_root
    x, x_test, y, y_test = mnist(root, alpha=0.1)

    assert x.shape == (20, 12) and x_test.shape == (6, 12) and x.dtype == torch.float32
    assert y.tolist() == labels.tolist() and y_test.tolist() == labels_test.tolist()

    # back to [0, 1]: the dequantized pixel lies in [v / 256, (v + 1) / 256)
    for z, v in ((x, images), (x_test, images_test)):
        pixels = LogitTransform(0.1).inv(z.double()) * 256
        assert torch.equal(pixels.floor().long(), torch.as_tensor(v.reshape(len(v), -1)))


def test_mnist_limit_and_seed(idx_root):
    root, (images, labels, _, _) = idx_root
    x, x_test, y, _ = mnist(root, limit=5, seed=1, dtype=torch.float64)

    assert x.shape == (5, 12) and x_test.shape == (5, 12) and x.dtype == torch.float64
    levels = (LogitTransform(0.05).inv(x) * 256).floor().long()
    flat = torch.as_tensor(images.reshape(20, -1))
    rows = [(flat == v).all(dim=-1).nonzero().flatten().tolist() for v in levels]
    assert all(len(r) == 1 for r in rows)  # each sample is one of the images
    assert [labels[r[0]] for r in rows] == y.tolist()  # with its label

    again = mnist(root, limit=5, seed=1, dtype=torch.float64)
    assert torch.equal(again[0], x)
    assert not torch.equal(mnist(root, limit=5, seed=2, dtype=torch.float64)[0], x)


def test_mnist_errors(idx_root):
    root, _ = idx_root

    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte \(or"):
        mnist(root / "elsewhere")

    (root / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 13, 1, 0, 0, 0, 20]))
    with pytest.raises(ValueError, match="not an idx file"):
        mnist(root)

    write_idx(root / "train-labels-idx1-ubyte", np.zeros(19))
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        mnist(root)

    (root / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="header says"):
        mnist(root)


# Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    r"""The real Fashion-MNIST, read once: skips where the Debian package is absent."""

    try:
        return fashion_mnist_images(train=True), fashion_mnist_images(train=False)
    except FileNotFoundError:
        pytest.skip(f"Fashion-MNIST is not in {FASHION_MNIST_ROOT}: sudo {APT}")


def test_fashion_mnist_images(fashion):
    for (images, labels), n in zip(fashion, (60000, 10000), strict=True):
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert labels.bincount().tolist() == [n // 10] * 10  # balanced classes 0 to 9
        assert images.min() == 0 and images.max() == 255  # the whole range of 256 levels

    assert len(FASHION_MNIST_CLASSES) == 10


def test_fashion_mnist_preprocessed(fashion):
    (images, labels), (images_test, labels_test) = fashion
    x, x_test, y, y_test = fashion_mnist(limit=100, seed=1, dtype=torch.float64)

    assert x.shape == (100, 784) and x_test.shape == (100, 784)
    assert x.isfinite().all() and x_test.isfinite().all()

    # each sample is the dequantized logit of one of the images, with its label (float64:
    # in float32, some of these 78,400 pixels would round across the edge of their bin)
    for z, label, v, v_labels in (
        (x, y, images, labels),
        (x_test, y_test, images_test, labels_test),
    ):
        rows = {bytes(row): i for i, row in enumerate(v.flatten(1).numpy())}
        pixels = (LogitTransform(0.05).inv(z.double()) * 256).floor().to(torch.uint8)
        index = [rows[bytes(row)] for row in pixels.numpy()]
        assert torch.equal(v_labels[index], label)


def test_fashion_mnist_absent(tmp_path, monkeypatch):
    def message(root):  # what the error must say: where it looked, and the apt command
        return f"is not in {re.escape(str(root))} .*{re.escape(APT)}"

    for load in (fashion_mnist, fashion_mnist_images):
        with pytest.raises(FileNotFoundError, match=message(tmp_path)):
            load(tmp_path)

    # by default, the Debian folder
    monkeypatch.setattr(datasets, "FASHION_MNIST_ROOT", tmp_path / "usr")
    with pytest.raises(FileNotFoundError, match=message(tmp_path / "usr")):
        fashion_mnist()


def test_fashion_mnist_folder(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28))
    labels = rng.integers(0, 10, size=7)
    images_test = rng.integers(0, 256, size=(3, 28, 28))
    labels_test = rng.integers(0, 10, size=3)

    for name, array in zip(
        datasets.IDX_FILES, (images, labels, images_test, labels_test), strict=True
    ):
        write_idx(tmp_path / name, array)  # uncompressed

    v, y = fashion_mnist_images(tmp_path, train=False)
    assert v.dtype == torch.uint8 and torch.equal(v, torch.as_tensor(images_test).byte())
    assert y.tolist() == labels_test.tolist()

    assert fashion_mnist(tmp_path)[0].dtype == torch.float32

    x, x_test, y, y_test = fashion_mnist(tmp_path, alpha=1e-6, dtype=torch.float64)
    assert x.shape == (7, 784) and x_test.shape == (3, 784) and x.dtype == torch.float64
    assert y.tolist() == labels.tolist() and y_test.tolist() == labels_test.tolist()

    pixels = (LogitTransform(1e-6).inv(x) * 256).floor().long()
    assert torch.equal(pixels, torch.as_tensor(images.reshape(7, -1)))


# digits in MNIST's layout


def bilinear(image: np.ndarray, size: int) -> np.ndarray:
    r"""Resizes a square image by bilinear interpolation with aligned pixel centres,
    written out with numpy (the reference of the resize)."""

    n = len(image)
    weights = np.zeros((size, n))
    for i in range(size):
        source = max((i + 0.5) * n / size - 0.5, 0.0)
        low = int(source)
        weights[i, low] += 1 - (source - low)
        weights[i, min(low + 1, n - 1)] += source - low

    return weights @ image @ weights.T


def test_digits_28x28():
    from sklearn.datasets import load_digits

    data = load_digits()
    images, labels = digits_28x28()

    assert images.shape == (1797, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == data.target.tolist()
    assert images.max() == 255

    # the centre of mass of each digit lies within half a pixel of the frame's centre
    v = images.double()
    grid = torch.arange(28, dtype=torch.float64)
    rows = (v.sum(dim=2) @ grid) / v.sum(dim=(1, 2))
    cols = (v.sum(dim=1) @ grid) / v.sum(dim=(1, 2))
    assert ((rows - 13.5).abs() <= 0.5).all() and ((cols - 13.5).abs() <= 0.5).all()

    # the 20x20 box is the bilinear resize of the 8x8 digit scaled to 256 levels
    # (within one level: rounding 255 v / 16 at a half may differ between the two ways)
    for k in range(0, 1797, 97):
        box = np.round(bilinear(data.images[k], 20) * 255 / 16)
        mass = box.sum()
        i = int(np.clip(np.round(13.5 - box.sum(1) @ np.arange(20) / mass), 0, 8))
        j = int(np.clip(np.round(13.5 - box.sum(0) @ np.arange(20) / mass), 0, 8))
        reference = np.zeros((28, 28))
        reference[i : i + 20, j : j + 20] = box
        assert np.abs(images[k].numpy() - reference).max() <= 1

    assert torch.equal(digits_28x28()[0], images)  # no randomness
