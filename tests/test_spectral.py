import numpy as np
import pytest
import torch

from scipy.linalg import sqrtm

from contmix.cluster import (
    cluster_components,
    frechet_distances,
    predict_clusters,
    spectral_clustering,
)
from contmix.distributions import FullNormal, GaussianMixture
from contmix.metrics import clustering_accuracy


def random_covariances(k, d, generator):
    a = torch.randn(k, d, d, generator=generator, dtype=torch.float64)
    return a @ a.mT + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_against_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(5, 4, generator=g, dtype=torch.float64)
    cov = random_covariances(5, 4, g)

    d = frechet_distances(loc, cov, chunk=2)

    for i in range(5):
        for j in range(5):
            si = sqrtm(cov[i].numpy())
            cross = np.real(np.trace(sqrtm(si @ cov[j].numpy() @ si)))
            expected = (
                np.sum((loc[i] - loc[j]).numpy() ** 2)
                + np.trace(cov[i].numpy())
                + np.trace(cov[j].numpy())
                - 2 * cross
            )
            assert d[i, j].item() == pytest.approx(max(expected, 0.0), abs=1e-8)


def test_spectral_recovers_blocks():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(5)
    affinity = (labels[:, None] == labels).double() + 0.01 * torch.rand(20, 20).double()
    affinity = (affinity + affinity.T) / 2

    assert clustering_accuracy(labels, spectral_clustering(affinity, 4)) == 1.0


def test_cluster_components_and_predict():
    # 3 groups of 4 close components each, far apart
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]], dtype=torch.float64)
    loc = centers.repeat_interleave(4, dim=0) + torch.randn(12, 2, dtype=torch.float64)
    cov = torch.eye(2, dtype=torch.float64).expand(12, 2, 2)
    d = GaussianMixture(FullNormal(loc, cov), torch.zeros(12, dtype=torch.float64))

    labels = cluster_components(d, 3)
    truth = torch.arange(3).repeat_interleave(4)
    assert clustering_accuracy(truth, labels) == 1.0

    x = centers.repeat_interleave(10, dim=0) + 0.5 * torch.randn(30, 2, dtype=torch.float64)
    assert (
        clustering_accuracy(torch.arange(3).repeat_interleave(10), predict_clusters(d, labels, x))
        == 1.0
    )


def test_frechet_far_from_origin_float32():
    r"""40 components (above 25 rows, where torch.cdist switches to the matrix-product
    formula) with means near 1e4, in float32: the distances of the means are those of
    float64 within float32 rounding of their own size (the product formula expanded
    around the origin was off by eps * |mu|^2 = 6, and the diagonal was not 0)."""

    g = torch.Generator().manual_seed(1)
    loc = 1e4 + torch.randn(40, 3, generator=g)
    cov = torch.eye(3).expand(40, 3, 3)

    d = frechet_distances(loc, cov)
    expected = (loc.double()[:, None] - loc.double()).square().sum(dim=-1)

    assert torch.allclose(d.double(), expected, rtol=1e-4, atol=1e-3)
    assert (d.diagonal() == 0).all()


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_frechet_diagonal_closed_form(offset):
    r"""Of variances, the closed form equals the general path on the diagonal matrices,
    far from the origin in float32 too."""

    g = torch.Generator().manual_seed(2)
    loc = offset + torch.randn(30, 5, generator=g, dtype=torch.float64)
    variances = torch.rand(30, 5, generator=g, dtype=torch.float64) * 2 + 1e-3

    expected = frechet_distances(loc, torch.diag_embed(variances))
    assert torch.allclose(frechet_distances(loc, variances), expected, rtol=1e-9, atol=1e-8)

    loc, variances = loc.float(), variances.float()  # float64 of the float32 inputs
    expected = frechet_distances(loc.double(), torch.diag_embed(variances.double()))
    single = frechet_distances(loc, variances).double()
    assert torch.allclose(single, expected, rtol=1e-4, atol=1e-3)
    assert (frechet_distances(loc, variances).diagonal() == 0).all()
