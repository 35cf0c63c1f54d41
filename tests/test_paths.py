r"""Tests of contmix.mixtures.paths: MFAs fitted by EM and laid out along paths."""

import math

import pytest
import torch

from data import blobs as make_blobs

from contmix import MFA, HierarchicalCPMM
from contmix.mixtures.groups import order_path, ward, ward_groups
from contmix.mixtures.paths import align_loadings, path_components, path_groups


def test_align_loadings_keeps_covariances_and_follows_the_path():
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(3, 6, 4, 2, generator=generator, dtype=torch.float64)
    aligned = align_loadings(factor)

    # the same covariances A A^T, the first loadings untouched
    assert torch.allclose(aligned @ aligned.mT, factor @ factor.mT, atol=1e-12)
    assert torch.equal(aligned[:, 0], factor[:, 0])

    # each loading is the rotation of its own closest to the previous aligned one: no
    # rotation of 2-D loadings, by angle or reflection, comes closer
    angles = torch.linspace(0, 2 * math.pi, 3601, dtype=torch.float64)
    cos, sin = angles.cos(), angles.sin()
    rotations = torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)
    reflections = rotations @ torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    candidates = torch.cat((rotations, reflections))

    for j in range(1, 6):
        best = (aligned[:, j] - aligned[:, j - 1]).square().sum(dim=(-1, -2))
        others = factor[:, j, None] @ candidates - aligned[:, j - 1, None]
        assert (best[:, None] <= others.square().sum(dim=(-1, -2)) + 1e-9).all()


def test_align_loadings_rank_one_is_a_sign():
    a = torch.tensor([[[1.0], [0.5]], [[-1.0], [-0.4]], [[0.9], [0.6]]])
    aligned = align_loadings(a)
    assert torch.allclose(aligned.abs(), a.abs())
    assert ((aligned[1:] * aligned[:-1]).sum(dim=(-1, -2)) > 0).all()


def blobs(n: int = 150, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    centers = [[-6.0, 0.0], [0.0, 0.0], [6.0, 0.0], [0.0, 8.0]]
    x, _ = make_blobs(centers, n, seed=seed, dtype=torch.float32)
    return x.double(), torch.tensor([0, 0, 0, 1]).repeat_interleave(n)


def test_path_components_are_the_em_fits_in_path_order():
    x, labels = blobs()
    paths = path_components(x, labels, groups=2, components=3, rank=1, generator=None)

    assert torch.allclose(paths.logits.exp(), torch.tensor([0.75, 0.25], dtype=x.dtype))
    assert torch.allclose(paths.log_weights.logsumexp(dim=-1), torch.zeros(2, dtype=x.dtype))

    # the first group: the three blobs, fitted by EM and ordered along the path
    mfa = MFA(2, components=3, rank=1).double()
    mfa.initialize(x[labels == 0], "em", generator=torch.Generator().manual_seed(0))
    loc = mfa.phi[1].detach()
    expected = loc[order_path(loc)]
    assert torch.allclose(paths.loc[0], expected, atol=0.05)
    assert torch.allclose(paths.loc[0, :, 0], torch.tensor([-6.0, 0.0, 6.0]).double(), atol=0.3)

    # each component's covariance is its EM fit's, whatever the rotation of its loadings
    cov = paths.factor @ paths.factor.mT + torch.diag_embed(paths.diag)
    fitted = mfa().base.covariance_matrix[order_path(loc)]
    assert torch.allclose(cov[0], fitted, atol=0.05)


def test_path_components_small_groups():
    x, _ = blobs(n=20)
    labels = torch.zeros(len(x), dtype=torch.long)
    labels[:3] = 1  # a group of three samples gets two components, the last repeated
    paths = path_components(x, labels, groups=2, components=4, rank=1)
    assert paths.loc.shape == (2, 4, 2)
    assert torch.equal(paths.loc[1, 1], paths.loc[1, 2]) and torch.equal(
        paths.loc[1, 2], paths.loc[1, 3]
    )

    labels[:3] = 0
    labels[0] = 1
    with pytest.raises(ValueError, match=r"two samples.*group sizes \[79, 1\]"):
        path_components(x, labels, groups=2, components=4, rank=1)


def test_path_components_leave_the_global_seed_alone():
    x, labels = blobs(n=40)
    state = torch.random.get_rng_state()
    a = path_components(x, labels, 2, 3, 1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = path_components(x, labels, 2, 3, 1, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    r"""Whether two labellings are the same partition, whatever the names of the groups."""

    return bool(((a[:, None] == a) == (b[:, None] == b)).all())


def test_ward_is_scipys_ward_linkage():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(40, 3, generator=generator, dtype=torch.float64) * 3
    for k in (1, 4, 9, 40):
        expected = hierarchy.fcluster(hierarchy.linkage(points.numpy(), "ward"), k, "maxclust")
        labels = ward(points, torch.ones(40), k)
        assert labels.unique().tolist() == list(range(k))
        assert same_partition(labels, torch.as_tensor(expected))

    # a centre of weight 3 is three samples at that centre
    counts = torch.randint(1, 4, (40,), generator=generator)
    repeated = points.repeat_interleave(counts, dim=0)
    expected = hierarchy.fcluster(hierarchy.linkage(repeated.numpy(), "ward"), 6, "maxclust")
    expected = torch.as_tensor(expected)[counts.cumsum(0) - 1]  # one copy of each centre
    assert same_partition(ward(points, counts, 6), expected)


def bars(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Two long parallel bars, 30 apart: separated, each in fine clusters along it."""

    generator = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    along = 20 * torch.rand(n, generator=generator, dtype=torch.float64) - 10
    across = 30 * label - 15 + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)

    return torch.stack((along, across), dim=-1), label


def test_ward_groups_follow_elongated_groups():
    x, label = bars()
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        assert same_partition(ward_groups(x, 2, 20, generator=generator), label)
        assert same_partition(ward_groups(x, 2, len(x), generator=generator), label)

    # with four groups, each bar is split, never joined to the other
    halves = ward_groups(x, 4, 20, generator=torch.Generator().manual_seed(0))
    assert halves.unique().tolist() == [0, 1, 2, 3]
    assert bool(((halves[:, None] == halves) <= (label[:, None] == label)).all())


def test_path_groups():
    x, label = bars()
    generator = torch.Generator().manual_seed(0)
    assert same_partition(path_groups(x, 2, 10, generator=generator), label)
    assert torch.equal(path_groups(x, 2, 10, y=1 - label), 1 - label)  # given labels
    assert torch.equal(path_groups(x, 1, 10), torch.zeros(len(x), dtype=torch.long))

    # bad arguments, with what to do
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\)"):
        path_groups(x, 2, 10, y=label + 1)
    with pytest.raises(ValueError, match="clusters must be an integer of at least groups=3"):
        ward_groups(x, 3, 2)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 4\]"):
        ward(x[:4], torch.ones(4), 5)
    with pytest.raises(ValueError, match="positive weights"):
        ward(x[:4], torch.tensor([1, 0, 1, 1]), 2)


def test_hierarchical_cpmm_starts_from_the_ward_groups():
    x, label = bars(200)
    x = x.float()
    model = HierarchicalCPMM(2, trajectories=2, components=5, rank=1, hidden_features=(16,))
    model.initialize(x, steps=50, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = model().predict(x)
    assert same_partition(predicted, label)
