r"""Tests for contmix.em.lowrank: the E-step of mixtures of factor analyzers over the
components that the bounds do not rule out gives the dense E-step's sums and fit, whatever
moves between iterations."""

import math
import warnings

import pytest
import torch

import contmix.em.lowrank as lowrank
import contmix.em.mfa as mfa

from contmix.em import fit_mfa
from contmix.em.factors import latent, statistics
from contmix.em.lowrank import BoundedLowRank, drift, metric, rounding
from contmix.report import ConvergenceWarning


def components(K, M, R, seed, scale=1.0, floor=0):
    r"""Random log-weights, means, loadings and diagonals, ``floor`` features of each
    component at 1e-6, the loadings ``scale`` times the standard deviations."""

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, generator=g, dtype=torch.float64)
    loc = 3 * torch.randn(K, M, generator=g, dtype=torch.float64)
    diag = 0.2 + torch.rand(K, M, generator=g, dtype=torch.float64)
    diag[:, :floor] = 1e-6
    factor = scale * diag.sqrt().unsqueeze(-1) * torch.randn(K, M, R, generator=g).double()
    return logits, loc, factor, diag


def dense(x, logits, loc, factor, diag):
    r"""The sums of the M-step and the log-likelihood of torch's low-rank normals, over
    all components."""

    normal = torch.distributions.LowRankMultivariateNormal(loc, factor, diag)
    joint = normal.log_prob(x.unsqueeze(-2)) + logits.log_softmax(-1)
    log_p = joint.logsumexp(-1, keepdim=True)
    m = metric(logits, loc, factor, diag)
    sums = statistics(x, (joint - log_p).exp(), latent(x, m.loc, m.back @ m.weight))
    return (*sums, log_p.sum())


def generalized(old, new):
    r"""The generalized eigenvalues of the covariances, densely."""

    def covariance(t):
        _, _, factor, diag = t
        return torch.diag_embed(diag) + factor @ factor.mT

    tril = torch.linalg.cholesky(covariance(old))
    half = torch.linalg.solve_triangular(tril, covariance(new), upper=False)
    return torch.linalg.eigvalsh(torch.linalg.solve_triangular(tril, half.mT, upper=False))


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_largest_ratio_bounds_the_generalized_eigenvalues(scale):
    old = components(6, 20, 3, seed=0, scale=scale)
    g = torch.Generator().manual_seed(1)
    _, loc, factor, diag = old
    moved = (
        old[0],
        loc,
        factor * (1 + 0.2 * torch.randn(factor.shape, generator=g, dtype=torch.float64)),
        diag * (1 + 0.3 * torch.rand(diag.shape, generator=g, dtype=torch.float64)),
    )
    exact = generalized(old, moved)
    largest = lowrank._largest(metric(*old), metric(*moved))

    assert (largest >= exact[:, -1] * (1 - 1e-12)).all()
    # where the diagonals move by one ratio, the bound is the eigenvalue itself
    same = (old[0], loc, 2 * factor, 4 * diag)  # the covariances times 4
    assert torch.allclose(
        lowrank._largest(metric(*old), metric(*same)), torch.full((6,), 4.0).double()
    )
    # the loadings alone grow: the eigenvalue is above every ratio of the diagonals
    grown = (old[0], loc, 3 * factor, diag)
    assert torch.allclose(
        lowrank._largest(metric(*old), metric(*grown)), generalized(old, grown)[:, -1], rtol=1e-9
    )


def test_shift_is_the_distance_in_the_old_metric():
    old = components(5, 16, 2, seed=2, scale=3.0, floor=4)
    new = (old[0], old[1] + torch.randn(5, 16, dtype=torch.float64), old[2], old[3])
    shift = drift(metric(*old), metric(*new)).shift
    v = new[1] - old[1]
    covariance = torch.diag_embed(old[3]) + old[2] @ old[2].mT
    exact = (v.unsqueeze(-2) @ torch.linalg.solve(covariance, v.unsqueeze(-1))).squeeze().sqrt()

    assert (shift >= exact * (1 - 1e-9)).all() and torch.allclose(shift, exact, rtol=1e-6)


def test_rounding_bounds_the_error_of_the_distances():
    params = components(4, 32, 2, seed=3, scale=10.0, floor=8)
    x = 3 * torch.randn(200, 32, dtype=torch.float64)
    m = metric(*params)
    slack = rounding(m, float(x.square().sum(-1).max()))
    squares, _ = lowrank._exact(x, *torch.cartesian_prod(torch.arange(200), torch.arange(4)).T, m)
    covariance = torch.diag_embed(params[3]) + params[2] @ params[2].mT
    diff = x.unsqueeze(-2) - params[1]
    solve = torch.linalg.solve(covariance, diff.unsqueeze(-1)).squeeze(-1)
    exact = (diff * solve).sum(-1).flatten().clamp(min=0)

    error = (squares.sqrt() - exact.sqrt()).abs().view(200, 4)
    assert (error <= slack).all()
    assert (slack < 1e-2).all()


def sequence(K, M, R, seed, steps):
    r"""Parameters and ``steps`` moves of them: the means by up to several standard
    deviations, the diagonals up and down by a factor of 4, the loadings grown, shrunk
    and turned, the weights moved."""

    g = torch.Generator().manual_seed(seed)
    logits, loc, factor, diag = components(K, M, R, seed, scale=2.0, floor=M // 8)
    params = [(logits, loc, factor, diag)]
    for step in range(steps):
        shape = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64)
        sign = 1 - 2 * (step % 2)  # up, then down
        grow = 4.0 ** (sign * torch.rand(K, 1, generator=g, dtype=torch.float64))
        diag = (diag * grow * (1 + 0.1 * shape(diag).abs())).clamp(min=1e-6)
        factor = factor * grow.sqrt().unsqueeze(-1) + 0.3 * diag.sqrt().unsqueeze(-1) * shape(
            factor
        )
        loc = loc + (step % 3) * diag.sqrt() * shape(loc)
        logits = logits + 0.5 * shape(logits)
        params.append((logits, loc, factor, diag))
    return params


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounded_sums_equal_dense_sums_through_moves(monkeypatch, seed):
    r"""At every call, the sums and the log-likelihood are those of all components, on
    samples between overlapping components (responsibilities of every magnitude), while
    the bounds keep only a part of the pairs."""

    K, M, R, N = 16, 24, 2, 1500
    params = sequence(K, M, R, seed, steps=8)
    g = torch.Generator().manual_seed(seed + 10)
    labels = torch.randint(K, (N,), generator=g)
    _, loc, factor, diag = params[0]
    x = loc[labels] + diag[labels].sqrt() * torch.randn(N, M, generator=g, dtype=torch.float64)
    x = x + (factor[labels] @ torch.randn(N, R, 1, generator=g, dtype=torch.float64)).squeeze(-1)
    x[:40] = 0.5 * (loc[0] + loc[1])  # between two components

    pairs = []
    exact = lowrank._exact
    monkeypatch.setattr(lowrank, "_exact", lambda *a: pairs.append(len(a[1])) or exact(*a))
    e_step = BoundedLowRank(x, torch.zeros(M, dtype=torch.float64))

    for p in params:
        ours, reference = e_step(*p), dense(x, *p)
        for a, b in zip(ours, reference, strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * b.abs().max())

    assert pairs and sum(pairs) < N * K * len(params) / 3  # the sparse path, not the dense


def blobs(K=10, M=128, n=60, seed=0, offset=0.0, floor=False, outliers=False):
    g = torch.Generator().manual_seed(seed)
    centers = 5 * torch.randn(K, M, generator=g)
    scales = 0.2 + torch.rand(K, M, generator=g)
    if floor:
        scales[:, : M // 4] = 0  # constant features within each cluster
    x = centers[:, None] + scales[:, None] * torch.randn(K, n, M, generator=g)
    x = x.flatten(0, 1)
    if outliers:
        x[:3] = 1e3 * torch.randn(3, M, generator=g)
    return x + offset


def start(x, K, R, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(x), generator=g)[:K]
    factor = 0.1 * torch.randn(K, x.shape[-1], R, generator=g).to(x)
    return torch.zeros(K).to(x), x[index].clone(), factor, torch.ones(K, x.shape[-1]).to(x)


@pytest.mark.parametrize("case", ["blobs", "offset", "floor", "outliers", "float32"])
def test_bounded_fit_equals_dense_fit(monkeypatch, case):
    x = blobs(
        offset=1e4 if case == "offset" else 0.0,
        floor=case == "floor",
        outliers=case == "outliers",
    )
    x = x if case in ("float32", "offset") else x.double()
    params = start(x, 10, 3)

    calls = []
    monkeypatch.setattr(BoundedLowRank, "__init__", _counted(BoundedLowRank.__init__, calls))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = fit_mfa(x, *params, tol=0.0, max_iter=12)
        monkeypatch.setattr(mfa, "bounded", lambda *a: False)
        reference = fit_mfa(x, *params, tol=0.0, max_iter=12)

    assert len(calls) == 1  # the bounded E-step ran
    single = x.dtype == torch.float32
    scale = reference.history.abs().max()
    assert torch.allclose(
        ours.history, reference.history, rtol=0, atol=(1e-4 if single else 1e-9) * scale
    )
    for a, b in zip(ours[:4], reference[:4], strict=True):
        assert torch.allclose(a, b, rtol=1e-3 if single else 1e-6, atol=1e-3 if single else 1e-7)


def _counted(init, calls):
    def counted(self, *args):
        calls.append(1)
        init(self, *args)

    return counted


def test_bounded_is_taken_where_it_applies():
    from contmix.em.gmm import bounded

    x = torch.randn(100, 128)

    assert bounded(x, 10)
    assert not bounded(x.split(50), 10)  # batches
    assert not bounded(x[:, :64], 10)  # few features
    assert not bounded(x, 8)  # few components
    assert not bounded(torch.zeros(1, 128).expand(2**25 // 10 + 1, -1), 10)  # N K too large


def test_first_call_is_dense_and_exact():
    x = blobs(M=128).double()
    params = tuple(t.double() for t in start(x, 10, 2))
    ours = BoundedLowRank(x, x.mean(0))(params[0], params[1] - x.mean(0), *params[2:])
    reference = dense(x - x.mean(0), params[0], params[1] - x.mean(0), *params[2:])

    for a, b in zip(ours, reference, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * b.abs().max())
    assert math.isfinite(float(ours[-1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_assignments_use_their_pairs_alone(monkeypatch, dtype):
    r"""With the responsibilities held fixed (the ``"fa"`` start), the lower bound of
    each iteration comes from the log-joints of the assigned pairs alone, and is the dense
    one's."""

    x = blobs(K=20, M=128, n=30, seed=4).to(dtype)
    labels = torch.arange(len(x)) // 30  # the blobs, in order
    resp = torch.eye(20, dtype=dtype)[labels]
    params = start(x, 20, 2, seed=1)

    calls = []
    weighted = lowrank.weighted_joint

    def counted(*args):
        bound = weighted(*args)
        calls.append(bound is not None)
        return bound

    monkeypatch.setattr(mfa, "weighted_joint", counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = fit_mfa(x, *params, tol=0.0, max_iter=6, resp=resp)
        monkeypatch.setattr(mfa, "bounded", lambda *a: False)
        reference = fit_mfa(x, *params, tol=0.0, max_iter=6, resp=resp)

    assert calls == [True] * 6  # the pairs alone, at every iteration
    single = dtype == torch.float32
    scale = reference.history.abs().max()
    assert torch.allclose(
        ours.history, reference.history, rtol=0, atol=(1e-5 if single else 1e-10) * scale
    )
    for a, b in zip(ours[:4], reference[:4], strict=True):
        assert torch.allclose(a, b, rtol=1e-4 if single else 1e-9, atol=1e-5 if single else 1e-10)
