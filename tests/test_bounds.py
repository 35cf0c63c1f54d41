r"""Tests for contmix.em.bounds: the E-step over the components that the bounds do not rule
out gives the dense E-step's fit, whatever moves between iterations."""

import itertools
import math

import pytest
import torch

import contmix.em.bounds as bounds
import contmix.em.gmm as gmm

from contmix.em import fit_gmm
from contmix.em.bounds import TAIL, Bounded, Held, constants, drift, rounding


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


def exact_bounds(x, logits, means, variances):
    r"""The lower bounds on the distances, the largest component of each sample and an
    upper bound on its distance, as :class:`Bounded` keeps them after a dense call."""

    precisions = variances.reciprocal().expand_as(means)
    c = constants(logits, precisions)
    joint = exact(x, logits, means, variances)
    distances = (2 * (c - joint)).clamp(min=0).sqrt()
    slack = rounding(means, precisions, c, float(x.square().sum(-1).max()))
    top = joint.argmax(-1)
    upper = distances.gather(-1, top[:, None]).squeeze(-1) + slack[top]

    return (distances - slack).clamp(min=0), top, upper


def moves(x, K, seed, scale, steps=1):
    r"""Random parameters and ``steps`` moves of them: means far, variances up and down
    by orders of magnitude, some at the floor."""

    g = torch.Generator().manual_seed(seed)
    D = x.shape[-1]
    logits = torch.randn(K, generator=g, dtype=torch.float64)
    means = (
        x[torch.randperm(len(x), generator=g)[:K]] + 0.1 * torch.randn(K, D, generator=g).double()
    )
    variances = torch.rand(K, D, generator=g, dtype=torch.float64) + 1e-6
    variances[0, :5] = 1e-6  # at the floor
    params = [(logits, means, variances)]
    for _ in range(steps):
        logits, means, variances = params[-1]
        params.append(
            (
                logits + scale * torch.randn(K, generator=g).double(),
                means + scale * torch.randn(K, D, generator=g).double(),
                variances * torch.exp(scale * torch.randn(K, D, generator=g).double()),
            )
        )
    return params


def step(lower, top, upper, old, new):
    r"""The bounds of ``new`` parameters from those of ``old`` ones (``lower`` in place)."""

    precisions = [v.reciprocal().expand_as(m) for _, m, v in (old, new)]
    moved = drift((old[1], precisions[0]), new[1], precisions[1], constants(new[0], precisions[1]))
    keep, reach = moved.bounds(lower, top, upper)
    return moved, keep, reach


@pytest.mark.parametrize("seed", range(6))
def test_bounds_keep_every_pair_within_the_tail(seed):
    r"""Wherever the parameters move, a pair whose exact log-joint is within TAIL nats of
    its sample's largest is kept, and the moved bounds bracket the exact log-joints."""

    x = blobs(seed=seed) + 1e4
    x = x - x.mean(0)
    scale = [0.0, 1e-3, 0.1, 1.0, 3.0, 10.0][seed]
    old, new = moves(x, 20, seed, scale)
    lower, top, upper = exact_bounds(x, *old)
    moved, keep, reach = step(lower, top, upper, old, new)

    joint = exact(x, *new)
    within = joint >= joint.amax(-1, keepdim=True) - TAIL
    assert keep[within].all()
    largest = (joint - joint.amax(-1, keepdim=True)).amax(0)
    assert (reach >= largest - 1e-9 * joint.abs().amax()).all()
    assert (moved.constant - 0.5 * lower.square() >= joint - 1e-9 * joint.abs()).all()
    if scale <= 1e-3:  # barely moved: nearly every pair of separated blobs is left out
        assert keep.float().mean() < 0.2


@pytest.mark.parametrize("ratio", [0.25, 1.0, 4.0])
def test_bounds_are_tight_where_the_triangle_is_flat(ratio):
    r"""Samples on the line of a mean's move, beyond it, along the feature whose precision
    changed least: the lower bounds equal the exact distances (to the rounding slack),
    and hold."""

    D, far = 3, torch.tensor([4.0, 8.0, 40.0], dtype=torch.float64)
    x = torch.zeros(len(far), D, dtype=torch.float64)
    x[:, 0] = far
    old = (
        torch.zeros(2, dtype=torch.float64),
        torch.tensor([[0.0] * D, [-9.0] * D], dtype=torch.float64),
        torch.ones(2, D, dtype=torch.float64),
    )
    variances = torch.ones(2, D, dtype=torch.float64)
    variances[0, 0] = 1 / ratio  # the precision of feature 0 times ratio, the others more
    variances[0, 1:] = 1 / (2 * ratio)
    new = (old[0], old[1] + torch.tensor([[2.0, 0, 0], [0, 0, 0]]).double(), variances)

    lower, top, upper = exact_bounds(x, *old)
    step(lower, top, upper, old, new)
    precisions = variances.reciprocal()
    distances = ((x[:, None] - new[1]) ** 2 * precisions).sum(-1).sqrt()

    assert (lower <= distances).all()
    torch.testing.assert_close(lower[:, 0], distances[:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [1e-3, 0.1, 1.0])
def test_bounds_hold_through_many_moves(scale):
    r"""Bounds moved through several iterations, those of the kept pairs made exact again
    at each (as :class:`Bounded` does), stay below the exact distances of every pair."""

    x = blobs(seed=3) + 1e4
    x = x - x.mean(0)
    params = moves(x, 20, 3, scale, steps=8)
    lower, top, upper = exact_bounds(x, *params[0])

    for old, new in itertools.pairwise(params):
        moved, keep, _ = step(lower, top, upper, old, new)
        joint = exact(x, *new)
        assert keep[joint >= joint.amax(-1, keepdim=True) - TAIL].all()
        assert (moved.constant - 0.5 * lower.square() >= joint - 1e-9 * joint.abs()).all()

        fresh, top, upper = exact_bounds(x, *new)
        lower[keep] = fresh[keep]  # the pairs computed exactly
        assert keep.gather(-1, top[:, None]).all()  # the largest component is among them


class Spy:
    r"""Counts the calls of :class:`Bounded` that had bounds (all but the first) and the
    pairs that the bounds of each call kept."""

    def __init__(self, monkeypatch):
        self.pruned, self.calls = 0, []
        call, spy = Bounded.__call__, self

        def counted(self, *args):
            spy.pruned += self.previous is not None
            spy.calls.append([0, 0])
            return call(self, *args)

        bounds_of = bounds.Drift.bounds

        def kept(self, *args):
            keep, reach = bounds_of(self, *args)
            spy.calls[-1][0] += int(keep.sum())
            spy.calls[-1][1] += keep.numel()
            return keep, reach

        monkeypatch.setattr(Bounded, "__call__", counted)
        monkeypatch.setattr(bounds.Drift, "bounds", kept)

    @property
    def kept(self) -> float:
        r"""The fraction of the pairs that the bounds of the last call kept."""

        kept, pairs = self.calls[-1]
        return kept / pairs


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

    assert spy.pruned > 10 and spy.kept < 1 / 4  # it left most pairs out
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


def test_bounded_after_a_jump(monkeypatch):
    r"""Parameters that jump between two calls keep too many pairs: the blocks are
    computed densely, and the next call leaves most pairs out again; the sums and the
    log-likelihood are those of the dense E-step throughout."""

    x = blobs()
    K, D = 24, x.shape[-1]
    shift = x.mean(0)
    e_step = Bounded(x, shift, len(x))
    blocks = gmm._blocks(x - shift, "diagonal")
    spy = Spy(monkeypatch)

    last = None
    for jump in (0.0, 0.0, 5.0, 0.0, 0.0):
        g = torch.Generator().manual_seed(int(jump))
        logits = torch.zeros(K, dtype=torch.float64)
        means = x[:K] - shift + jump * torch.randn(K, D, generator=g).double()
        variances = torch.full((K, D), 0.3, dtype=torch.float64)  # about the blobs
        theta = gmm._natural(logits, means, variances, "diagonal").T
        stats, log_lik = e_step(logits, means, variances, theta)
        expected = gmm._expectation(blocks(), theta)

        torch.testing.assert_close(log_lik, expected[1], rtol=1e-13, atol=0)
        torch.testing.assert_close(stats, expected[0], rtol=1e-10, atol=1e-10)
        if jump != last and last is not None:  # a jump, there or back: dense
            assert spy.kept > 1 / bounds.DENSE
        elif last is not None:  # unmoved
            assert spy.kept < 1 / 4
        last = jump


def test_held_sums_are_those_of_the_hard_samples():
    r"""Whatever samples become hard, change component or stop being hard, the kept sums
    are those of the hard samples summed afresh, to the rounding of float64, and exactly
    zero for a component that loses them all (far from zero, between two recomputations)."""

    g = torch.Generator().manual_seed(0)
    K, D = 6, 5
    phi = [torch.randn(n, 2 * D, generator=g, dtype=torch.float64) + 1e4 for n in (40, 25)]
    hard = [torch.ones(len(b), dtype=torch.bool) for b in phi]
    component = [torch.randint(K - 1, (len(b),), generator=g) for b in phi]  # none in the last
    held, emptied = Held(len(phi)), 0

    for step in range(40):
        for i, block in enumerate(phi):
            if step > 0:  # a few samples move, never to component 1, which empties
                ones = (component[i] == 1).nonzero()[:1, 0]
                moved = torch.cat((ones, torch.randint(len(block), (1,), generator=g)))
                component[i][moved] = torch.tensor([0, 2, 3, 4])[torch.randint(4, moved.shape)]
                hard[i][moved[0]] = bool(torch.rand(1, generator=g) < 0.7)
            held.move(i, block, hard[i].clone(), component[i].clone(), K)
        sums = held.total(phi)

        expected = torch.zeros(K, 2 * D + 1, dtype=torch.float64)
        for block, h, c in zip(phi, hard, component, strict=True):
            ones = torch.cat((block, torch.ones(len(block), 1).double()), dim=-1)
            expected.index_add_(0, c[h], ones[h])
        torch.testing.assert_close(sums, expected, rtol=1e-13, atol=0)
        assert (sums[expected[:, -1] == 0] == 0).all()
        assert held.updates <= sums[:, -1].sum()  # recomputed once outnumbered
        emptied += expected[1, -1] == 0 and held.updates > 0

    assert emptied > 0  # component 1 emptied between two recomputations


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
