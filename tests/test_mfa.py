r"""Tests for contmix.mfa and the low-rank components."""

import pytest
import torch

from helpers import changed, snapshot, unchanged
from torch.distributions import (
    Categorical,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
)

from contmix import MFA
from contmix.datasets import digits
from contmix.distributions import GaussianMixture, LowRankNormal
from contmix.mfa import fit_mfa


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
    with pytest.raises(ValueError, match="context"):
        MFA(features=5)(c)


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


@pytest.mark.parametrize("context", [0, 2])
def test_bad_input_leaves_parameters_unchanged(context):
    torch.manual_seed(12)
    mfa = MFA(features=3, context=context, components=4, rank=1)
    before = snapshot(mfa)
    x = torch.randn(50, 3)

    nan = x.clone()
    nan[7, 1] = float("nan")
    cases = [
        (nan, {}, ValueError, "NaN"),
        (x[:, :2], {}, ValueError, r"shape \(N, 3\)"),
        (x.unsqueeze(0), {}, ValueError, r"shape \(N, 3\)"),
        (x[:4], {}, ValueError, "at least 5"),
        (x.long(), {}, TypeError, "float32 or float64"),
        (x.numpy(), {}, TypeError, "torch.Tensor"),
        (x, {"strategy": "kmedoids"}, ValueError, "Unknown strategy"),
    ]
    for data, kwargs, error, message in cases:
        with unchanged(mfa), pytest.raises(error, match=message):
            mfa.initialize(data, **kwargs)

    x = torch.randn(50, 3).double()
    mfa.initialize(x, strategy="em")  # a float64 sample is fine
    assert changed(mfa, before)


def test_save_load(tmp_path):
    torch.manual_seed(13)
    x = torch.randn(100, 5)
    for context in (0, 2):
        mfa = MFA(features=5, context=context, components=3, rank=2)
        mfa.initialize(x, strategy="fa")
        torch.save(mfa.state_dict(), tmp_path / "mfa.pt")

        other = MFA(features=5, context=context, components=3, rank=2)
        other.load_state_dict(torch.load(tmp_path / "mfa.pt"))
        c = torch.randn(100, 2) if context else None
        assert torch.equal(mfa(c).log_prob(x), other(c).log_prob(x))


def test_training_step():
    torch.manual_seed(14)
    x = torch.randn(64, 4)
    mfa = MFA(features=4, components=2, rank=2)
    mfa.initialize(x, strategy="kmeans")
    optimizer = torch.optim.Adam(mfa.parameters(), lr=1e-2)

    before = -mfa().log_prob(x).mean()
    for _ in range(20):
        loss = -mfa().log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

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


def test_quadratic_gradients_over_chunks():
    from contmix.distributions import _Quadratic

    torch.manual_seed(15)
    N, D, K, R = 40, 12, 2, 1  # two chunks of rows
    x = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    loc = torch.randn(K, D, dtype=torch.float64, requires_grad=True)
    precision = (torch.rand(K, D, dtype=torch.float64) + 0.5).requires_grad_()
    weight = torch.randn(K, R, D, dtype=torch.float64, requires_grad=True)

    assert _Quadratic.step(x, K * R + K) < N
    assert torch.autograd.gradcheck(_Quadratic.apply, (x, loc, precision, weight))

    small = [t[..., :3].detach().requires_grad_() for t in (x[:6], loc, precision, weight)]
    assert torch.autograd.gradgradcheck(_Quadratic.apply, small)
