r"""Tests for contmix.mixtures.mfa and the low-rank components."""

import math

import pytest
import torch

from data import TWO, blobs
from helpers import train, unchanged
from torch.distributions import (
    Categorical,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
)

from contmix import GMM, MFA, ConvergenceWarning, FitReport
from contmix.datasets import digits
from contmix.distributions import GaussianMixture, LowRankNormal
from contmix.em import fit_mfa, mfa_log_likelihood


def random_mfa(K: int = 3, D: int = 6, R: int = 2, dtype=torch.float64):
    loc = torch.randn(K, D, dtype=dtype)
    factor = torch.randn(K, D, R, dtype=dtype)
    diag = torch.rand(K, D, dtype=dtype) + 0.1
    logits = torch.randn(K, dtype=dtype)
    return logits, loc, factor, diag


def reference(logits, loc, factor, diag) -> MixtureSameFamily:
    return MixtureSameFamily(
        Categorical(logits=logits), LowRankMultivariateNormal(loc, factor, diag)
    )


def planted(N: int, K: int, D: int, R: int, noise: float = 0.05):
    r"""Samples from an MFA with well separated means and orthonormal loadings."""

    loc = 10 * torch.randn(K, D, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(K, D, R, dtype=torch.float64)).Q
    factor = basis * torch.linspace(3, 1, R, dtype=torch.float64)
    labels = torch.arange(N) % K
    z = torch.randn(N, R, dtype=torch.float64)
    x = loc[labels] + (factor[labels] @ z.unsqueeze(-1)).squeeze(-1)
    x = x + noise * torch.randn(N, D, dtype=torch.float64)
    return x, loc, basis


def test_log_prob_matches_torch():
    torch.manual_seed(0)
    params = random_mfa()
    x = torch.randn(50, 6, dtype=torch.float64) * 2

    ours = GaussianMixture(LowRankNormal(*params[1:]), params[0])
    theirs = reference(*params)

    assert torch.allclose(ours.log_prob(x), theirs.log_prob(x), rtol=1e-10, atol=1e-10)
    assert torch.allclose(ours.posterior(x).exp().sum(dim=-1), torch.ones(50, dtype=torch.float64))

    # far from the means: the centering keeps the precision
    shift = 1e4
    ours = GaussianMixture(LowRankNormal(params[1] + shift, *params[2:]), params[0])
    theirs = reference(params[0], params[1] + shift, *params[2:])
    assert torch.allclose(ours.log_prob(x + shift), theirs.log_prob(x + shift), rtol=1e-8)


def test_log_prob_gradients_match_torch():
    torch.manual_seed(1)
    params = [p.requires_grad_() for p in random_mfa()]
    x = torch.randn(20, 6, dtype=torch.float64)

    ours = GaussianMixture(LowRankNormal(*params[1:]), params[0]).log_prob(x).sum()
    theirs = reference(*params).log_prob(x).sum()

    for a, b in zip(
        torch.autograd.grad(ours, params), torch.autograd.grad(theirs, params), strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_module_log_prob_and_sample():
    torch.manual_seed(2)
    mfa = MFA(features=4, components=3, rank=2).double()
    d = mfa()

    assert isinstance(d, GaussianMixture)
    assert isinstance(d.base, LowRankNormal)
    assert isinstance(d.base, LowRankMultivariateNormal)

    logits, loc, factor, log_diag = mfa.phi
    theirs = reference(logits, loc, factor, log_diag.exp() + mfa.epsilon)
    x = torch.randn(30, 4, dtype=torch.float64)
    assert torch.allclose(d.log_prob(x), theirs.log_prob(x))

    # samples have the moments of the mixture: x = mu + A z + sqrt(d) eps
    samples = d.sample((200000,))
    assert samples.shape == (200000, 4)
    assert torch.allclose(samples.mean(dim=0), theirs.mean, atol=0.05)
    cov = torch.cov(samples.T)
    assert torch.allclose(cov, torch.cov(theirs.sample((200000,)).T), atol=0.15)


def test_marginal():
    torch.manual_seed(3)
    logits, loc, factor, diag = random_mfa(D=7)
    mix = GaussianMixture(LowRankNormal(loc, factor, diag), logits)
    dims = [5, 1, 2]
    x = torch.randn(10, 3, dtype=torch.float64)

    marginal = mix.marginal(dims)
    theirs = reference(logits, loc[:, dims], factor[:, dims], diag[:, dims])

    assert isinstance(marginal.base, LowRankNormal)
    assert torch.allclose(marginal.log_prob(x), theirs.log_prob(x))

    mask = torch.zeros(7, dtype=torch.bool)
    mask[[1, 2, 5]] = True
    y = torch.randn(10, 3, dtype=torch.float64)
    assert torch.allclose(
        mix.marginal(mask).log_prob(y),
        reference(logits, *(p[:, [1, 2, 5]] for p in (loc, factor, diag))).log_prob(y),
    )


def test_condition_brute_force():
    torch.manual_seed(4)
    K, D = 3, 7
    logits, loc, factor, diag = random_mfa(K, D, 2)
    mix = GaussianMixture(LowRankNormal(loc, factor, diag), logits)
    obs, other = [4, 0, 2], [1, 3, 5, 6]
    value = torch.randn(5, 3, dtype=torch.float64)

    cond = mix.condition(obs, value)
    assert isinstance(cond.base, LowRankNormal)
    assert cond.batch_shape == (5,) and cond.event_shape == (4,)

    # brute force: the Gaussian conditional of the full covariances
    cov = factor @ factor.mT + torch.diag_embed(diag)
    s_oo = cov[:, obs][:, :, obs]
    s_uo = cov[:, other][:, :, obs]
    s_uu = cov[:, other][:, :, other]
    gain = s_uo @ torch.linalg.inv(s_oo)  # (K, U, O)
    mean = loc[:, other] + (gain @ (value[:, None] - loc[:, obs]).unsqueeze(-1)).squeeze(-1)
    covariance = s_uu - gain @ s_uo.mT
    weights = logits + MultivariateNormal(loc[:, obs], s_oo).log_prob(value[:, None])
    weights = torch.log_softmax(weights, dim=-1)

    assert torch.allclose(cond.base.mean, mean)
    assert torch.allclose(cond.base.covariance_matrix, covariance.expand(5, K, 4, 4))
    assert torch.allclose(cond.logits, weights)

    # and the density of the conditional is p(x) / p(x_o)
    u = torch.randn(5, 4, dtype=torch.float64)
    full = torch.empty(5, D, dtype=torch.float64)
    full[:, obs], full[:, other] = value, u
    expected = reference(logits, loc, factor, diag).log_prob(full) - reference(
        logits, loc[:, obs], factor[:, obs], diag[:, obs]
    ).log_prob(value)
    assert torch.allclose(cond.log_prob(u), expected)


def test_shapes_with_context_and_batch():
    torch.manual_seed(5)
    mfa = MFA(features=5, context=3, components=4, rank=2, hidden_features=[16])

    c = torch.randn(7, 3)
    d = mfa(c)
    assert d.batch_shape == (7,) and d.event_shape == (5,)
    assert d.base.batch_shape == (7, 4)
    assert d.log_prob(torch.randn(7, 5)).shape == (7,)
    assert d.log_prob(torch.randn(2, 7, 5)).shape == (2, 7)
    assert d.sample((3,)).shape == (3, 7, 5)
    assert d.condition([0, 1], torch.randn(7, 2)).sample().shape == (7, 3)

    c = torch.randn(2, 6, 3)
    assert mfa(c).log_prob(torch.randn(2, 6, 5)).shape == (2, 6)

    # per-sample components against torch
    logits, loc, factor, log_diag = (
        p.double() for p in mfa.hyper(c).split([4, 20, 40, 20], dim=-1)
    )
    theirs = reference(
        logits,
        loc.unflatten(-1, (4, 5)),
        factor.unflatten(-1, (4, 5, 2)),
        log_diag.unflatten(-1, (4, 5)).exp() + mfa.epsilon,
    )
    x = torch.randn(2, 6, 5)
    assert torch.allclose(mfa(c).log_prob(x).double(), theirs.log_prob(x.double()), atol=1e-4)

    with pytest.raises(ValueError, match="context"):
        mfa()
    unconditional, x = MFA(features=5), torch.randn(2, 6, 5)  # a context is ignored
    assert torch.equal(unconditional(c).log_prob(x), unconditional().log_prob(x))


def test_em_never_lowers_likelihood():
    torch.manual_seed(6)
    x, *_ = planted(600, 3, 10, 2, noise=0.5)
    x = x + torch.randn_like(x)  # harder: overlapping clusters
    start = random_mfa(3, 10, 2)
    start = (start[0], x[:3].clone(), start[2], start[3] * 10)

    fit = fit_mfa(x, *start, tol=0.0, max_iter=60)

    assert len(fit.history) == 60
    assert fit.history.diff().min() > -1e-9
    assert all(torch.isfinite(p).all() for p in fit[:4])

    # the fitted mixture has the last likelihood (one more E-step)
    last = GaussianMixture(LowRankNormal(*fit[1:4]), fit.logits).log_prob(x).mean()
    assert last >= fit.history[-1] - 1e-9


def test_em_recovers_planted_subspaces():
    torch.manual_seed(7)
    K, D, R = 3, 20, 2
    x, loc, basis = planted(3000, K, D, R)

    mfa = MFA(features=D, components=K, rank=R).double()
    mfa.initialize(x, strategy="em")
    _, fitted_loc, factor, _ = (p.detach() for p in mfa.phi)

    match = torch.cdist(loc, fitted_loc).argmin(dim=-1)
    assert sorted(match.tolist()) == list(range(K))

    for k in range(K):
        q = torch.linalg.qr(factor[match[k]]).Q
        cosines = torch.linalg.svdvals(basis[k].mT @ q)  # cosines of the principal angles
        assert cosines.min() > 0.99

    assert torch.allclose(
        mfa().logits.exp(), torch.full((K,), 1 / K, dtype=torch.float64), atol=0.01
    )


@pytest.mark.parametrize("strategy", ["random", "kmeans", "kmeans++", "fa", "em"])
def test_strategies_on_degenerate_digits(strategy):
    torch.manual_seed(8)
    x, x_test, *_ = digits()
    x = x[:300].clone()
    x[:, 0] = 0.5  # a constant feature
    x = torch.cat((x, x[:1].expand(100, -1)))  # many duplicates of one sample

    mfa = MFA(features=64, components=12, rank=3)
    mfa.initialize(x, strategy=strategy, max_iter=20)

    assert all(torch.isfinite(p).all() for p in mfa.parameters())
    assert torch.isfinite(mfa().log_prob(x_test)).all()
    assert torch.isfinite(mfa().log_prob(x)).all()


@pytest.mark.parametrize("strategy", ["random", "kmeans++"])
def test_strategies_with_duplicated_centres(strategy):
    torch.manual_seed(9)
    x = torch.cat((torch.zeros(40, 3), torch.ones(2, 3)))  # random centres repeat

    mfa = MFA(features=3, components=4, rank=1)
    mfa.initialize(x, strategy=strategy)

    assert all(torch.isfinite(p).all() for p in mfa.parameters())
    assert torch.isfinite(mfa().log_prob(x)).all()


def test_fa_improves_on_kmeans():
    x, *_ = digits()
    scores = {}
    for strategy in ("kmeans", "fa", "em"):
        torch.manual_seed(10)
        mfa = MFA(features=64, components=5, rank=4)
        mfa.initialize(x, strategy=strategy, max_iter=30)
        scores[strategy] = mfa().log_prob(x).mean()

    assert scores["kmeans"] < scores["fa"] < scores["em"]


def test_initialize_context_produces_the_fit():
    x = torch.cat((torch.randn(100, 3) - 4, torch.randn(100, 3) + 4))
    conditional = MFA(features=3, context=2, components=2, rank=1)
    free = MFA(features=3, components=2, rank=1)

    torch.manual_seed(11)
    conditional.initialize(x, strategy="em")
    torch.manual_seed(11)
    free.initialize(x, strategy="em")

    c = torch.randn(200, 2)
    assert torch.allclose(conditional(c).log_prob(x), free().log_prob(x), atol=0.05)


def test_training_step():
    torch.manual_seed(14)
    x = torch.randn(64, 4)
    mfa = MFA(features=4, components=2, rank=2)
    mfa.initialize(x, strategy="kmeans")
    before = -mfa().log_prob(x).mean()
    train(mfa, lambda: -mfa().log_prob(x).mean(), steps=20, lr=1e-2)

    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mfa.parameters())
    assert -mfa().log_prob(x).mean() < before


@pytest.mark.slow
@pytest.mark.parametrize("rank", [4, 8])
def test_digits_beats_diagonal_gmm(rank):
    from sklearn.mixture import GaussianMixture as SKGMM

    x, x_test, *_ = digits(dtype=torch.float64)
    sk = SKGMM(10, covariance_type="diag", random_state=0).fit(x.numpy())

    torch.manual_seed(0)
    mfa = MFA(features=64, components=10, rank=rank).double()
    mfa.initialize(x, strategy="em", max_iter=300)

    with torch.no_grad():
        ours = mfa().log_prob(x_test).mean().item()

    assert ours > sk.score(x_test.numpy()) + 5


# robustness: outliers, diagonals at the floor, float32


def two_blobs(outlier: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Two blobs of 100 samples in 2-D (float32), one sample moved to ``outlier``;
    returns the samples and the mask of the inliers."""

    x, _ = blobs(TWO, 100, dtype=torch.float32)
    inliers = torch.ones(200, dtype=torch.bool)
    if outlier is not None:
        x[7], inliers[7] = outlier, False
    return x, inliers


def inlier_log_likelihood(model, x, inliers) -> float:
    with torch.no_grad():
        return model.double()().log_prob(x[inliers].double()).mean().item()


@pytest.mark.parametrize("outlier", [1e4, 1e6])
@pytest.mark.parametrize("strategy", ["kmeans", "fa", "em"])
def test_outlier_leaves_the_inliers_alone(outlier, strategy):
    r"""One sample at 1e4 or 1e6 takes a component of its own and the inliers keep the
    fit they have without it (measured -3.455 without, -3.473 with it, the weights of
    their components going from 1/2 to 100/201), as a GMM's do (-3.453, -3.466). The
    floor of the variances was reg times each feature's variance, which the outlier
    inflates to 4975, and the sums were expanded around the data mean, which it moves
    by 5000: -10.36 and -7.7 nats."""

    generator = torch.Generator().manual_seed(1)
    clean, _ = two_blobs()
    mfa = MFA(2, components=2, rank=1)
    mfa.initialize(clean, strategy, generator=generator)
    expected = inlier_log_likelihood(mfa, clean, torch.ones(200, dtype=torch.bool))

    x, inliers = two_blobs(outlier)
    mfa, gmm = MFA(2, components=3, rank=1), GMM(2, components=3)
    mfa.initialize(x, strategy, generator=generator.manual_seed(1))
    gmm.initialize(x, "em" if strategy == "fa" else strategy, generator=generator.manual_seed(1))

    assert inlier_log_likelihood(mfa, x, inliers) == pytest.approx(expected, abs=0.03)
    assert inlier_log_likelihood(gmm, x, inliers) == pytest.approx(expected, abs=0.03)


def test_floor_is_absolute():
    from contmix.em.mfa import _floor

    x, _ = two_blobs()
    far, _ = two_blobs(1e6)

    assert torch.equal(_floor(x, 1e-6), _floor(far, 1e-6))
    assert torch.equal(_floor(x, 1e-3), torch.full((2,), 1e-3))


def floor_data(N: int = 300, M: int = 100) -> torch.Tensor:
    r"""A stand-in for dequantized images in logit space (float32): 70% of the pixels
    at the background, many clusters of one or two samples whose variances sit at the
    floor. Previous code raised torch's LinAlgError on it in 0.05 seconds (the
    capacitance I + A^T D^-1 A, formed in float32, is not positive definite)."""

    g = torch.Generator().manual_seed(0)
    v = (torch.rand(N, M, generator=g) < 0.3) * torch.randint(0, 256, (N, M), generator=g)
    y = (v + torch.rand(N, M, generator=g)) / 256
    return torch.logit(1e-6 + (1 - 2e-6) * y)


def test_posterior_at_the_floor_float32():
    r"""The posterior of the factors in float32 with diagonals at the floor and nearly
    collinear loadings, against float64: the capacitance formed in float32 is not
    positive definite (its Cholesky decomposition fails) and its inverse was off by
    500%; by QR, G and beta are within 1e-4 (relative)."""

    from contmix.em.mfa import _posterior

    g = torch.Generator().manual_seed(0)
    K, M, R = 8, 150, 4
    factor = 3 * torch.randn(K, M, R, generator=g)
    factor[..., 1] = factor[..., 0] + 1e-3 * torch.randn(K, M, generator=g)
    diag = torch.full((K, M), 1e-6)
    diag[:, :20] = 1.0

    capacitance = torch.eye(R) + factor.mT @ (factor / diag.unsqueeze(-1))
    assert (torch.linalg.cholesky_ex(capacitance).info > 0).any()  # the case is hard

    f64, d64 = factor.double(), diag.double()
    scaled = f64 / d64.unsqueeze(-1)
    G64 = torch.linalg.inv(torch.eye(R, dtype=torch.float64) + f64.mT @ scaled)
    beta64 = G64 @ scaled.mT
    G, beta = _posterior(factor, diag)

    assert (G.double() - G64).norm() / G64.norm() < 1e-4
    error = (beta.double() - beta64).norm(dim=(-2, -1)) / beta64.norm(dim=(-2, -1))
    assert error.max() < 1e-3


def test_em_step_at_the_floor_float32_vs_float64():
    r"""One EM step in float32 from a start with a quarter of the diagonals at the
    floor equals the same step in float64: the log-likelihood within 1e-5 nats per
    sample (measured 7e-8; 1.2 nats with the inverses, 0.12 with the sums in float32)
    and the diagonals within 1e-3 relative (measured 3e-5; 3272 with the inverses)."""

    x = floor_data()
    mfa = MFA(100, components=20, rank=4).double()
    mfa.initialize(x.double(), "fa", max_iter=20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, loc, factor, log_diag = mfa.phi
        start = [t.float() for t in (logits.log_softmax(-1), loc, factor, log_diag.exp() + 1e-6)]
    assert (start[3] < 2e-6).double().mean() > 0.1  # many diagonals at the floor

    expected = fit_mfa(x.double(), *(t.double() for t in start), tol=0, max_iter=1)
    fit = fit_mfa(x, *start, tol=0, max_iter=1)

    ours = mfa_log_likelihood(x.double(), *(t.double() for t in fit[:4]))
    reference = mfa_log_likelihood(x.double(), *expected[:4])
    assert abs(ours - reference) < 1e-5
    assert ((fit.diag.double() - expected.diag) / expected.diag).abs().max() < 1e-3
    assert torch.allclose(fit.factor.double(), expected.factor, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("strategy", ["fa", "em"])
def test_initialize_at_the_floor_float32(strategy):
    x = floor_data()
    mfa = MFA(100, components=20, rank=4)
    mfa.initialize(x, strategy, max_iter=20, generator=torch.Generator().manual_seed(0))

    assert all(torch.isfinite(p).all() for p in mfa.parameters())
    assert torch.isfinite(mfa().log_prob(x)).all()


def test_solve_guard():
    from contmix.em.mfa import _solve

    v = torch.tensor([[1.0, 2.0, 3.0]])  # singular moments: the outer product of one sample
    moments = (v.T @ v).unsqueeze(0)
    cross = torch.tensor([[[2.0, 4.0, 6.0]]])  # consistent: cross = 2 v^T v's first row
    solution = _solve(moments, cross)

    assert torch.isfinite(solution).all()
    assert torch.allclose(solution @ moments.double(), cross.double(), atol=1e-4)

    bad = torch.eye(3).repeat(4, 1, 1)
    bad[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"component \[2\].*not finite"):
        _solve(bad, torch.ones(4, 5, 3))


def test_zero_variance_says_why():
    r"""With ``reg=0``, a cluster of duplicates has a zero variance: the fit stops with
    a ValueError that names the component and says to raise ``reg``, and the model is
    unchanged."""

    x = torch.cat((torch.randn(50, 3), torch.full((20, 3), 10.0)))
    mfa = MFA(3, components=2, rank=1)

    with unchanged(mfa), pytest.raises(ValueError, match=r"component.*raise reg"):
        mfa.initialize(x, "em", reg=0.0, generator=torch.Generator().manual_seed(0))


# restarts, generators, no graph


def test_generator_reproducible_and_global_state_untouched():
    x = torch.cat((torch.randn(100, 4) - 3, torch.randn(100, 4) + 3))
    models = [MFA(4, components=3, rank=2) for _ in range(3)]  # random parameters
    state = torch.get_rng_state()
    fits = []

    for mfa, seed in zip(models, (0, 0, 1), strict=True):
        mfa.initialize(x, "em", n_init=2, generator=torch.Generator().manual_seed(seed))
        fits.append([p.detach().clone() for p in mfa.parameters()])

    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(fits[0], fits[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(fits[0], fits[2], strict=True))


@pytest.mark.parametrize("strategy", ["kmeans", "em"])
def test_n_init_keeps_the_best(strategy):
    r"""The restarts of ``n_init=4`` are 4 single fits from the same generator stream;
    the one of the highest log-likelihood is kept."""

    x, _ = two_blobs()
    x = torch.cat((x, torch.randn(100, 2) * 0.5 + torch.tensor([0.0, 6.0])))
    generator = torch.Generator().manual_seed(0)
    singles = []
    for _ in range(4):
        mfa = MFA(2, components=5, rank=1)
        mfa.initialize(x, strategy, generator=generator)
        singles.append(mfa().log_prob(x).mean().item())

    mfa = MFA(2, components=5, rank=1)
    mfa.initialize(x, strategy, n_init=4, generator=torch.Generator().manual_seed(0))
    best = mfa().log_prob(x).mean().item()

    assert max(singles) - min(singles) > 1e-3  # the restarts differ
    assert best == pytest.approx(max(singles), abs=1e-4)


def test_fits_build_no_graph():
    x = torch.randn(60, 3, requires_grad=True)
    ones = torch.ones(2, 3, requires_grad=True)
    fit = fit_mfa(x, torch.zeros(2), x[:2], ones.unsqueeze(-1), ones, max_iter=3)
    assert not any(t.requires_grad for t in fit[:5])

    mfa = MFA(3, components=2, rank=1)
    mfa.initialize(x, "em")
    assert all(p.grad_fn is None and p.is_leaf for p in mfa.parameters())


@pytest.mark.parametrize("seed", [0, 1])
def test_separated_clusters_reach_the_best_basin(seed):
    r"""A small version of ``benchmarks/init_quality.py``: 8 clusters in 8 dimensions
    (centres 4 randn, 2000 samples, unit noise); ``initialize("em")`` ends in the basin
    of EM from the true clusters: its components are one per cluster."""

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, 8, generator=g) * 4
    labels = torch.randint(8, (2000,), generator=g)
    x = centers[labels] + torch.randn(2000, 8, generator=g)

    mfa = MFA(8, components=8, rank=1)
    mfa.initialize(x, "em", generator=torch.Generator().manual_seed(seed))
    predicted = mfa().predict(x)

    for k in range(8):  # each cluster is one component, each component one cluster
        assert (predicted[labels == k] == predicted[labels == k].mode().values).all()
    assert len(predicted.unique()) == 8


# fit reports, em(), posteriors, information criteria


def test_mfa_reports(recwarn):
    x, _, _ = planted(300, 3, 6, 2)
    for strategy in ("random", "kmeans", "kmeans++", "fa", "em"):
        mfa = MFA(6, components=3, rank=2).double()
        report = mfa.initialize(x, strategy, generator=torch.Generator().manual_seed(0))

        assert isinstance(report, FitReport) and mfa.fit_report is report
        assert report.strategy == strategy
        assert report.iterations == len(report.lower_bounds)
        assert (report.iterations > 0) == (strategy in ("fa", "em"))
        if strategy == "em":
            assert report.lower_bound == report.lower_bounds[-1]
        else:  # the mean log-likelihood of the fitted mixture
            with torch.no_grad():
                expected = mfa().log_prob(x).mean().item()
            assert report.lower_bound == pytest.approx(expected, abs=1e-6)


def test_mfa_em_vs_sklearn_factor_analysis():
    r"""One component: EM reaches the maximum likelihood of scikit-learn's factor
    analysis (SVD-based, not EM), from a k-means start."""

    from sklearn.decomposition import FactorAnalysis

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, 5, generator=g, dtype=torch.float64
    ) + 0.3 * torch.randn(400, 5, generator=g, dtype=torch.float64)
    fa = FactorAnalysis(n_components=2, tol=1e-10, max_iter=10000).fit(x.numpy())

    mfa = MFA(5, components=1, rank=2).double()
    mfa.initialize(x, "kmeans")
    report = mfa.em(x, tol=1e-10, max_iter=5000)

    assert report.converged and report.strategy == "em" and mfa.fit_report is report
    assert (torch.tensor(report.lower_bounds).diff() > -1e-9).all()
    with torch.no_grad():
        assert mfa().log_prob(x).mean().item() == pytest.approx(fa.score(x.numpy()), abs=1e-5)


def test_mfa_em_warns():  # its bad input, of every model, in test_battery.py
    x = torch.randn(60, 3, dtype=torch.float64)
    mfa = MFA(3, components=2, rank=1).double()
    mfa.initialize(x, "kmeans")
    with pytest.warns(ConvergenceWarning, match=r"max_iter=2\): raise max_iter, or tol"):
        assert not mfa.em(x, tol=0.0, max_iter=2).converged


def test_mfa_predict_proba_vs_sklearn():
    r"""The responsibilities are scikit-learn's for the full covariances
    :math:`D_k + A_k A_k^T`."""

    from sklearn.mixture import GaussianMixture as SKGaussianMixture
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    torch.manual_seed(0)
    logits, loc, factor, diag = random_mfa(K=3, D=4, R=2)
    mfa = MFA(4, components=3, rank=2).double()
    with torch.no_grad():
        for p, value in zip(mfa.phi, mfa._layout(logits, loc, factor, diag), strict=True):
            p.copy_(value)
    x = reference(logits, loc, factor, diag).sample((100,))

    covariances = (diag.diag_embed() + factor @ factor.mT).numpy()
    sk = SKGaussianMixture(3, covariance_type="full")
    sk.weights_, sk.means_ = logits.softmax(-1).numpy(), loc.numpy()
    sk.covariances_ = covariances
    sk.precisions_cholesky_ = _compute_precision_cholesky(covariances, "full")

    with torch.no_grad():
        proba = mfa.predict_proba(x)
        assert torch.allclose(proba.sum(dim=-1), torch.ones(100, dtype=x.dtype))
        assert torch.allclose(proba, mfa().posterior(x).exp())
        assert torch.allclose(proba, torch.as_tensor(sk.predict_proba(x.numpy())), atol=1e-6)
        assert torch.equal(mfa.predict(x), torch.as_tensor(sk.predict(x.numpy())))


def test_mfa_free_parameters_and_criteria():
    r"""A hand count: weights, means, diagonals and loadings less their rotations, no more
    than a full covariance (then scikit-learn's count of a full GMM)."""

    from sklearn.mixture import GaussianMixture as SKGaussianMixture

    assert MFA(5, components=3, rank=2).free_parameters() == 2 + 3 * (5 + 5 + (10 - 1))
    assert MFA(6, components=2, rank=1).free_parameters() == 1 + 2 * (6 + 6 + 6)
    x = torch.randn(50, 3, dtype=torch.float64)
    sk = SKGaussianMixture(4, covariance_type="full", max_iter=1).fit(x.numpy())
    for rank in (2, 3, 5):  # (M - R)^2 <= M + R: as many parameters as a full covariance
        assert MFA(3, components=4, rank=rank).free_parameters() == sk._n_parameters()
    conditional = MFA(3, context=2, components=2)
    assert conditional.free_parameters() == sum(p.numel() for p in conditional.parameters())

    mfa = MFA(3, components=2, rank=1).double()
    mfa.initialize(x, "em")
    with torch.no_grad():
        log_lik = mfa().log_prob(x).sum().item()
        P = mfa.free_parameters()
        assert mfa.bic(x).item() == pytest.approx(-2 * log_lik + P * math.log(50), rel=1e-12)
        assert mfa.aic(x).item() == pytest.approx(-2 * log_lik + 2 * P, rel=1e-12)
