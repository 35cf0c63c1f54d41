r"""Tests of contmix.ops: distances of samples to many components, expanded around
anchors, against the differences formed directly (float64)."""

import pytest
import torch

from contmix import anchors, ops


def direct(x, loc, precision, weight):
    diff = x.unsqueeze(-2) - loc
    q = (diff.square() * precision).sum(dim=-1)
    z = torch.einsum("nkd,krd->nkr", diff, weight)
    return q, z


def sample(N=300, K=6, D=5, R=2, far=False, seed=0, distance=1e5):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(K, D, generator=g, dtype=torch.float64)
    if far:  # three groups far apart: two of one, three of one, and one alone
        loc[:2] += distance
        loc[2:5] -= distance
    precision = torch.rand(K, D, generator=g, dtype=torch.float64) + 0.5
    weight = torch.randn(K, R, D, generator=g, dtype=torch.float64)
    x = loc[torch.randint(K, (N,), generator=g)] + torch.randn(N, D, generator=g).double()
    return x, loc, precision, weight


@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("N", [4, 300])  # fewer samples than components, and chunks
def test_diag_mahalanobis(far: bool, N: int):
    x, loc, precision, weight = sample(N=N, far=far)
    q, z = ops.diag_mahalanobis(x, loc, precision, weight)
    q_, z_ = direct(x, loc, precision, weight)

    assert torch.allclose(q, q_, rtol=1e-10, atol=1e-8)
    assert torch.allclose(z, z_, rtol=1e-10, atol=1e-8)
    assert torch.allclose(ops.project(x, loc, weight), z_, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("far", [False, True])
def test_tied_mahalanobis(far: bool):
    x, loc, _, weight = sample(far=far)
    W = weight[0, :1].T @ weight[0, :1] + torch.eye(5, dtype=torch.float64)
    maha = ops.tied_mahalanobis(x, loc, W)
    expected = ((x.unsqueeze(-2) - loc) @ W.mT).square().sum(dim=-1)

    assert torch.allclose(maha, expected, rtol=1e-10, atol=1e-8)


def test_gradients():
    x, loc, precision, weight = sample(N=140, K=3, D=3, R=1)  # two chunks
    inputs = tuple(t.requires_grad_() for t in (x, loc, precision, weight))

    assert torch.autograd.gradcheck(ops.diag_mahalanobis, inputs)
    assert torch.autograd.gradgradcheck(ops.diag_mahalanobis, (x[:40], *inputs[1:]))


def test_gradients_far():
    r"""Between groups far apart (finite differences fail there), against the
    gradients of the differences formed directly."""

    x, loc, precision, weight = sample(far=True)
    inputs = tuple(t.requires_grad_() for t in (x, loc, precision, weight))

    def grads(f):
        q, z = f(*inputs)
        g = torch.Generator().manual_seed(1)
        wq = torch.rand(q.shape, generator=g, dtype=q.dtype)
        wz = torch.rand(z.shape, generator=g, dtype=z.dtype)
        return torch.autograd.grad((wq * q).sum() + (wz * z).sum(), inputs)

    for ours, reference in zip(grads(ops.diag_mahalanobis), grads(direct), strict=True):
        assert torch.allclose(ours, reference, rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("far", [False, True])
def test_tied_gradients(far: bool):
    x, loc, _, weight = sample(far=far)
    W = (weight[0, :1].T @ weight[0, :1] + torch.eye(5, dtype=torch.float64)).requires_grad_()
    inputs = (x.requires_grad_(), loc.requires_grad_(), W)
    weights = torch.rand(len(x), len(loc), dtype=torch.float64)

    def grads(f):
        return torch.autograd.grad((weights * f(*inputs)).sum(), inputs)

    def reference(x, loc, W):
        return ((x.unsqueeze(-2) - loc) @ W.mT).square().sum(dim=-1)

    for ours, expected in zip(grads(ops.tied_mahalanobis), grads(reference), strict=True):
        assert torch.allclose(ours, expected, rtol=1e-8, atol=1e-6)


def test_groups():
    # a chain 0 - 1 - 2 (each link near), 3 alone, 4 near 3 in one direction only
    table = torch.full((5, 5), 1e9)
    table.fill_diagonal_(0)
    table[0, 1] = table[1, 2] = 10.0
    table[4, 3] = 10.0

    assert anchors.groups(table).tolist() == [0, 0, 0, 3, 3]

    chain = torch.full((64, 64), 1e9)
    chain[torch.arange(63), torch.arange(1, 64)] = 1.0
    assert (anchors.groups(chain) == 0).all()  # the longest chain joins in few steps


def test_anchors_and_center():
    loc = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1e6, 1e6], [float("nan"), 0.0]])
    center = anchors.center(loc)
    x = torch.tensor([[0.9, 0.8], [1e6 + 1, 1e6], [-0.1, 0.0]])

    assert center.tolist() == [1.0, 0.0]  # one far mean does not move it; NaN ignored
    assert anchors.anchors(x, loc, center).tolist() == [1, 2, 0]  # a NaN mean is no anchor


def test_exact_at_the_anchor():
    r"""A sample on a narrow mean far from the others has its distance to it exactly."""

    loc = torch.tensor([[1e6, 1e6], [0.0, 0.0], [1.0, 0.0]])
    precision = torch.tensor([[1e6, 1e6], [1.0, 1.0], [1.0, 1.0]])
    x = torch.cat((loc[:1] + torch.tensor([[0.125, 0.0]]), torch.randn(10, 2)))
    q, _ = ops.diag_mahalanobis(x, loc, precision)

    assert torch.allclose(q[0, 0], torch.tensor(0.125**2 * 1e6), rtol=1e-6)  # was off by 1e4


def test_pairwise_chunks(monkeypatch):
    monkeypatch.setattr(ops, "CHUNK", 16)
    x, loc, precision, weight = sample(N=5, K=6, D=3, R=2)
    x = x.requires_grad_()
    q, z = ops.pairwise(x, loc, precision, weight)
    q_, z_ = direct(x, loc, precision, weight)

    assert torch.allclose(q, q_) and torch.allclose(z, z_)
    (g,) = torch.autograd.grad(q.sum() + z.sum(), x)
    (g_,) = torch.autograd.grad(q_.sum() + z_.sum(), x)
    assert torch.allclose(g, g_)
