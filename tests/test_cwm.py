r"""Tests for classifier-weighted mixtures (contmix.mixtures.cwm)."""

import math

import pytest
import torch
import torch.nn as nn
import zuko

from helpers import changed, snapshot, train, unchanged
from torch import Tensor

from contmix import CWM, GMM
from contmix.distributions.cwm import CWMDistribution, LocScaleTransform


def sharpen(cwm: CWM, gain: float = 6.0) -> CWM:
    r"""Spreads the components and makes the classifier strongly non-constant."""

    with torch.no_grad():
        if cwm.context == 0:
            cwm.phi[0].mul_(1.5)
            cwm.phi[1].uniform_(-0.7, 0.3)
        cwm.classifier[-1].weight.mul_(gain)
        cwm.classifier[-1].bias.mul_(gain)

    return cwm


def random_cwm(features: int, components: int = 4, seed: int = 0, **kwargs) -> CWM:
    torch.manual_seed(seed)
    cwm = CWM(features, components=components, hidden_features=(32, 32), **kwargs)
    return sharpen(cwm.double())


def weight_spread(cwm: CWM, features: int) -> Tensor:
    r"""The largest standard deviation, over latent points, of a classifier weight."""

    z = torch.randn(4096, features, dtype=torch.float64)
    with torch.no_grad():
        w = cwm.classifier(z).softmax(dim=-1)
    return w.std(dim=0).max()


def grid_1d(low: float = -15.0, high: float = 15.0, n: int = 30001) -> Tensor:
    return torch.linspace(low, high, n, dtype=torch.float64).unsqueeze(-1)


def integrate_1d(values: Tensor, grid: Tensor) -> Tensor:
    return torch.trapezoid(values, grid.squeeze(-1), dim=-1)


def density_2d(d: CWMDistribution, half: float = 8.5, n: int = 401) -> tuple[Tensor, float]:
    r"""The density at the centres of an :math:`n \times n` grid over
    :math:`[-h, h]^2`, and the area of a cell (midpoint rule)."""

    h = 2 * half / n
    axis = -half + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    points = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        p = torch.cat([d.log_prob(chunk) for chunk in points.split(2**16)]).exp()
    return p.reshape(n, n), h * h


# normalization


@pytest.mark.parametrize("maps", ["diagonal", "affine"])
def test_normalized_1d(maps: str):
    cwm = random_cwm(1, components=5, maps=maps)
    assert weight_spread(cwm, 1) > 0.1  # the weights are far from constant

    x = grid_1d()
    with torch.no_grad():
        mass = integrate_1d(cwm().log_prob(x).exp(), x)

    assert abs(mass - 1) < 1e-3


@pytest.mark.parametrize("maps", ["diagonal", "affine"])
def test_normalized_2d(maps: str):
    cwm = random_cwm(2, components=5, maps=maps)
    if maps == "affine":
        with torch.no_grad():
            cwm.phi[2].normal_(0, 0.5)
    assert weight_spread(cwm, 2) > 0.1

    p, area = density_2d(cwm())
    assert abs(p.sum() * area - 1) < 1e-3


def test_normalized_trained():
    torch.manual_seed(0)
    x = torch.cat((torch.rand(400, 2) * 2 - 1, torch.randn(200, 2) * 0.3 + 2)).double()
    cwm = CWM(2, components=3, hidden_features=(32, 32)).double()
    cwm.initialize(x, strategy="em")
    before = cwm().log_prob(x).mean().item()

    train(cwm, lambda: -cwm().log_prob(x).mean(), steps=60, lr=1e-2)

    assert cwm().log_prob(x).mean() > before + 0.05  # training changed the density
    assert weight_spread(cwm, 2) > 0.05

    p, area = density_2d(cwm())
    assert abs(p.sum() * area - 1) < 1e-3


def test_normalized_zuko_transforms():
    torch.manual_seed(0)
    cwm = CWM(
        2,
        components=3,
        hidden_features=(32, 32),
        transforms=lambda: zuko.flows.MaskedAutoregressiveTransform(2, hidden_features=(16,)),
    )
    cwm = sharpen(cwm.double())

    p, area = density_2d(cwm())
    assert abs(p.sum() * area - 1) < 1e-3


def test_normalized_conditional():
    torch.manual_seed(0)
    cwm = CWM(1, context=2, components=4, hidden_features=(32, 32)).double()
    cwm = sharpen(cwm, gain=8.0)
    c = torch.randn(3, 2, dtype=torch.float64)

    x = grid_1d().unsqueeze(-2)  # (n, 1, 1) against a batch of 3 contexts
    with torch.no_grad():
        p = cwm(c).log_prob(x).exp()

    assert p.shape == (x.shape[0], 3)
    assert torch.allclose(integrate_1d(p.T, x[:, 0]), torch.ones(3, dtype=p.dtype), atol=1e-3)
    assert not torch.allclose(p[:, 0], p[:, 1], atol=1e-3)  # the context matters


# sampling


def ks_statistic(samples: Tensor, grid: Tensor, density: Tensor) -> Tensor:
    r"""The Kolmogorov-Smirnov statistic of 1-D samples against the CDF obtained by
    integrating a density on a grid."""

    cdf = torch.cumulative_trapezoid(density, grid.squeeze(-1))
    cdf = torch.cat((cdf.new_zeros(1), cdf))
    index = torch.searchsorted(grid.squeeze(-1), samples).clamp(1, len(cdf) - 1)
    F = cdf[index]

    n = len(samples)
    ranks = torch.arange(1, n + 1, dtype=F.dtype)
    F = F.sort().values
    return torch.maximum(ranks / n - F, F - (ranks - 1) / n).max()


def wrong_sample(d: CWMDistribution, n: int) -> Tensor:
    r"""A wrong sampler: the component drawn from the classifier at an independent
    latent point, which gives the mixture with constant weights :math:`E[w(Z)]`."""

    z = d.base.sample((n,))
    x, _ = d.latents(z)
    _, log_w = d.latents(d.base.sample((n,)))
    r = torch.distributions.Categorical(logits=log_w).sample()
    return x[torch.arange(n), r]


def test_samples_match_density_1d():
    cwm = random_cwm(1, components=5, seed=1)
    cwm = sharpen(cwm, gain=2.0)
    d = cwm()
    x = grid_1d()
    with torch.no_grad():
        p = d.log_prob(x).exp()

    torch.manual_seed(0)
    n = 20000
    critical = 1.95 / math.sqrt(n)  # KS test at level 0.001

    good = ks_statistic(d.sample((n,)).squeeze(-1), x, p)
    bad = ks_statistic(wrong_sample(d, n).squeeze(-1), x, p)

    assert good < critical
    assert bad > 2 * critical  # the test would catch a wrong sampler


def test_samples_match_density_2d():
    cwm = random_cwm(2, components=4, seed=2)
    d = cwm()
    p, area = density_2d(d, n=300)

    torch.manual_seed(0)
    n = 20000
    samples = d.sample((n,))

    # probabilities of the four quadrants and of the disc of radius 1.5
    half = 8.5
    h = 2 * half / p.shape[0]
    axis = -half + h * (torch.arange(p.shape[0], dtype=torch.float64) + 0.5)
    u, v = torch.meshgrid(axis, axis, indexing="ij")
    regions = [(u > 0) & (v > 0), (u < 0) & (v > 0), (u < 0) & (v < 0), (u * u + v * v < 2.25)]
    s0, s1 = samples[:, 0], samples[:, 1]
    hits = [(s0 > 0) & (s1 > 0), (s0 < 0) & (s1 > 0), (s0 < 0) & (s1 < 0), (s0**2 + s1**2 < 2.25)]

    for region, hit in zip(regions, hits, strict=True):
        expected = (p * region).sum() * area
        observed = hit.double().mean()
        se = (expected * (1 - expected) / n).sqrt()
        assert abs(observed - expected) < 4 * se + 2e-3


# with constant weights, a CWM is a GMM


@pytest.mark.parametrize("strategy", ["random", "kmeans", "kmeans++", "em"])
@pytest.mark.parametrize(
    ("maps", "covariance_type"), [("diagonal", "diagonal"), ("affine", "full")]
)
def test_initialize_equals_gmm(strategy: str, maps: str, covariance_type: str):
    torch.manual_seed(0)
    x = torch.cat((torch.randn(300, 2) * 0.5 + 2, torch.randn(300, 2) @ torch.randn(2, 2) - 1))
    gmm = GMM(2, components=4, covariance_type=covariance_type)
    cwm = CWM(2, components=4, maps=maps)

    torch.manual_seed(1)
    gmm.initialize(x, strategy=strategy)
    torch.manual_seed(1)
    cwm.initialize(x, strategy=strategy)

    test = torch.randn(500, 2) * 3
    with torch.no_grad():
        assert torch.allclose(cwm().log_prob(test), gmm().log_prob(test), atol=1e-4)
        assert torch.allclose(cwm().posterior(test), gmm().posterior(test), atol=1e-4)
        w = cwm.classifier(torch.randn(100, 2)).softmax(dim=-1)
        assert torch.allclose(w, gmm().logits.exp().expand(100, 4), atol=1e-6)


def test_constant_classifier_equals_gmm():
    torch.manual_seed(0)
    cwm = CWM(3, components=5)
    gmm = GMM(3, components=5, covariance_type="diagonal")

    with torch.no_grad():
        cwm.phi[1].normal_()
        cwm.classifier[-1].weight.zero_()
        cwm.classifier[-1].bias.normal_()
        for p, q in zip(gmm.phi, [cwm.classifier[-1].bias, *cwm.phi], strict=True):
            p.copy_(q)

    x = torch.randn(200, 3) * 2
    with torch.no_grad():
        assert torch.allclose(cwm().log_prob(x), gmm().log_prob(x), atol=1e-4)
        reference = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=gmm.phi[0]),
            torch.distributions.Independent(
                torch.distributions.Normal(gmm.phi[1], gmm.phi[2].exp() + 1e-6), 1
            ),
        )
        assert torch.allclose(cwm().log_prob(x), reference.log_prob(x), atol=1e-4)


def test_log_prob_brute_force():
    r"""Eq. (12) evaluated one component at a time, with scalar operations."""

    cwm = random_cwm(2, components=3, seed=3)
    x = torch.randn(7, 2, dtype=torch.float64) * 2
    loc, scale = cwm.phi[0], cwm.phi[1].exp() + cwm.epsilon

    with torch.no_grad():
        expected = []
        for xi in x:
            terms = []
            for k in range(3):
                z = (xi - loc[k]) / scale[k]
                log_w = cwm.classifier(z).log_softmax(dim=-1)[k]
                log_p0 = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
                terms.append(log_w + log_p0 - scale[k].log().sum())
            expected.append(torch.logsumexp(torch.stack(terms), dim=0))

        assert torch.allclose(cwm().log_prob(x), torch.stack(expected))


# Rao-Blackwellized expectations


def test_rao_blackwell_unbiased_and_lower_variance():
    cwm = random_cwm(1, components=5, seed=1)
    d = cwm()
    h = lambda x: x.squeeze(-1).square() + torch.sin(3 * x.squeeze(-1))

    x = grid_1d()
    with torch.no_grad():
        exact = integrate_1d(h(x) * d.log_prob(x).exp(), x)

        torch.manual_seed(0)
        n = 50000
        crude = h(d.sample((n,)))
        rb = d.conditional_expectation(h, d.base.sample((n,)))

    for values in (crude, rb):
        se = values.std() / math.sqrt(n)
        assert abs(values.mean() - exact) < 4 * se

    assert rb.var() < 0.9 * crude.var()

    with torch.no_grad():
        estimate = d.expectation(h, n)
    assert abs(estimate - exact) < 4 * rb.std() / math.sqrt(n)


def test_rao_blackwell_shapes():
    torch.manual_seed(0)
    cwm = CWM(2, context=3, components=4)
    d = cwm(torch.randn(5, 3))

    assert d.expectation(lambda x: x.sum(dim=-1), n=16).shape == (5,)
    assert d.expectation(lambda x: x, n=16).shape == (5, 2)
    assert d.conditional_expectation(lambda x: x, torch.randn(16, 5, 2)).shape == (16, 5, 2)


# gradients


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for context in (0, 2):
        for maps in ("diagonal", "affine"):
            cwm = CWM(2, context=context, components=3, maps=maps)
            c = torch.randn(8, context) if context else None
            x = torch.randn(8, 2)

            loss = -cwm(c).log_prob(x).mean()
            loss = loss + cwm(c).expectation(lambda x: x.square().sum(dim=-1), n=8).sum()
            loss.backward()

            for name, p in cwm.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_expectation_gradient_matches_quadrature():
    r"""The gradient of the Rao-Blackwellized estimate agrees with the gradient of
    the exact expectation obtained by quadrature."""

    cwm = random_cwm(1, components=3, seed=4)
    h = lambda x: (x.squeeze(-1) - 0.5).square()
    x = grid_1d()

    exact = integrate_1d(h(x) * cwm().log_prob(x).exp(), x)
    exact_grad = torch.autograd.grad(exact, cwm.phi[0])[0]

    torch.manual_seed(0)
    estimates = [
        torch.autograd.grad(cwm().expectation(h, n=20000), cwm.phi[0])[0] for _ in range(10)
    ]
    estimates = torch.stack(estimates)
    se = estimates.std(dim=0) / math.sqrt(len(estimates))

    assert ((estimates.mean(dim=0) - exact_grad).abs() < 4 * se + 1e-3).all()


# shapes, dtypes and bad input


def test_shapes():
    torch.manual_seed(0)
    cwm = CWM(3, context=2, components=4, hidden_features=(16,))
    c = torch.randn(5, 2)
    d = cwm(c)

    assert d.batch_shape == (5,) and d.event_shape == (3,)
    assert d.log_prob(torch.randn(5, 3)).shape == (5,)
    assert d.log_prob(torch.randn(7, 5, 3)).shape == (7, 5)
    assert d.posterior(torch.randn(7, 5, 3)).shape == (7, 5, 4)
    assert d.predict(torch.randn(7, 5, 3)).shape == (7, 5)
    assert d.sample().shape == (5, 3)
    assert d.sample((6, 2)).shape == (6, 2, 5, 3)
    assert torch.allclose(d.posterior(torch.randn(5, 3)).exp().sum(dim=-1), torch.ones(5))

    d = CWM(3, components=4)()
    assert d.batch_shape == () and d.log_prob(torch.randn(2, 6, 3)).shape == (2, 6)


def test_float64():
    cwm = CWM(2, components=3).double()
    x = torch.randn(10, 2, dtype=torch.float64)
    cwm.initialize(x, strategy="kmeans")

    assert cwm().log_prob(x).dtype == torch.float64
    assert cwm().sample((4,)).dtype == torch.float64


def test_posterior_bayes():
    cwm = random_cwm(2, components=3, seed=5)
    x = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        joint = cwm().joint(x)
        posterior = cwm().posterior(x)

    assert torch.allclose(posterior, joint - cwm().log_prob(x).unsqueeze(-1).detach())


def test_distribution_direct():
    base = zuko.distributions.DiagNormal(torch.zeros(1), torch.ones(1))
    loc, scale = torch.tensor([[-1.0], [1.0]]), torch.tensor([[0.5], [2.0]])
    d = CWMDistribution(base, LocScaleTransform(loc, scale), nn.Linear(1, 2))

    x = torch.randn(4, 1)
    assert d.log_prob(x).shape == (4,)


def test_initialize_degenerate_leaves_parameters():
    cwm = CWM(2, components=2)
    before = snapshot(cwm)
    x = torch.full((20, 2), 1e38)
    x[0] = -1e38

    try:
        cwm.initialize(x)
    except ValueError:
        assert not changed(cwm, before)
    else:
        assert all(torch.isfinite(p).all() for p in cwm.parameters())


def test_bad_transforms():  # the other bad arguments, of every model, in test_battery.py
    with pytest.raises(ValueError, match="one transformation per component"):
        CWM(2, components=3, transforms=[zuko.flows.MaskedAutoregressiveTransform(2)])


@pytest.mark.parametrize("strategy", ["kmeans++", "em"])
def test_initialize_restarts_and_generator_equal_gmm(strategy: str):
    r"""``n_init`` and ``generator`` reach the Gaussian mixture fit: the CWM starts out
    as the GMM fitted with the same restarts from the same generator, the global seed
    untouched."""

    x = torch.cat(
        (torch.randn(300, 2) * 0.5 + 2, torch.randn(300, 2) - 1, torch.randn(200, 2) + 4)
    )
    gmm = GMM(2, components=5, covariance_type="diagonal")
    cwm, again = CWM(2, components=5), CWM(2, components=5)
    state = torch.get_rng_state()

    gmm.initialize(x, strategy, n_init=3, generator=torch.Generator().manual_seed(2))
    cwm.initialize(x, strategy, n_init=3, generator=torch.Generator().manual_seed(2))
    again.initialize(x, strategy, n_init=3, generator=torch.Generator().manual_seed(2))

    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        assert torch.allclose(cwm().log_prob(x), gmm().log_prob(x), atol=1e-4)
        assert torch.equal(cwm().log_prob(x), again().log_prob(x))
    assert all(p.is_leaf and p.grad_fn is None for p in cwm.parameters())


# fit reports and posteriors


@pytest.mark.parametrize("strategy", ["kmeans", "em"])
def test_initialize_report_is_the_gmm_report(strategy: str):
    r"""The report of the CWM is that of the Gaussian mixture it starts from: the GMM
    fitted from the same generator, its lower bound the CWM's mean log-likelihood."""

    torch.manual_seed(0)
    x = torch.cat((torch.randn(150, 2) - 2, torch.randn(150, 2) + 2))
    gmm, cwm = GMM(2, components=3, covariance_type="diagonal"), CWM(2, components=3)

    expected = gmm.initialize(x, strategy, n_init=2, generator=torch.Generator().manual_seed(3))
    report = cwm.initialize(x, strategy, n_init=2, generator=torch.Generator().manual_seed(3))

    assert report is cwm.fit_report
    assert (report.strategy, report.converged, report.iterations, report.n_init) == (
        expected.strategy,
        expected.converged,
        expected.iterations,
        2,
    )
    assert report.restart == expected.restart
    assert math.isclose(report.lower_bound, expected.lower_bound, rel_tol=1e-5)
    if strategy == "kmeans":  # the bound of the fitted mixture (for EM, of its last E-step)
        with torch.no_grad():
            mean = float(cwm().log_prob(x).mean())
        assert math.isclose(report.lower_bound, mean, rel_tol=1e-4)


def test_initialize_report_before_and_after():
    cwm = CWM(2, components=2)
    assert cwm.fit_report is None
    assert "fit_report" not in cwm.state_dict()

    with pytest.warns(UserWarning, match="did not converge"):
        report = cwm.initialize(torch.randn(100, 2), "em", max_iter=1, tol=1e-12, progress=False)
    assert not report.converged and report.iterations == 1
    with unchanged(cwm), pytest.raises(ValueError, match="max_iter"):
        cwm.initialize(torch.randn(100, 2), max_iter=0)
    with unchanged(cwm), pytest.raises(TypeError, match="progress"):
        cwm.initialize(torch.randn(100, 2), progress="yes")


def test_predict_proba_brute_force():
    r"""Bayes' rule on the latent-variable model, one component at a time, with a
    strongly non-constant classifier."""

    cwm = random_cwm(2, components=3, seed=4)
    x = torch.randn(7, 2, dtype=torch.float64) * 2
    loc, scale = cwm.phi[0], cwm.phi[1].exp() + cwm.epsilon

    with torch.no_grad():
        joint = torch.empty(7, 3, dtype=torch.float64)
        for n, xi in enumerate(x):
            for k in range(3):
                z = (xi - loc[k]) / scale[k]
                log_w = cwm.classifier(z).log_softmax(dim=-1)[k]
                log_p0 = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
                joint[n, k] = log_w + log_p0 - scale[k].log().sum()
        expected = joint.exp() / joint.exp().sum(dim=-1, keepdim=True)

        assert torch.allclose(cwm.predict_proba(x), expected)
        assert torch.equal(cwm.predict(x), expected.argmax(dim=-1))


def test_predict_proba_after_initialize_is_the_gmm_posterior():
    torch.manual_seed(0)
    x = torch.cat((torch.randn(200, 2) * 0.5 + 2, torch.randn(200, 2) - 1))
    gmm, cwm = GMM(2, components=2, covariance_type="full"), CWM(2, components=2, maps="affine")
    gmm.initialize(x, "em", generator=torch.Generator().manual_seed(0))
    cwm.initialize(x, "em", generator=torch.Generator().manual_seed(0))

    test = torch.randn(100, 2) * 3
    with torch.no_grad():
        assert torch.allclose(cwm.predict_proba(test), gmm.predict_proba(test), atol=1e-4)

    conditional = CWM(2, context=3, components=2)
    c = torch.randn(5, 3)
    proba = conditional.predict_proba(torch.randn(5, 2), c)
    assert proba.shape == (5, 2) and torch.allclose(proba.sum(dim=-1), torch.ones(5))
    assert conditional.predict(torch.randn(5, 2), c).shape == (5,)
