r"""Tests for contmix.cluster against scikit-learn and brute force."""

import numpy as np
import pytest
import torch

from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from contmix.cluster import assign, kmeans, kmeans_plusplus, random_centers


def inertia(x, centers, labels) -> float:
    return (x - centers[labels]).square().sum().item()


@pytest.fixture(scope="module")
def overlapping():
    X, _ = make_blobs(2000, 4, centers=8, cluster_std=1.5, random_state=0)
    return torch.as_tensor(X)


def test_assign(overlapping):
    x = overlapping
    centers = x[:7] + 0.1

    assert torch.equal(assign(x, centers), torch.cdist(x, centers).argmin(dim=-1))


def test_kmeans_vs_sklearn(overlapping):
    r"""Our inertia is within a few percent of scikit-learn's (or lower), single runs on
    average and the best of several runs."""

    x, X = overlapping, overlapping.numpy()
    ours, theirs = [], []

    for seed in range(5):
        torch.manual_seed(seed)
        centers, labels = kmeans(x, 8)
        ours.append(inertia(x, centers, labels))
        theirs.append(KMeans(8, n_init=1, random_state=seed).fit(X).inertia_)

    assert min(ours) <= 1.01 * min(theirs)
    assert np.mean(ours) <= 1.05 * np.mean(theirs)


def test_kmeans_same_start_as_sklearn(overlapping):
    r"""Lloyd's algorithm from given centres reaches scikit-learn's fixed point."""

    x = overlapping
    start = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:8]]

    centers, labels = kmeans(x, 8, iterations=300, centers=start)
    sk = KMeans(8, init=start.numpy(), n_init=1, max_iter=300, tol=0.0, algorithm="lloyd")
    sk.fit(x.numpy())

    assert np.array_equal(labels.numpy(), sk.labels_)
    assert np.allclose(centers.numpy(), sk.cluster_centers_, atol=1e-10)


def test_kmeans_fixed_point(overlapping):
    x = overlapping
    torch.manual_seed(0)
    centers, labels = kmeans(x, 8)

    assert centers.shape == (8, 4) and labels.shape == (2000,)
    assert torch.equal(labels, torch.cdist(x, centers).argmin(dim=-1))
    for k in range(8):
        assert torch.allclose(centers[k], x[labels == k].mean(dim=0), atol=1e-12)


@pytest.mark.parametrize("distinct,k", [(3, 3), (3, 5), (20, 20)])
def test_kmeans_duplicates(distinct, k):
    r"""Duplicated points (quantized data) never leave a cluster empty or a centre NaN."""

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(distinct, 2, generator=generator, dtype=torch.float64).repeat(10, 1)

    for seed in range(5):
        torch.manual_seed(seed)
        centers, labels = kmeans(x, k)

        assert torch.isfinite(centers).all()
        assert (torch.bincount(labels, minlength=k) > 0).all()
        if k == distinct:  # every distinct point is its own cluster
            assert inertia(x, centers, labels) < 1e-20


def test_kmeans_plusplus_blobs():
    r"""One centre per well-separated blob, and every centre is a sample."""

    true = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [50, 50]])
    generator = torch.Generator().manual_seed(0)
    x = true.repeat_interleave(100, 0) + torch.randn(500, 2, generator=generator)

    for seed in range(10):
        torch.manual_seed(seed)
        centers = kmeans_plusplus(x, 5)

        assert centers.shape == (5, 2)
        assert sorted(assign(centers, true).tolist()) == [0, 1, 2, 3, 4]
        assert (centers[:, None] == x).all(dim=-1).any(dim=-1).all()


def test_kmeans_plusplus_duplicates():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]).repeat(25, 1)

    for seed in range(10):
        torch.manual_seed(seed)
        centers = kmeans_plusplus(x, 4)
        assert len(centers.unique(dim=0)) == 4


def test_random_centers():
    x = torch.arange(40.0).reshape(20, 2)

    torch.manual_seed(0)
    centers = random_centers(x, 5)
    torch.manual_seed(0)
    again = random_centers(x, 5)

    assert centers.shape == (5, 2)
    assert torch.equal(centers, again)
    assert len(centers.unique(dim=0)) == 5  # distinct samples
    assert all((row == x).all(dim=-1).any() for row in centers)
