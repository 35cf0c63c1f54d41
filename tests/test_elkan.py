r"""Tests for contmix.cluster.elkan: Lloyd's assignments through Elkan's bounds are the
dense ones, and the bounds hold, wherever the centres move."""

import sys

import pytest
import torch

from contmix.cluster import kmeans
from contmix.cluster.distances import _expanded
from contmix.cluster.elkan import Elkan

lloyd = sys.modules["contmix.cluster.kmeans"]


@pytest.fixture(autouse=True)
def bounded(monkeypatch):
    r"""Elkan's bounds from one feature on (by default, from kmeans.FEATURES)."""

    monkeypatch.setattr(lloyd, "FEATURES", 1)


def blobs(K=20, D=64, n=30, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(K, D, generator=g)
    x = centers.repeat_interleave(n, 0) + torch.randn(K * n, D, generator=g)
    return x[torch.randperm(len(x), generator=g)]


def case(name: str) -> torch.Tensor:
    x = blobs()
    if name == "offset":  # float32 far from the origin
        return x + 1e4
    if name == "ties":  # duplicated samples, and samples halfway between two blobs
        x[100:200] = x[:100]
        x[200:220] = 0.5 * (x[220:240] + x[240:260])
    if name == "outliers":
        x[:3] += 1e3
    return x


def assert_same_or_tied(x, centers, labels, expected):
    r"""The labels are the expected ones, but where the two centres are equally near in
    float64 to float32 rounding (another BLAS may round a product of other rows apart)."""

    differ = (labels != expected).nonzero().squeeze(-1)
    exact = torch.cdist(x[differ].double(), centers.double())
    rows = torch.arange(len(differ))
    gap = (exact[rows, labels[differ]] - exact[rows, expected[differ]]).abs()
    assert (gap <= 1e-5 * exact[rows, expected[differ]] + 1e-5).all()
    assert len(differ) <= len(x) // 100


@pytest.mark.parametrize("name", ["blobs", "offset", "ties", "outliers"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_hold_and_labels_are_dense(name, seed):
    r"""Over a sequence of moves of the centres, small and large, the labels are those of
    the dense assignment, the upper bounds lie above the distances to the assigned
    centres and the lower bounds below the distances to every other centre."""

    x = case(name)
    x = x - x.median(dim=0).values
    squares = x.square().sum(dim=-1)
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(len(x), generator=g)[:24]].clone()
    bounds, computed = Elkan(x, squares), []

    for step in [0.0, 1e-3, 1e-2, 0.1, 0.0, 1.0, 1e-3, 3.0, 0.0]:
        centers = centers + step * torch.randn(centers.shape, generator=g)
        labels = bounds.labels(centers)
        computed.append(bounds.computed)

        assert_same_or_tied(x, centers, labels, _expanded(x, squares, centers).argmin(dim=-1))
        exact = torch.cdist(x.double(), centers.double())
        assert (bounds.upper >= exact.gather(-1, labels[:, None])[:, 0]).all()
        own = torch.zeros_like(exact, dtype=torch.bool).scatter_(-1, labels[:, None], True)
        assert (bounds.lower.double() <= exact)[~own].all()
        assert bounds.lower[own].isinf().all()  # no bound on the assigned centre

    assert computed[0] == len(x)
    if name != "outliers":  # (a centre 8,000 away widens every margin: all dense)
        assert min(computed[1:]) < len(x) / 10  # it skipped most


@pytest.mark.parametrize("name", ["blobs", "offset", "ties", "outliers"])
def test_kmeans_with_bounds_equals_dense(monkeypatch, name):
    x = case(name)
    g = torch.Generator().manual_seed(3)
    centers, labels = kmeans(x, 24, generator=g)
    monkeypatch.setattr(lloyd, "_bounded", lambda *a: False)
    dense_centers, dense_labels = kmeans(x, 24, generator=torch.Generator().manual_seed(3))

    assert_same_or_tied(x, centers, labels, dense_labels)
    torch.testing.assert_close(centers, dense_centers, rtol=1e-4, atol=1e-3)


def test_bounds_are_taken_where_they_apply(monkeypatch):
    monkeypatch.setattr(lloyd, "FEATURES", 3)
    assert not lloyd._bounded(torch.randn(100, 2), 9)  # few features: the dense assignment
    x = torch.randn(100, 3)
    assert lloyd._bounded(x, 9)
    assert not lloyd._bounded(x, 8)  # few centres: the dense assignment
    assert not lloyd._bounded(torch.randn(lloyd.BOUNDS // 9 + 1, 1), 9)
