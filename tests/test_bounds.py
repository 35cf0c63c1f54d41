r"""Tests for contmix.em.bounds: the E-step over the components that the bounds do not rule
out gives the dense E-step's fit, whatever moves between iterations."""

import math

import pytest
import torch

import contmix.em.bounds as bounds
import contmix.em.gmm as gmm

from contmix.em import fit_gmm
from contmix.em.bounds import TAIL, Bounded, constants, drift, reference


@pytest.fixture(autouse=True)
def bounded(monkeypatch):
    r"""The bounded E-step from one feature on (by default, from gmm.BOUNDED)."""

    monkeypatch.setattr(gmm, "BOUNDED", 1)


def exact(x: torch.Tensor, logits, means, variances) -> torch.Tensor:
    r"""The log-joints of diagonal Gaussians by the sum of squared differences."""

    precisions = variances.reciprocal().expand_as(means)
    quadratic = ((x[:, None] - means) ** 2 * precisions).sum(-1)
    return constants(logits, precisions) - 0.5 * quadratic


def blobs(K=20, D=64, n=30, seed=0, spread=4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(K, D, generator=g, dtype=torch.float64)
    scales = torch.rand(K, D, generator=g, dtype=torch.float64) + 0.2
    z = torch.randn(K, n, D, generator=g, dtype=torch.float64)
    return (centers[:, None] + scales[:, None] * z).flatten(0, 1)[
        torch.randperm(K * n, generator=g)
    ]


@pytest.mark.parametrize("seed", range(6))
def test_bounds_keep_every_pair_within_the_tail(seed):
    r"""Wherever the parameters move (means far, variances up and down by orders of
    magnitude, at the floor), a pair whose exact log-joint is within TAIL nats of its
    sample's largest is kept, and the bounds bracket the exact log-joints."""

    g = torch.Generator().manual_seed(seed)
    x = blobs(seed=seed) + 1e4
    x = x - x.mean(0)
    K, D = 20, x.shape[-1]
    logits = torch.randn(K, generator=g, dtype=torch.float64)
    means = (
        x[torch.randperm(len(x), generator=g)[:K]] + 0.1 * torch.randn(K, D, generator=g).double()
    )
    variances = torch.rand(K, D, generator=g, dtype=torch.float64) + 1e-6
    variances[0, :5] = 1e-6  # at the floor

    joint = exact(x, logits, means, variances)
    precisions = variances.reciprocal()
    ref = reference(
        means, precisions, constants(logits, precisions), float(x.square().sum(-1).max()), [joint]
    )

    scale = [0.0, 1e-3, 0.1, 1.0, 3.0, 10.0][seed]
    moved_means = means + scale * torch.randn(K, D, generator=g).double()
    moved_variances = variances * torch.exp(scale * torch.randn(K, D, generator=g).double())
    moved_logits = logits + scale * torch.randn(K, generator=g).double()
    new = exact(x, moved_logits, moved_means, moved_variances)

    new_precisions = moved_variances.reciprocal()
    moved = drift(ref, moved_means, new_precisions, constants(moved_logits, new_precisions))
    keep, reach = moved.bounds(ref.distances[0], joint.argmax(-1))

    within = new >= new.amax(-1, keepdim=True) - TAIL
    assert keep[within].all()
    assert (reach >= (new - new.amax(-1, keepdim=True)).amax(0) - 1e-9 * new.abs().amax()).all()
    upper = moved.constant - 0.5 * moved.low * (ref.distances[0] - moved.shift).clamp(min=0) ** 2
    lower = moved.constant - 0.5 * moved.high * (ref.distances[0] + moved.shift) ** 2
    assert (upper >= new - 1e-9 * new.abs()).all() and (lower <= new + 1e-9 * new.abs()).all()
    if scale <= 1e-3:  # barely moved: nearly every pair of separated blobs is left out
        assert keep.float().mean() < 0.2


class Spy:
    r"""Counts the iterations of :class:`Bounded` that found a reference (pruned ones)
    and the pairs they kept."""

    def __init__(self, monkeypatch):
        self.pruned, self.kept, self.pairs = 0, 0, 0
        call, spy = Bounded.__call__, self

        def counted(self, *args):
            spy.pruned += self.ref is not None
            return call(self, *args)

        bounds_of = bounds.Drift.bounds

        def kept(self, distances, top):
            keep, reach = bounds_of(self, distances, top)
            spy.kept, spy.pairs = spy.kept + int(keep.sum()), spy.pairs + keep.numel()
            return keep, reach

        monkeypatch.setattr(Bounded, "__call__", counted)
        monkeypatch.setattr(bounds.Drift, "bounds", kept)


def dense_fit(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(gmm, "_bounded", lambda *a: False)
        return fit_gmm(*args, **kwargs)


def ill_conditioned(case: str) -> torch.Tensor:
    x = blobs()
    if case == "offset":
        return x + 1e4
    if case == "floor":  # a feature constant within each blob: variances at the floor
        x[:, 3] = x[:, 3].round()
        return x
    if case == "outliers":
        x[:3] += 1e3
    return x


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
@pytest.mark.parametrize("case", ["blobs", "offset", "floor", "outliers"])
@pytest.mark.parametrize("cov", ["diagonal", "spherical"])
@pytest.mark.parametrize("tied", [False, True])
def test_bounded_fit_equals_dense_fit(monkeypatch, case, cov, tied):
    x = ill_conditioned(case)
    K, D = 24, x.shape[-1]
    g = torch.Generator().manual_seed(1)
    start = (
        torch.zeros(K, dtype=torch.float64),
        x[torch.randperm(len(x), generator=g)[:K]].clone(),
        x.var(0).expand(1 if tied else K, D).clone()
        if cov == "diagonal"
        else torch.ones(1 if tied else K, 1).double(),
    )
    spy = Spy(monkeypatch)
    fit = fit_gmm(x, *start, cov, tied, tol=0.0, max_iter=25)
    expected = dense_fit(monkeypatch, x, *start, cov, tied, tol=0.0, max_iter=25)

    assert spy.pruned > 10 and spy.kept < spy.pairs / 4  # it left most pairs out
    # the same products summed in another order: the outliers, 1e3 away, round the
    # log-joints of their rows to about 1e-8 nats, and the parameters to about 1e-9
    tol = 1e-7 if case == "outliers" else 1e-10
    torch.testing.assert_close(fit.history, expected.history, rtol=tol, atol=0)
    torch.testing.assert_close(fit.logits, expected.logits, rtol=tol, atol=tol)
    torch.testing.assert_close(fit.means, expected.means, rtol=tol, atol=tol)
    torch.testing.assert_close(fit.covariances, expected.covariances, rtol=100 * tol, atol=1e-15)


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
def test_bounded_fit_float32(monkeypatch):
    x = (blobs() + 1e4).float()
    K = 24
    start = (torch.zeros(K), x[:K].clone(), x.var(0).expand(K, -1).clone())
    fit = fit_gmm(x, *start, "diagonal", tol=0.0, max_iter=15)
    expected = dense_fit(
        monkeypatch, x.double(), *(t.double() for t in start), "diagonal", tol=0.0, max_iter=15
    )

    assert fit.means.dtype == torch.float32
    torch.testing.assert_close(fit.history.double(), expected.history, rtol=1e-6, atol=0)
    torch.testing.assert_close(fit.means.double(), expected.means, rtol=1e-6, atol=1e-3)


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
def test_dead_components_sum_over_all_samples(monkeypatch):
    r"""Components whose responsibilities are all far below TAIL (but not zero in float64)
    get the sums of every sample, as the dense E-step gives them."""

    x = blobs()
    K, D = 24, x.shape[-1]
    means = x[:K].clone()
    means[-2:] = x.mean(0) + 3 * x.std(0)  # far from every blob: responsibilities ~e^-300
    logits = torch.zeros(K, dtype=torch.float64)
    logits[-2:] = -40.0
    start = (logits, means, x.var(0).expand(K, D).clone())

    joint = exact(x, logits, means, start[2])
    gap = (joint[:, -2:] - joint.logsumexp(-1, keepdim=True)).amax()
    assert -700 < gap < -2 * TAIL  # the case: negligible, not zero

    spy = Spy(monkeypatch)
    fit = fit_gmm(x, *start, "diagonal", tol=0.0, max_iter=6)
    expected = dense_fit(monkeypatch, x, *start, "diagonal", tol=0.0, max_iter=6)

    assert spy.pruned > 0
    torch.testing.assert_close(fit.means, expected.means, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fit.logits, expected.logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fit.covariances, expected.covariances, rtol=1e-8, atol=1e-15)


def test_bounded_refreshes_after_a_jump():
    r"""Parameters that jump between two calls keep too many pairs: the blocks are
    computed densely and the next call takes a new reference; the sums and the
    log-likelihood are those of the dense E-step throughout."""

    x = blobs()
    K, D = 24, x.shape[-1]
    shift = x.mean(0)
    e_step = Bounded(x - shift, len(x))
    blocks = gmm._blocks(x - shift, "diagonal")

    for jump in (0.0, 0.0, 5.0, 0.0):
        g = torch.Generator().manual_seed(int(jump))
        logits = torch.zeros(K, dtype=torch.float64)
        means = x[:K] - shift + jump * torch.randn(K, D, generator=g).double()
        variances = torch.full((K, D), 0.3, dtype=torch.float64)  # about the blobs
        theta = gmm._natural(logits, means, variances, "diagonal").T
        had = e_step.ref is not None
        stats, log_lik = e_step(logits, means, variances, theta)
        expected = gmm._expectation(blocks(), theta)

        torch.testing.assert_close(log_lik, expected[1], rtol=1e-13, atol=0)
        torch.testing.assert_close(stats, expected[0], rtol=1e-10, atol=1e-10)
        if jump > 0:
            assert had and e_step.ref is None
        else:  # unmoved parameters (or a dense call): a reference for the next call
            assert e_step.ref is not None


def test_bounded_is_taken_where_it_applies(monkeypatch):
    monkeypatch.setattr(gmm, "BOUNDED", 3)
    assert not gmm._bounded(torch.randn(100, 2), torch.zeros(9), "diagonal")  # few features
    x = torch.randn(100, 3, dtype=torch.float64)
    assert gmm._bounded(x, torch.zeros(9), "diagonal")
    assert gmm._bounded(x, torch.zeros(9), "spherical")
    assert not gmm._bounded(x, torch.zeros(9), "full")
    assert not gmm._bounded(x, torch.zeros(8), "diagonal")  # few components: dense
    assert not gmm._bounded(x.split(10), torch.zeros(9), "diagonal")  # batches: one pass each
    assert not gmm._bounded(torch.randn(2**25 // 9 + 1, 1), torch.zeros(9), "diagonal")
    assert math.isclose(TAIL, 50.0)


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
def test_components_of_zero_responsibilities_cost_no_pass(monkeypatch):
    r"""Components whose responsibilities are zero in float64 (more than UNDERFLOW nats
    below) keep their zero sums without a pass over all samples, as the dense E-step."""

    x = blobs()
    K, D = 24, x.shape[-1]
    means = x[:K].clone()
    means[-2:] = x.mean(0) + 50 * x.std(0)  # thousands of nats below every sample
    start = (torch.zeros(K, dtype=torch.float64), means, x.var(0).expand(K, D).clone())
    gap = (exact(x, *start)[:, -2:] - exact(x, *start).logsumexp(-1, keepdim=True)).amax()
    assert gap < -bounds.UNDERFLOW

    passes = []
    columns = Bounded._columns
    monkeypatch.setattr(
        Bounded, "_columns", lambda self, *a: passes.append(1) or columns(self, *a)
    )
    spy = Spy(monkeypatch)
    fit = fit_gmm(x, *start, "diagonal", tol=0.0, max_iter=6)
    expected = dense_fit(monkeypatch, x, *start, "diagonal", tol=0.0, max_iter=6)

    assert spy.pruned > 0 and not passes
    torch.testing.assert_close(fit.means, expected.means, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fit.logits, expected.logits, rtol=1e-9, atol=1e-9)
