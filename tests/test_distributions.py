r"""Tests for contmix.distributions against torch.distributions, scipy and brute force."""

import numpy as np
import pytest
import scipy.stats
import torch

from torch import Tensor
from torch.distributions import (
    Categorical,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from contmix.distributions import DiagNormal, FullNormal, GaussianMixture, LowRankNormal

DTYPE = torch.float64
FAMILIES = ["diag", "full", "lowrank"]
CLASSES = {"diag": DiagNormal, "full": FullNormal, "lowrank": LowRankNormal}


def make_components(family: str, batch: tuple, D: int, seed: int = 0, rank: int = 2):
    r"""Returns a batch of components, their means and their covariance matrices."""

    g = torch.Generator().manual_seed(seed)
    loc = 2 * torch.randn(*batch, D, generator=g, dtype=DTYPE)

    if family == "diag":
        scale = torch.rand(*batch, D, generator=g, dtype=DTYPE) + 0.5
        return DiagNormal(loc, scale), loc, torch.diag_embed(scale**2)
    elif family == "full":
        A = torch.randn(*batch, D, D, generator=g, dtype=DTYPE)
        cov = A @ A.mT / D + 0.5 * torch.eye(D, dtype=DTYPE)
        return FullNormal(loc, cov), loc, cov
    else:
        factor = torch.randn(*batch, D, rank, generator=g, dtype=DTYPE)
        diag = torch.rand(*batch, D, generator=g, dtype=DTYPE) + 0.5
        cov = factor @ factor.mT + torch.diag_embed(diag)
        return LowRankNormal(loc, factor, diag), loc, cov


def torch_mixture(logits: Tensor, loc: Tensor, cov: Tensor, dims: list | None = None):
    r"""torch's mixture of full-covariance normals, or its marginal on ``dims``."""

    if dims is not None:
        loc, cov = loc[..., dims], cov[..., dims, :][..., :, dims]
    return MixtureSameFamily(Categorical(logits=logits), MultivariateNormal(loc, cov))


def make_mixture(family: str, batch: tuple = (3,), D: int = 4, seed: int = 0):
    r"""Returns a mixture, its logits, means and covariances, and torch's equivalent."""

    base, loc, cov = make_components(family, batch, D, seed)
    g = torch.Generator().manual_seed(seed + 1)
    logits = torch.randn(*batch, generator=g, dtype=DTYPE)
    return GaussianMixture(base, logits), logits, loc, cov, torch_mixture(logits, loc, cov)


def randn(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def covariance(d) -> Tensor:
    r"""The covariance matrices of a batch of components, whatever their family."""

    if hasattr(d, "covariance_matrix"):
        return d.covariance_matrix
    return torch.diag_embed(d.variance)


def mixture_covariance(logits: Tensor, loc: Tensor, cov: Tensor) -> Tensor:
    r"""The covariance of a mixture by the law of total covariance."""

    w = torch.softmax(logits, dim=-1)[..., None, None]
    mean = (w[..., 0] * loc).sum(dim=-2)
    second = (w * (cov + loc[..., :, None] * loc[..., None, :])).sum(dim=-3)
    return second - mean[..., :, None] * mean[..., None, :]


def brute_condition(logits: Tensor, loc: Tensor, cov: Tensor, obs: list, value: Tensor):
    r"""The conditional mixture from the joint covariance: per component
    :math:`\mu_u + S_{uo} S_{oo}^{-1} (x_o - \mu_o)`, :math:`S_{uu} - S_{uo} S_{oo}^{-1}
    S_{ou}` and weights :math:`\propto \pi_k \mathcal{N}(x_o; \mu_o, S_{oo})`."""

    D = loc.shape[-1]
    obs = [o % D for o in obs]
    other = [i for i in range(D) if i not in obs]

    S_oo = cov[..., obs, :][..., :, obs]
    S_uo = cov[..., other, :][..., :, obs]
    S_uu = cov[..., other, :][..., :, other]

    diff = value.unsqueeze(-2) - loc[..., obs]  # (*, K, O)
    mean = loc[..., other] + (S_uo @ torch.linalg.solve(S_oo, diff.unsqueeze(-1))).squeeze(-1)
    cond = S_uu - S_uo @ torch.linalg.solve(S_oo, S_uo.mT)
    weights = logits + MultivariateNormal(loc[..., obs], S_oo).log_prob(value.unsqueeze(-2))

    return other, weights, mean, cond


def bayes(reference, logits, loc, cov, obs: list, value: Tensor, y: Tensor) -> Tensor:
    r""":math:`\log p(x_u \mid x_o) = \log p(x) - \log p(x_o)` at the values ``y`` of the
    other dimensions (in increasing order), with torch's joint ``reference`` and marginal."""

    other = [i for i in range(loc.shape[-1]) if i not in obs]
    x = torch.empty(*y.shape[:-1], loc.shape[-1], dtype=DTYPE)
    x[..., obs], x[..., other] = value.expand(*y.shape[:-1], -1), y
    return reference.log_prob(x) - torch_mixture(logits, loc, cov, obs).log_prob(value)


# log_prob


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [(3,), (2, 3)])
def test_log_prob(family, batch):
    d, _, _, _, reference = make_mixture(family, batch)
    x = randn(16, *batch[:-1], 4)

    assert d.batch_shape == batch[:-1]
    assert d.event_shape == (4,)
    assert d.base.batch_shape == batch
    assert d.log_prob(x).shape == (16, *batch[:-1])
    assert torch.allclose(d.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-10)

    # a single sample and an input broadcast against the batch
    assert torch.allclose(d.log_prob(x[0]), reference.log_prob(x[0]), rtol=0, atol=1e-10)
    if len(batch) > 1:
        y = randn(16, 1, 4)
        assert d.log_prob(y).shape == (16, *batch[:-1])
        assert torch.allclose(d.log_prob(y), reference.log_prob(y), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_far_from_origin(family):
    r"""The shared path centres inputs; far from the origin it must stay accurate."""

    d, logits, loc, cov, _ = make_mixture(family)
    shift = torch.full((4,), 1e4, dtype=DTYPE)
    far = GaussianMixture(type(d.base)(*_arguments(d.base, shift)), logits)
    reference = torch_mixture(logits, loc + shift, cov)
    x = randn(16, 4) + shift

    assert torch.allclose(far.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-8)


def _arguments(base, shift: Tensor) -> tuple:
    if isinstance(base, DiagNormal):
        return base.base_dist.loc + shift, base.base_dist.scale
    elif isinstance(base, FullNormal):
        return base.loc + shift, base.covariance_matrix
    return base.loc + shift, base.cov_factor, base.cov_diag


@pytest.mark.parametrize("family", FAMILIES)
def test_component_log_prob(family):
    r"""Shared inputs (*, 1, D) take the fast path, others torch's own (the fallback)."""

    base, loc, cov = make_components(family, (3,), 4)
    reference = MultivariateNormal(loc, cov)

    shared = randn(10, 1, 4)
    separate = randn(10, 3, 4)
    single = randn(4)

    for x in (shared, separate, single):
        assert torch.allclose(base.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-10)

    assert base.log_prob(shared).shape == (10, 3)
    assert base.log_prob(single).shape == (3,)


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_and_zuko_surface(family):
    d, logits, loc, cov, _ = make_mixture(family, (2, 3))

    assert d.component_distribution is d.base
    assert isinstance(d.mixture_distribution, Categorical)
    assert isinstance(d.base, CLASSES[family])
    assert torch.allclose(d.logits, torch.log_softmax(logits, dim=-1))
    assert torch.allclose(d.base.mean, loc)
    assert torch.allclose(covariance(d.base), cov)

    if family == "diag":
        assert torch.allclose(d.base.base_dist.scale**2, cov.diagonal(dim1=-2, dim2=-1))


# posterior and predict


@pytest.mark.parametrize("family", FAMILIES)
def test_posterior(family):
    d, logits, loc, cov, _ = make_mixture(family)
    x = randn(32, 4)

    log_w = torch.log_softmax(logits, dim=-1).numpy()
    joint = np.stack(
        [
            log_w[k] + scipy.stats.multivariate_normal(loc[k].numpy(), cov[k].numpy()).logpdf(x)
            for k in range(3)
        ],
        axis=-1,
    )
    bayes = np.exp(joint - joint.max(axis=-1, keepdims=True))
    bayes = bayes / bayes.sum(axis=-1, keepdims=True)

    posterior = d.posterior(x).exp()

    assert posterior.shape == (32, 3)
    assert torch.allclose(posterior.sum(dim=-1), torch.ones(32, dtype=DTYPE), atol=1e-12)
    assert np.allclose(posterior.numpy(), bayes, rtol=0, atol=1e-10)
    assert np.array_equal(d.predict(x).numpy(), bayes.argmax(axis=-1))


@pytest.mark.parametrize("family", FAMILIES)
def test_posterior_batched(family):
    d, logits, loc, cov, _ = make_mixture(family, (2, 3))
    x = randn(8, 2, 4)

    joint = torch.log_softmax(logits, dim=-1) + MultivariateNormal(loc, cov).log_prob(
        x.unsqueeze(-2)
    )
    bayes = torch.softmax(joint, dim=-1)

    assert d.posterior(x).shape == (8, 2, 3)
    assert torch.allclose(d.posterior(x).exp(), bayes, rtol=0, atol=1e-10)
    assert torch.equal(d.predict(x), bayes.argmax(dim=-1))


# moments and sampling


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_variance(family):
    d, logits, loc, cov, _ = make_mixture(family, (2, 3))
    full = mixture_covariance(logits, loc, cov)
    mean = (torch.softmax(logits, dim=-1)[..., None] * loc).sum(dim=-2)

    assert torch.allclose(d.mean, mean, atol=1e-12)
    assert torch.allclose(d.variance, full.diagonal(dim1=-2, dim2=-1), atol=1e-12)


def assert_moments(samples: Tensor, mean: Tensor, cov: Tensor, z: float = 5.0):
    r"""Sample mean, variances and covariances within ``z`` standard errors."""

    n = len(samples)
    centered = samples - samples.mean(dim=0)
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((samples.mean(dim=0) - mean).abs() <= z * se_mean).all()

    products = centered[:, :, None] * centered[:, None, :]
    se_cov = products.std(dim=0) / n**0.5
    assert ((products.mean(dim=0) - cov).abs() <= z * se_cov).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_moments(family):
    torch.manual_seed(0)
    d, logits, loc, cov, _ = make_mixture(family, D=3)
    samples = d.sample((100_000,))

    assert samples.shape == (100_000, 3)
    assert samples.dtype == DTYPE
    assert torch.allclose(d.mean, (torch.softmax(logits, -1)[:, None] * loc).sum(0))
    assert_moments(samples, d.mean, mixture_covariance(logits, loc, cov))


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_batched(family):
    torch.manual_seed(0)
    d, logits, loc, cov, _ = make_mixture(family, (2, 3), D=3)
    samples = d.sample((50_000,))
    full = mixture_covariance(logits, loc, cov)

    assert samples.shape == (50_000, 2, 3)
    for b in range(2):
        assert_moments(samples[:, b], d.mean[b], full[b])


# take and expand


@pytest.mark.parametrize("family", FAMILIES)
def test_take(family):
    base, loc, cov = make_components(family, (3,), 4)
    index = torch.tensor([2, 0, 0, 1, 2])
    taken = base.take(index)
    x = randn(5, 4)

    assert isinstance(taken, CLASSES[family])
    assert taken.batch_shape == (5,)
    assert torch.equal(taken.mean, loc[index])
    assert torch.allclose(covariance(taken), cov[index], atol=1e-12)
    reference = MultivariateNormal(loc[index], cov[index]).log_prob(x)
    assert torch.allclose(taken.log_prob(x), reference, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_take_batched(family):
    base, loc, cov = make_components(family, (2, 3), 4)
    index = torch.tensor([[2, 0], [1, 1], [0, 2], [2, 2]])  # (N, B)
    taken = base.take(index)
    rows = torch.arange(2)

    assert taken.batch_shape == (4, 2)
    assert torch.equal(taken.mean, loc[rows, index])
    assert torch.allclose(covariance(taken), cov[rows, index], atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_expand(family):
    d, _, _, _, reference = make_mixture(family, (2, 3))
    e = d.expand(torch.Size((5, 2)))
    x = randn(7, 2, 4)

    assert isinstance(e, GaussianMixture)
    assert e.batch_shape == (5, 2)
    assert e.event_shape == (4,)
    assert e.base.batch_shape == (5, 2, 3)
    assert e.log_prob(x.unsqueeze(1)).shape == (7, 5, 2)
    assert torch.allclose(e.log_prob(x.unsqueeze(1)), reference.log_prob(x).unsqueeze(1))
    assert e.sample((6,)).shape == (6, 5, 2, 4)


# marginal and condition

DIMS = [[1], [0, 2], [3, 1], [-1, -3], torch.tensor([True, False, True, True])]
DIMS_IDS = ["one", "pair", "unsorted", "negative", "mask"]


def as_list(dims) -> list:
    if isinstance(dims, Tensor) and dims.dtype == torch.bool:
        return dims.nonzero().squeeze(-1).tolist()
    return [d % 4 for d in dims]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dims", DIMS, ids=DIMS_IDS)
def test_marginal(family, dims):
    d, logits, loc, cov, _ = make_mixture(family)
    index = as_list(dims)
    m = d.marginal(dims)

    reference = torch_mixture(logits, loc, cov, index)
    x = randn(16, len(index))

    assert isinstance(m, GaussianMixture)
    assert isinstance(m.base, CLASSES[family])
    assert m.event_shape == (len(index),)
    assert torch.allclose(m.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-10)
    assert torch.allclose(covariance(m.base), cov[..., index, :][..., :, index], atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dims", DIMS, ids=DIMS_IDS)
def test_condition(family, dims):
    d, logits, loc, cov, reference = make_mixture(family)
    obs = as_list(dims)
    value = randn(5, len(obs), seed=2)
    c = d.condition(dims, value)

    other, weights, mean, cond = brute_condition(logits, loc, cov, obs, value)

    assert isinstance(c, GaussianMixture)
    assert isinstance(c.base, CLASSES[family])
    assert c.batch_shape == (5,)
    assert c.event_shape == (len(other),)
    assert torch.allclose(c.logits, torch.log_softmax(weights, dim=-1), atol=1e-10)
    assert torch.allclose(c.base.mean, mean, atol=1e-10)
    assert torch.allclose(covariance(c.base), cond.expand(5, -1, -1, -1), atol=1e-10)

    # Bayes: p(x_u | x_o) = p(x) / p(x_o) with torch's joint and marginal
    y = randn(16, 5, len(other), seed=3)
    expected = bayes(reference, logits, loc, cov, obs, value, y)
    assert torch.allclose(c.log_prob(y), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_condition_batched(family):
    d, logits, loc, cov, reference = make_mixture(family, (2, 3))
    value = randn(6, 2, 2, seed=2)  # (M, B, O)
    c = d.condition([0, 3], value)

    assert c.batch_shape == (6, 2)
    assert c.event_shape == (2,)

    y = randn(7, 6, 2, 2, seed=3)
    expected = bayes(reference, logits, loc, cov, [0, 3], value, y)
    assert torch.allclose(c.log_prob(y), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_condition_single_value(family):
    d, logits, loc, cov, _ = make_mixture(family)
    value = randn(2, seed=2)
    c = d.condition([1, 2], value)
    _, weights, mean, _ = brute_condition(logits, loc, cov, [1, 2], value)

    assert c.batch_shape == ()
    assert torch.allclose(c.logits, torch.log_softmax(weights, dim=-1), atol=1e-10)
    assert torch.allclose(c.base.mean, mean, atol=1e-10)


# gradients


def build(family: str, loc: Tensor, raw: Tensor, extra: Tensor, logits: Tensor):
    r"""A mixture from unconstrained parameters, so that gradcheck may perturb them."""

    if family == "diag":
        base = DiagNormal(loc, raw.exp())
    elif family == "full":
        tril = torch.tril(raw, diagonal=-1) + torch.diag_embed(raw.diagonal(0, -2, -1).exp())
        base = FullNormal(loc, scale_tril=tril)
    else:
        base = LowRankNormal(loc, extra, raw.exp())
    return GaussianMixture(base, logits)


def gradcheck_inputs(family: str, K: int = 3, D: int = 3):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(K, D, generator=g, dtype=DTYPE)
    shape = (K, D, D) if family == "full" else (K, D)
    raw = 0.3 * torch.randn(shape, generator=g, dtype=DTYPE)
    extra = torch.randn(K, D, 2, generator=g, dtype=DTYPE)
    logits = torch.randn(K, generator=g, dtype=DTYPE)
    x = torch.randn(5, D, generator=g, dtype=DTYPE)
    return [t.requires_grad_() for t in (loc, raw, extra, logits, x)]


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_log_prob(family):
    f = lambda loc, raw, extra, logits, x: build(family, loc, raw, extra, logits).log_prob(x)
    assert torch.autograd.gradcheck(f, gradcheck_inputs(family), fast_mode=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_condition(family):
    def f(loc, raw, extra, logits, x):
        d = build(family, loc, raw, extra, logits)
        return d.condition([2], x[:, 2:]).log_prob(x[:, :2])

    assert torch.autograd.gradcheck(f, gradcheck_inputs(family), fast_mode=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_nested(family):
    def f(loc, raw, extra, logits, eta, x):
        inner = build(family, loc, raw, extra, logits)
        return GaussianMixture(inner, eta).log_prob(x)

    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 3, 3) if family == "full" else (2, 3, 3)
    inputs = [
        torch.randn(2, 3, 3, generator=g, dtype=DTYPE),  # loc
        0.3 * torch.randn(shape, generator=g, dtype=DTYPE),  # raw
        torch.randn(2, 3, 3, 2, generator=g, dtype=DTYPE),  # extra
        torch.randn(2, 3, generator=g, dtype=DTYPE),  # logits
        torch.randn(2, generator=g, dtype=DTYPE),  # eta
        torch.randn(5, 3, generator=g, dtype=DTYPE),  # x
    ]

    assert torch.autograd.gradcheck(f, [t.requires_grad_() for t in inputs], fast_mode=True)


def test_low_rank_gradients_many_rows():
    r"""Values and gradients of the low-rank fast path against torch's own
    LowRankMultivariateNormal, with enough rows and features to be processed in chunks."""

    g = torch.Generator().manual_seed(0)
    loc = torch.randn(2, 40, generator=g, dtype=DTYPE)
    factor = torch.randn(2, 40, 1, generator=g, dtype=DTYPE)
    diag = torch.rand(2, 40, generator=g, dtype=DTYPE) + 0.5
    x = torch.randn(300, 40, generator=g, dtype=DTYPE)
    inputs = [t.requires_grad_() for t in (loc, factor, diag, x)]

    ours = LowRankNormal(loc, factor, diag).log_prob(x.unsqueeze(-2))
    theirs = LowRankMultivariateNormal(loc, factor, diag).log_prob(x.unsqueeze(-2))
    weights = torch.rand(ours.shape, generator=g, dtype=DTYPE)

    grads = torch.autograd.grad((weights * ours).sum(), inputs)
    expected = torch.autograd.grad((weights * theirs).sum(), inputs)

    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10)
    for grad, reference in zip(grads, expected, strict=True):
        assert torch.allclose(grad, reference, rtol=1e-10, atol=1e-10)


# nested mixtures (mixture of mixtures)


def make_nested(family: str, C: int = 2, K: int = 3, D: int = 4):
    base, loc, cov = make_components(family, (C, K), D, seed=5)
    g = torch.Generator().manual_seed(6)
    pi = torch.randn(C, K, generator=g, dtype=DTYPE)
    eta = torch.randn(C, generator=g, dtype=DTYPE)

    nested = GaussianMixture(GaussianMixture(base, pi), eta)

    flat_logits = (torch.log_softmax(eta, -1)[:, None] + torch.log_softmax(pi, -1)).flatten()
    flat_loc, flat_cov = loc.flatten(0, 1), cov.flatten(0, 1)
    flat = torch_mixture(flat_logits, flat_loc, flat_cov)

    return nested, flat, flat_logits, flat_loc, flat_cov


@pytest.mark.parametrize("family", FAMILIES)
def test_nested(family):
    nested, flat, flat_logits, flat_loc, flat_cov = make_nested(family)
    x = randn(32, 4)

    assert nested.batch_shape == ()
    assert nested.event_shape == (4,)
    assert nested.base.batch_shape == (2,)
    assert torch.allclose(nested.log_prob(x), flat.log_prob(x), rtol=0, atol=1e-10)

    # p(c | x) sums the flat responsibilities of the group c
    joint = flat_logits + MultivariateNormal(flat_loc, flat_cov).log_prob(x.unsqueeze(-2))
    groups = torch.softmax(joint, dim=-1).unflatten(-1, (2, 3)).sum(dim=-1)
    assert torch.allclose(nested.posterior(x).exp(), groups, rtol=0, atol=1e-10)
    assert torch.equal(nested.predict(x), groups.argmax(dim=-1))

    assert torch.allclose(nested.mean, flat.mean, atol=1e-12)
    assert torch.allclose(nested.variance, flat.variance, atol=1e-12)


def test_nested_low_rank_broadcast_parameters():
    # a batch of mixtures whose loadings and diagonals broadcast over the batch: the
    # flattened batch cannot reuse a factorization of the broadcast shape
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    factor = torch.randn(4, 2, generator=g, dtype=torch.float64)
    diag = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    x = torch.randn(6, 1, 1, 4, generator=g, dtype=torch.float64)

    reference = LowRankMultivariateNormal(loc, factor, diag).log_prob(x)
    assert torch.allclose(LowRankNormal(loc, factor, diag).log_prob(x), reference, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_nested_marginal_condition(family):
    nested, _, flat_logits, flat_loc, flat_cov = make_nested(family)

    m = nested.marginal([2, 0])
    flat_m = torch_mixture(flat_logits, flat_loc, flat_cov, [2, 0])
    z = randn(16, 2)
    assert isinstance(m.base, GaussianMixture)
    assert torch.allclose(m.log_prob(z), flat_m.log_prob(z), rtol=0, atol=1e-10)

    value = randn(5, 2, seed=2)
    c = nested.condition([-1, 1], value)
    _, weights, mean, cond = brute_condition(flat_logits, flat_loc, flat_cov, [3, 1], value)
    flat_c = torch_mixture(weights, mean, cond)
    y = randn(16, 5, 2, seed=3)

    assert c.batch_shape == (5,)
    assert c.event_shape == (2,)
    assert torch.allclose(c.log_prob(y), flat_c.log_prob(y), rtol=0, atol=1e-10)
    assert torch.allclose(c.mean, flat_c.mean, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_nested_sample(family):
    torch.manual_seed(0)
    nested, _, flat_logits, flat_loc, flat_cov = make_nested(family, D=3)
    samples = nested.sample((100_000,))

    assert samples.shape == (100_000, 3)
    mean = (torch.softmax(flat_logits, -1)[:, None] * flat_loc).sum(0)
    assert_moments(samples, mean, mixture_covariance(flat_logits, flat_loc, flat_cov))


# errors


def test_errors_features():
    d, *_ = make_mixture("full")

    for x in (randn(5, 5), randn(5), randn(5, 3, 3)):
        with pytest.raises(ValueError, match="shape"):
            d.log_prob(x)
        with pytest.raises(ValueError, match="4 features"):
            d.posterior(x)
        with pytest.raises(ValueError, match="4 features"):
            d.predict(x)


@pytest.mark.parametrize("family", FAMILIES)
def test_errors_dims(family):
    d, *_ = make_mixture(family)

    with pytest.raises(ValueError, match=r"must lie in \[-4, 4\)"):
        d.marginal([4])
    with pytest.raises(ValueError, match=r"must lie in \[-4, 4\)"):
        d.marginal([-5])
    with pytest.raises(ValueError, match="must not repeat"):
        d.marginal([1, -3])
    with pytest.raises(ValueError, match=r"boolean mask .* shape \(4,\)"):
        d.marginal(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="must lie in"):
        d.condition([0, 7], randn(2))


def test_errors_event():
    with pytest.raises(ValueError, match="one event dimension"):
        GaussianMixture(Normal(torch.zeros(3), torch.ones(3)), torch.zeros(3))


@pytest.mark.parametrize("family", FAMILIES)
def test_errors_condition_value(family):
    d, *_ = make_mixture(family)

    with pytest.raises(ValueError, match="value must have shape"):
        d.condition([0], randn(5, 2))


@pytest.mark.parametrize("family", FAMILIES)
def test_errors_component_features(family):
    d, *_ = make_mixture(family)

    with pytest.raises(ValueError, match="last dimension should hold"):
        d.base.log_prob(randn(5, 1, d.event_shape[-1] + 1))


@pytest.mark.parametrize("family", ["diag", "full", "tied", "lowrank"])
def test_empty_batches(family):
    r"""No sample, or mixtures for no context: empty densities, not an error."""

    import contmix

    make = {
        "diag": lambda c: contmix.GMM(2, context=c, covariance_type="diagonal"),
        "full": lambda c: contmix.GMM(2, context=c),
        "tied": lambda c: contmix.GMM(2, context=c, tied=True),
        "lowrank": lambda c: contmix.MFA(2, context=c),
    }[family]

    d = make(3)(torch.empty(0, 3))
    assert d.log_prob(torch.empty(0, 2)).shape == (0,)
    assert d.posterior(torch.empty(0, 2)).shape == (0, 2)
    assert make(0)().log_prob(torch.empty(0, 2)).shape == (0,)
    assert make(0)().log_prob(torch.empty(3, 0, 2)).shape == (3, 0)
