r"""Tests for contmix.datasets (the synthetic sets and the idx loader)."""

import gzip
import math

import numpy as np
import pytest
import torch

from contmix.datasets import mnist, spiral, two_circles
from contmix.transforms import LogitTransform


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


def test_two_circles_seeded():
    a, b = two_circles(100, seed=3), two_circles(100, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], two_circles(100, seed=4)[0])
    assert two_circles(10, dtype=torch.float64)[0].dtype == torch.float64


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


def test_spiral_seeded():
    assert torch.equal(spiral(200, seed=2)[0], spiral(200, seed=2)[0])
    assert not torch.equal(spiral(200, seed=2)[0], spiral(200, seed=3)[0])


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
