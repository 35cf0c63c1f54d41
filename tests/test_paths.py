r"""Tests of contmix.mixtures.paths: MFAs fitted by EM and laid out along paths."""

import math

import pytest
import torch

from data import blobs as make_blobs

from contmix import MFA
from contmix.mixtures.groups import order_path
from contmix.mixtures.paths import align_loadings, path_components


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
