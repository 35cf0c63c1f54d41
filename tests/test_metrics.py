import itertools
import math

import pytest
import torch

from sklearn.metrics import average_precision_score, roc_auc_score

from contmix.metrics import aupr, auroc, bits_per_dim, clustering_accuracy


def brute_force_accuracy(labels, clusters, k):
    return max(
        sum(int(perm[c] == y) for y, c in zip(labels.tolist(), clusters.tolist(), strict=True))
        for perm in itertools.permutations(range(k))
    ) / len(labels)


@pytest.mark.parametrize("seed", range(5))
def test_clustering_accuracy_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (60,), generator=g)
    clusters = torch.where(torch.rand(60, generator=g) < 0.6, (labels + 2) % 5, labels)
    clusters = torch.where(torch.rand(60, generator=g) < 0.2, torch.randint(0, 5, (60,)), clusters)

    assert clustering_accuracy(labels, clusters) == pytest.approx(
        brute_force_accuracy(labels, clusters, 5)
    )


def test_clustering_accuracy_shape_error():
    with pytest.raises(ValueError, match="vectors of one shape"):
        clustering_accuracy(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_aupr_against_sklearn(ties):
    g = torch.Generator().manual_seed(0)
    inside = torch.randn(300, generator=g) + 1.0
    outside = torch.randn(200, generator=g)
    if ties:
        inside, outside = inside.round(), outside.round()

    scores = torch.cat((inside, outside)).numpy()
    truth = [1] * 300 + [0] * 200

    assert auroc(inside, outside) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert aupr(inside, outside) == pytest.approx(
        average_precision_score(truth, scores), abs=1e-12
    )


def test_bits_per_dim_closed_form():
    # a density of exactly L^D on [0, 1]^D is a uniform over one level: 0 bits
    assert bits_per_dim(torch.tensor(10 * math.log(256)), 10).item() == (
        pytest.approx(0.0, abs=1e-6)
    )
    # uniform on [0, 1]^D over 17 levels: log2(17) bits per dim
    assert bits_per_dim(torch.tensor(0.0), 64, levels=17).item() == pytest.approx(
        torch.log2(torch.tensor(17.0)).item()
    )
