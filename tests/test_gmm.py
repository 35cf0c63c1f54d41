r"""Tests for contmix.GMM against zuko's GMM, torch.distributions and scikit-learn."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import zuko

from data import blobs
from helpers import train, unchanged
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import contmix

from contmix import GMM, FitReport
from contmix import ConvergenceWarning as ContmixConvergenceWarning
from contmix.cluster import kmeans, kmeans_plusplus
from contmix.datasets import digits
from contmix.distributions import GaussianMixture
from contmix.em import fit_gmm, gmm_m_step

COV_TYPES = ["full", "diagonal", "spherical"]
STRATEGIES = ["random", "kmeans", "kmeans++", "em"]
SKLEARN = {  # (covariance_type, tied) -> scikit-learn's name
    ("full", False): "full",
    ("full", True): "tied",
    ("diagonal", False): "diag",
    ("spherical", False): "spherical",
}
CONTEXTS = [(0, None), (3, ()), (3, (5,)), (3, (2, 3))]
CONTEXT_IDS = ["unconditional", "context", "context-5", "context-2x3"]


def make_gmm(D=4, context=0, K=3, cov="full", tied=False, seed=0, **kwargs) -> GMM:
    torch.manual_seed(seed)
    gmm = GMM(D, context=context, components=K, covariance_type=cov, tied=tied, **kwargs)
    return gmm.double()


def parameters(gmm: GMM, c: Tensor | None = None) -> list[Tensor]:
    r"""The parameters in zuko's layout, unpacked by hand from the hypernetwork."""

    if c is None:
        return list(gmm.phi)

    phi = gmm.hyper(c)
    sizes = [math.prod(s) for s in gmm.shapes]
    chunks = phi.split(sizes, dim=-1)
    return [p.reshape(*c.shape[:-1], *s) for p, s in zip(chunks, gmm.shapes, strict=True)]


def reference(gmm: GMM, c: Tensor | None = None) -> MixtureSameFamily:
    r"""torch's mixture of the documented parameterization: softmax weights, means and
    :math:`L = \operatorname{diag}(\exp \phi + \epsilon) + \text{tril}` (full) or standard
    deviations :math:`\exp \phi + \epsilon` (diagonal, spherical)."""

    logits, loc, *scale = parameters(gmm, c)
    D = loc.shape[-1]

    if gmm.covariance_type == "full":
        L = torch.diag_embed(scale[0].exp() + gmm.epsilon)
        rows, cols = torch.tril_indices(D, D, offset=-1)
        L[..., rows, cols] = scale[1]
        cov = L @ L.mT
    else:
        std = (scale[0].exp() + gmm.epsilon).expand(*scale[0].shape[:-1], D)
        cov = torch.diag_embed(std.square())

    return MixtureSameFamily(Categorical(logits=logits), MultivariateNormal(loc, cov))


@torch.no_grad()
def load_natural(gmm: GMM, weights, means, covariances) -> None:
    r"""Writes natural parameters (scikit-learn's layout for the type) into ``gmm.phi``."""

    weights, means, covariances = (
        torch.as_tensor(a, dtype=torch.float64) for a in (weights, means, covariances)
    )
    D, eps = means.shape[-1], gmm.epsilon

    if gmm.covariance_type == "full":
        L = torch.linalg.cholesky(covariances.reshape(-1, D, D))
        rows, cols = torch.tril_indices(D, D, offset=-1)
        scale = [(L.diagonal(dim1=-2, dim2=-1) - eps).log(), L[:, rows, cols]]
    else:
        scale = [(covariances.reshape(len(gmm.phi[2]), -1).sqrt() - eps).log()]

    for p, value in zip(gmm.phi, [weights.log(), means, *scale], strict=True):
        p.copy_(value)


def data(n=200, seed=0) -> Tensor:
    r"""Three overlapping 4-D Gaussians, so that EM needs many iterations."""

    return blobs([[0, 0, 0, 0], [2, 1, 0, -1], [0, 2.5, 1, 1]], n, 0.8, seed)[0]


def mixture_moments(d: MixtureSameFamily) -> tuple[Tensor, Tensor]:
    r"""The mean and covariance of a mixture by the law of total covariance."""

    w = d.mixture_distribution.probs
    loc = d.component_distribution.mean
    cov = getattr(d.component_distribution, "covariance_matrix", None)
    if cov is None:
        cov = torch.diag_embed(d.component_distribution.variance)
    mean = w @ loc
    second = (w[:, None, None] * (cov + loc[:, :, None] * loc[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


# shapes and densities


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("context,batch", CONTEXTS, ids=CONTEXT_IDS)
def test_shapes_and_log_prob(cov, tied, context, batch):
    gmm = make_gmm(context=context, cov=cov, tied=tied)
    c = None if context == 0 else torch.randn(*batch, context, dtype=torch.float64)
    batch = batch or ()

    d = gmm(c)
    x = torch.randn(7, *batch, 4, dtype=torch.float64)

    assert isinstance(d, GaussianMixture)
    assert d.batch_shape == batch
    assert d.event_shape == (4,)
    assert d.base.batch_shape == (*batch, 3)
    assert d.logits.shape == (*batch, 3)
    assert d.log_prob(x).shape == (7, *batch)
    assert d.posterior(x).shape == (7, *batch, 3)
    assert d.predict(x).shape == (7, *batch)
    assert d.mean.shape == (*batch, 4)
    assert d.sample().shape == (*batch, 4)
    assert d.sample((5,)).shape == (5, *batch, 4)
    assert torch.allclose(d.log_prob(x), reference(gmm, c).log_prob(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("context", [0, 3])
def test_zuko_state_dict(cov, tied, context):
    torch.manual_seed(1)
    theirs = zuko.mixtures.GMM(4, context=context, components=3, covariance_type=cov, tied=tied)
    theirs = theirs.double()
    ours = make_gmm(context=context, cov=cov, tied=tied)
    c = torch.randn(6, context, dtype=torch.float64) if context else None
    x = torch.randn(6, 4, dtype=torch.float64)

    ours.load_state_dict(theirs.state_dict())  # zuko's into ours
    assert torch.allclose(ours(c).log_prob(x), theirs(c).log_prob(x), rtol=0, atol=1e-12)
    assert torch.allclose(ours(c).base.mean, theirs(c).base.mean)
    if cov == "full":
        assert torch.allclose(ours(c).base.covariance_matrix, theirs(c).base.covariance_matrix)
    else:
        assert torch.allclose(ours(c).base.base_dist.scale, theirs(c).base.base_dist.scale)

    fresh = make_gmm(context=context, cov=cov, tied=tied, seed=2)
    theirs.load_state_dict(fresh.state_dict())  # ours into zuko's
    assert torch.allclose(fresh(c).log_prob(x), theirs(c).log_prob(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cov", ["full", "diagonal"])
def test_sample_moments(cov):
    gmm = make_gmm(D=3, cov=cov)
    d = gmm()
    torch.manual_seed(0)
    samples = d.sample((100_000,))
    n = len(samples)

    mean, covariance = mixture_moments(reference(gmm))

    assert torch.allclose(d.mean, mean, atol=1e-12)
    assert torch.allclose(d.variance, covariance.diagonal(), atol=1e-12)
    assert ((samples.mean(0) - mean).abs() <= 5 * (covariance.diagonal() / n).sqrt()).all()
    products = (samples - samples.mean(0))[:, :, None] * (samples - samples.mean(0))[:, None]
    se = products.std(0) / n**0.5
    assert ((products.mean(0) - covariance).abs() <= 5 * se).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_device(strategy, accelerator):
    x = data()
    gmm = make_gmm(cov="full").to(accelerator)

    with unchanged(gmm), pytest.raises(ValueError, match="x is on cpu"):
        gmm.initialize(x, strategy=strategy)

    torch.manual_seed(0)
    gmm.initialize(x.to(accelerator), strategy=strategy)
    d = gmm()
    log_p = d.log_prob(x.to(accelerator))

    assert log_p.device.type == accelerator.type
    assert d.sample((3,)).device.type == accelerator.type
    assert torch.isfinite(log_p).all()
    assert torch.allclose(log_p.cpu(), gmm.cpu()().log_prob(x), atol=1e-8)


# gradients


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("context", [0, 3])
def test_gradients(cov, tied, context):
    r"""Every parameter gets a non-zero gradient, equal to zuko's with the same parameters."""

    ours = make_gmm(context=context, cov=cov, tied=tied)
    theirs = zuko.mixtures.GMM(4, context=context, components=3, covariance_type=cov, tied=tied)
    theirs = theirs.double()
    theirs.load_state_dict(ours.state_dict())

    c = torch.randn(32, context, dtype=torch.float64) if context else None
    x = torch.randn(32, 4, dtype=torch.float64)

    for model in (ours, theirs):
        model.zero_grad()
        model(c).log_prob(x).mean().neg().backward()

    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert (p.grad != 0).any(), name
        assert torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-12), name


# saving


@pytest.mark.parametrize("context", [0, 3])
def test_save_load(tmp_path, context):  # the state dicts of every model in test_persistence.py
    gmm = make_gmm(context=context, cov="full", tied=False)
    c = torch.randn(5, context, dtype=torch.float64) if context else None
    x = torch.randn(5, 4, dtype=torch.float64)

    torch.save(gmm, tmp_path / "model.pt")
    whole = torch.load(tmp_path / "model.pt", weights_only=False)

    assert isinstance(whole, GMM)
    assert torch.equal(whole(c).log_prob(x), gmm(c).log_prob(x))


# initialization


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
def test_initialize(blobs, strategy, cov, tied):
    r"""Any M-step from responsibilities that sum to one keeps the data mean and the data
    covariance plus ``reg`` (law of total covariance): exactly for full and diagonal
    covariances, in the trace for spherical ones."""

    x, centers, _ = blobs
    gmm = make_gmm(D=3, cov=cov, tied=tied)
    torch.manual_seed(0)
    gmm.initialize(x, strategy=strategy)
    d = gmm()

    mean, covariance = mixture_moments(d)
    data_cov = torch.cov(x.T, correction=0) + 1e-6 * torch.eye(3, dtype=x.dtype)

    assert torch.isfinite(d.log_prob(x)).all()
    assert torch.allclose(mean, x.mean(0), atol=1e-8)
    if cov == "full":
        assert torch.allclose(covariance, data_cov, atol=1e-8)
    elif cov == "diagonal":
        assert torch.allclose(covariance.diagonal(), data_cov.diagonal(), atol=1e-8)
    else:
        assert torch.allclose(covariance.trace(), data_cov.trace(), atol=1e-8)

    if strategy != "random":  # one component per blob
        nearest = torch.cdist(centers, d.base.mean).argmin(dim=-1)
        assert sorted(nearest.tolist()) == [0, 1, 2]
        assert torch.allclose(d.base.mean[nearest], centers, atol=0.1)
        assert torch.allclose(d.mixture_distribution.probs, torch.ones_like(x[0]) / 3, atol=1e-3)

    # a conditional model starts out producing the same mixture (zuko's scheme)
    conditional = make_gmm(D=3, context=2, cov=cov, tied=tied)
    torch.manual_seed(0)
    conditional.initialize(x, strategy=strategy)
    packed = torch.cat([p.detach().flatten() for p in gmm.phi])

    assert torch.allclose(conditional.hyper[-1].bias, packed, rtol=1e-12, atol=1e-12)
    c = torch.randn(len(x), 2, dtype=x.dtype)
    gap = conditional(c).log_prob(x) - d.log_prob(x)
    assert gap.abs().mean() < 0.1


@pytest.mark.parametrize("strategy", ["kmeans", "kmeans++", "em"])
def test_initialize_duplicated_points_float32(strategy):
    x = torch.tensor([[5.3, 4.7]] * 20 + [[-5.1, -3.9]] * 20)  # quantized data
    gmm = GMM(2, components=2)
    torch.manual_seed(0)
    gmm.initialize(x, strategy=strategy)

    assert torch.isfinite(gmm().log_prob(x)).all()


# EM against scikit-learn


def start(x: Tensor, centers: Tensor, cov: str, tied: bool, reg: float = 1e-6):
    r"""Hard-assignment M-step in numpy, in scikit-learn's layout (weights, means,
    covariances) and as scikit-learn's ``precisions_init``."""

    X, C = x.numpy(), centers.numpy()
    labels = ((X[:, None] - C[None]) ** 2).sum(-1).argmin(-1)
    K, D = C.shape
    weights = np.bincount(labels, minlength=K) / len(X)
    means = np.stack([X[labels == k].mean(0) for k in range(K)])
    covs = np.stack([np.cov(X[labels == k].T, bias=True) for k in range(K)])
    if tied:
        covs = (weights[:, None, None] * covs).sum(0, keepdims=True)
    covs = covs + reg * np.eye(D)

    if cov == "full":
        covariances = covs[0] if tied else covs
        return weights, means, covariances, np.linalg.inv(covariances)
    variances = np.diagonal(covs, axis1=-2, axis2=-1).copy()
    if cov == "spherical":
        variances = variances.mean(-1)
    return weights, means, variances, 1 / variances


def sklearn_fit(x: Tensor, init, name: str, **kwargs) -> SKGaussianMixture:
    weights, means, _, precisions = init
    sk = SKGaussianMixture(
        len(weights),
        covariance_type=name,
        reg_covar=1e-6,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        init_params="random_from_data",
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return sk.fit(x.numpy())


@pytest.mark.parametrize("cov,tied", list(SKLEARN), ids=list(SKLEARN.values()))
def test_em_iterations_vs_sklearn(cov, tied):
    r"""The same number of EM iterations from the same start as scikit-learn."""

    x = data()
    torch.manual_seed(0)
    init = start(x, kmeans_plusplus(x, 3), cov, tied)
    weights, means, covariances, _ = init
    shape = {"full": (4, 4), "diagonal": (4,), "spherical": (1,)}[cov]
    covariances = torch.as_tensor(covariances).reshape(-1, *shape)

    for iterations in (1, 5, 20):
        sk = sklearn_fit(x, init, SKLEARN[cov, tied], max_iter=iterations, tol=0.0)
        fit = fit_gmm(
            x,
            torch.as_tensor(weights).log(),
            torch.as_tensor(means),
            covariances,
            cov,
            tied,
            tol=0.0,
            max_iter=iterations,
        )

        assert len(fit.history) == iterations
        assert abs(fit.history[-1].item() - sk.lower_bound_) < 1e-9
        assert np.allclose(fit.means.numpy(), sk.means_, atol=1e-8)
        assert np.allclose(fit.logits.exp().numpy(), sk.weights_, atol=1e-10)
        fitted = fit.covariances.numpy().reshape(sk.covariances_.shape)
        assert np.allclose(fitted, sk.covariances_, atol=1e-8)


def em_and_sklearn(cov: str, tied: bool) -> tuple[Tensor, GMM, FitReport, SKGaussianMixture]:
    r"""``initialize(x, "em")`` and scikit-learn's EM with its defaults (tol=1e-3,
    max_iter=100, reg_covar=1e-6) from the same k-means start: the data, the model, its
    report and scikit-learn's fit."""

    x = data(seed=1)
    torch.manual_seed(3)
    centers = kmeans(x, 3)[0]
    sk = sklearn_fit(x, start(x, centers, cov, tied), SKLEARN[cov, tied])

    gmm = make_gmm(cov=cov, tied=tied)
    torch.manual_seed(3)
    return x, gmm, gmm.initialize(x, strategy="em"), sk


@pytest.mark.parametrize("cov,tied", list(SKLEARN), ids=list(SKLEARN.values()))
def test_initialize_em_vs_sklearn(cov, tied):
    r"""``initialize(x, "em")`` against scikit-learn's EM from the same start."""

    x, gmm, _, sk = em_and_sklearn(cov, tied)

    assert sk.converged_
    assert abs(gmm().log_prob(x).mean().item() - sk.score(x.numpy())) < 1e-4
    assert np.allclose(gmm().base.mean.detach().numpy(), sk.means_, atol=1e-3)


@pytest.mark.parametrize("cov,tied", list(SKLEARN), ids=list(SKLEARN.values()))
def test_em_from_current_parameters_vs_sklearn(cov, tied):
    r"""``em()`` continues from the model's parameters, whatever they are (here a
    random start moved by gradient steps): the same iterates as scikit-learn's EM
    from the same start; and ``initialize("em")`` is ``initialize("kmeans")`` then
    ``em()``."""

    x = data(seed=2)
    gmm = make_gmm(cov=cov, tied=tied)
    gmm.initialize(x, strategy="random")
    train(gmm, lambda: -gmm().log_prob(x).mean(), steps=5, lr=0.1)

    with torch.no_grad():  # the start in scikit-learn's layout, from the distribution
        d = gmm()
        if cov == "full":
            covariances = d.base.covariance_matrix.numpy()
        else:
            covariances = d.base.variance.numpy()
        if cov == "spherical":
            covariances = covariances[:, 0]
        if tied:
            covariances = covariances[0]
        init = (d.logits.softmax(-1).numpy(), d.base.mean.numpy(), None, 1 / covariances)
        if cov == "full":
            init = (*init[:3], np.linalg.inv(covariances))

    for iterations in (1, 4):
        sk = sklearn_fit(x, init, SKLEARN[cov, tied], max_iter=iterations, tol=0.0)
        model = copy.deepcopy(gmm)
        with pytest.warns(ContmixConvergenceWarning, match="raise max_iter"):
            report = model.em(x, tol=0.0, max_iter=iterations)

        assert report.iterations == len(report.lower_bounds) == sk.n_iter_ == iterations
        assert report.converged is sk.converged_ is False
        assert abs(report.lower_bounds[-1] - sk.lower_bound_) < 1e-8
        assert report.lower_bound == report.lower_bounds[-1]
        assert model.fit_report is report
        assert abs(model().log_prob(x).mean().item() - sk.score(x.numpy())) < 1e-8
        assert np.allclose(model().base.mean.detach().numpy(), sk.means_, atol=1e-8)

    gmm, reference = make_gmm(cov=cov, tied=tied), make_gmm(cov=cov, tied=tied)
    torch.manual_seed(4)
    gmm.initialize(x, strategy="kmeans")
    torch.manual_seed(4)
    reference.initialize(x, strategy="em")
    history = torch.tensor(gmm.em(x).lower_bounds)

    assert (history.diff() > -1e-12).all()  # EM never lowers the likelihood
    assert torch.allclose(gmm().log_prob(x), reference().log_prob(x), atol=1e-8)


# real data


@pytest.fixture(scope="module")
def digits_train():
    return digits()[:2]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_digits_full(digits_train, strategy):
    x, x_test = digits_train
    single = MultivariateNormal(x.double().mean(0), torch.cov(x.double().T, correction=0))

    gmm = GMM(64, components=10)
    torch.manual_seed(0)
    gmm.initialize(x, strategy=strategy)

    with torch.no_grad():
        train, test = gmm().log_prob(x), gmm().log_prob(x_test)

    assert torch.isfinite(train).all() and torch.isfinite(test).all()
    assert train.mean() > single.log_prob(x.double()).mean()


def test_digits_zuko_fails(digits_train):
    r"""Documents the motivation: zuko's own k-means++ initialization with full covariances
    fails on the digits with a Cholesky error, where contmix succeeds from the same seed."""

    x, _ = digits_train

    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        theirs = zuko.mixtures.GMM(64, components=10)
        try:
            theirs.initialize(x, strategy="kmeans++")
        except torch.linalg.LinAlgError:
            break
    else:
        pytest.skip("zuko's initialize did not fail with seeds 0, 1, 2")

    ours = GMM(64, components=10)
    torch.manual_seed(seed)
    ours.initialize(x, strategy="kmeans++")
    with torch.no_grad():
        assert torch.isfinite(ours().log_prob(x)).all()


# bad input (the others, of every model, in test_battery.py)


def test_bad_context():
    unconditional, conditional = make_gmm(), make_gmm(context=2)
    x = data()[:10]

    with unchanged(unconditional, conditional):
        # ignored, as zuko's unconditional distributions do
        c = torch.randn(10, 2, dtype=torch.float64)
        assert torch.equal(unconditional(c).log_prob(x), unconditional().log_prob(x))
        assert unconditional.bic(x, c) == unconditional.bic(x)
        with pytest.raises(ValueError, match="needs a context"):
            conditional.aic(x)
        with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
            unconditional.bic(x[:, :2])


# information criteria


def free_parameters(K: int, D: int, cov: str, tied: bool) -> int:
    leading = 1 if tied else K
    per = {"full": D * (D + 1) // 2, "diagonal": D, "spherical": 1}[cov]
    return (K - 1) + K * D + leading * per


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
def test_bic_aic(cov, tied):
    x = data()
    gmm = make_gmm(cov=cov, tied=tied)
    torch.manual_seed(0)
    gmm.initialize(x, strategy="em")

    log_lik = reference(gmm).log_prob(x).sum().item()
    P, N = free_parameters(3, 4, cov, tied), len(x)

    with torch.no_grad():
        assert math.isclose(gmm.bic(x).item(), -2 * log_lik + P * math.log(N), rel_tol=1e-9)
        assert math.isclose(gmm.aic(x).item(), -2 * log_lik + 2 * P, rel_tol=1e-9)


@pytest.mark.parametrize("cov,tied", list(SKLEARN), ids=list(SKLEARN.values()))
def test_bic_aic_vs_sklearn(cov, tied):
    x = data()
    sk = SKGaussianMixture(3, covariance_type=SKLEARN[cov, tied], random_state=0)
    sk.fit(x.numpy())

    gmm = make_gmm(cov=cov, tied=tied)
    load_natural(gmm, sk.weights_, sk.means_, sk.covariances_)

    with torch.no_grad():
        assert math.isclose(gmm.bic(x).item(), sk.bic(x.numpy()), rel_tol=1e-9)
        assert math.isclose(gmm.aic(x).item(), sk.aic(x.numpy()), rel_tol=1e-9)


def test_bic_picks_components():
    x, _ = blobs([[-6, 0], [6, 0], [0, 8]], 150, 1.0, seed=4)
    bic = []

    for K in range(1, 6):
        gmm = make_gmm(D=2, K=K)
        torch.manual_seed(0)
        gmm.initialize(x, strategy="em")
        with torch.no_grad():
            bic.append(gmm.bic(x).item())

    assert np.argmin(bic) + 1 == 3


# far from the origin, restarts, generators, no graph


def grid_blobs(shift: float = 0.0) -> Tensor:
    r"""Three 4-D blobs on a grid of 2^-8 (float32), so that the data shifted by up to
    2^13 is exact in float32 and only the computation differs."""

    x = data(n=200, seed=5)
    return (torch.round(256 * x) / 256 + shift).float()


@pytest.mark.parametrize("strategy", ["kmeans", "kmeans++", "em"])
@pytest.mark.parametrize("shift", [8192.0, -4096.0])
def test_initialize_far_from_origin_float32(strategy, shift):
    r"""The same data far from the origin gets the same fit: the same log-likelihood per
    sample (float64 evaluation) within 1e-4 nats. The clusters were assigned with
    distances expanded around the origin: 5 to 17 nats per sample were lost."""

    expected, actual = GMM(4, components=3), GMM(4, components=3)
    expected.initialize(grid_blobs(), strategy, generator=torch.Generator().manual_seed(0))
    actual.initialize(grid_blobs(shift), strategy, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        a = actual.double()().log_prob(grid_blobs(shift).double()).mean()
        b = expected.double()().log_prob(grid_blobs().double()).mean()
    assert abs(a - b) < 1e-4


def test_generator_reproducible_and_global_state_untouched():
    x = data()
    models = [GMM(4, components=3) for _ in range(3)]
    state = torch.get_rng_state()

    for model, seed in zip(models, (0, 0, 1), strict=True):
        model.initialize(x.float(), "em", n_init=2, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(torch.get_rng_state(), state)
    first, second, third = ([p.detach() for p in m.parameters()] for m in models)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, c) for a, c in zip(first, third, strict=True))


@pytest.mark.parametrize("strategy", ["random", "kmeans++", "em"])
def test_n_init_keeps_the_best(strategy):
    r"""The restarts of ``n_init=4`` are 4 single fits from the same generator stream;
    the one of the highest log-likelihood is kept (for ``"em"``, the one of the highest
    log-likelihood at its last E-step, which is within tol of its final one)."""

    x, _ = blobs([[0, 0], [4, 0], [0, 4], [4, 4], [2, 2]], 60, 0.7, seed=3)
    generator = torch.Generator().manual_seed(0)
    singles = []
    for _ in range(4):
        gmm = make_gmm(D=2, K=6)
        gmm.initialize(x, strategy, generator=generator)
        singles.append(gmm().log_prob(x).mean().item())

    gmm = make_gmm(D=2, K=6)
    gmm.initialize(x, strategy, n_init=4, generator=torch.Generator().manual_seed(0))
    best = gmm().log_prob(x).mean().item()

    assert max(singles) - min(singles) > 1e-3  # the restarts differ
    assert best == pytest.approx(max(singles), abs=1e-3 if strategy == "em" else 1e-10)


def test_separated_clusters_as_often_as_sklearn():
    r"""A small version of ``benchmarks/init_quality.py``: 8 clusters in 8 dimensions
    (centres 4 randn, 3000 samples, unit noise), 10 seeds; ``initialize("em")`` reaches
    the best optimum (of all fits and of EM from the true clusters, within 1e-3 nats
    per sample) about as often as scikit-learn's GaussianMixture with its defaults (on
    50 fits of this case: contmix 47, scikit-learn 48), and with ``n_init=2`` at least
    as often. Both run k-means, from greedy k-means++ seeds, then EM."""

    hits = {"contmix": 0, "contmix n_init=2": 0, "scikit-learn": 0}

    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        centers = 4 * torch.randn(8, 8, generator=g)
        labels = torch.randint(8, (3000,), generator=g)
        x = centers[labels] + torch.randn(3000, 8, generator=g)

        scores = {}
        for name, n_init in (("contmix", 1), ("contmix n_init=2", 2)):
            gmm = GMM(8, components=8)
            gmm.initialize(x, "em", n_init=n_init, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                scores[name] = gmm.double()().log_prob(x.double()).mean().item()
        X = x.double().numpy()
        scores["scikit-learn"] = SKGaussianMixture(8, random_state=seed).fit(X).score(X)
        resp = torch.nn.functional.one_hot(labels, 8).double()
        oracle = fit_gmm(x.double(), *gmm_m_step(x.double(), resp)).history[-1].item()

        best = max(oracle, *scores.values())
        for name, value in scores.items():
            hits[name] += value > best - 1e-3

    assert hits["contmix"] >= 8
    assert hits["contmix n_init=2"] >= hits["scikit-learn"] >= 8


def test_em_builds_no_graph():
    r"""``em()`` ran outside ``torch.no_grad`` while the parameters require gradients:
    its history required grad and the iterations were recorded (15 times the memory)."""

    x = data().float()
    gmm = GMM(4, components=3)
    gmm.initialize(x, "kmeans")
    report = gmm.em(x, max_iter=5)

    assert all(isinstance(value, float) for value in report.lower_bounds)  # no tensors
    assert all(p.is_leaf and p.grad_fn is None and p.requires_grad for p in gmm.parameters())

    start = [p.detach().requires_grad_() for p in gmm._moments()]
    x.requires_grad_()
    assert not any(t.requires_grad for t in fit_gmm(x, *start, max_iter=3)[:4])
    assert not any(t.requires_grad for t in gmm_m_step(x, torch.ones(len(x), 1)))
    gmm.initialize(x, "em")
    assert all(p.is_leaf and p.grad_fn is None for p in gmm.parameters())


@pytest.mark.parametrize("cov", COV_TYPES)
def test_degenerate_fit_says_why(cov):
    r"""A fit that cannot continue raises a ValueError in contmix's words that names the
    components, the cause and the fix (not torch's LinAlgError, not a NaN density), and
    the model is unchanged: squares that overflow float64, and zero covariances."""

    x = data()
    gmm = make_gmm(cov=cov)

    with unchanged(gmm), pytest.raises(ValueError, match=r"components \[0, 1, 2\].*standardize x"):
        gmm.initialize(1e160 * x, "em")

    shape = {"full": (3, 4, 4), "diagonal": (3, 4), "spherical": (3, 1)}[cov]
    zeros = torch.zeros(shape, dtype=x.dtype)
    ones = torch.ones_like(zeros) if cov != "full" else torch.eye(4, dtype=x.dtype).repeat(3, 1, 1)
    start = torch.stack((ones[0], zeros[1], ones[2]))
    with pytest.raises(ValueError, match=r"component \[1\] is singular.*raise reg"):
        fit_gmm(x, torch.zeros(3, dtype=x.dtype), x[:3], start, cov)


# fit reports, warnings, progress, posteriors


@pytest.mark.parametrize("cov,tied", list(SKLEARN), ids=list(SKLEARN.values()))
def test_report_of_em_vs_sklearn(cov, tied):
    r"""The report of ``initialize(x, "em")`` is scikit-learn's ``converged_``,
    ``n_iter_`` and ``lower_bound_`` of EM from the same k-means start."""

    _, gmm, report, sk = em_and_sklearn(cov, tied)

    assert isinstance(report, FitReport) and gmm.fit_report is report
    assert report.strategy == "em" and (report.restart, report.n_init) == (0, 1)
    assert report.converged is sk.converged_ is True
    assert report.iterations == len(report.lower_bounds) == sk.n_iter_
    assert abs(report.lower_bound - sk.lower_bound_) < 1e-6
    assert report.lower_bound == report.lower_bounds[-1]


@pytest.mark.parametrize("strategy", ["random", "kmeans", "kmeans++"])
def test_report_without_em(strategy):
    r"""A start without EM: no iterations, and the lower bound is the mean
    log-likelihood of the fitted mixture."""

    x = data()
    gmm = make_gmm()
    report = gmm.initialize(x, strategy, generator=torch.Generator().manual_seed(0))

    assert report.strategy == strategy and report.converged
    assert report.iterations == 0 and report.lower_bounds == ()
    with torch.no_grad():
        assert report.lower_bound == pytest.approx(gmm().log_prob(x).mean().item(), abs=1e-6)


def test_report_records_the_restart_that_won():
    x, _ = blobs([[-6, 0], [6, 0], [0, 8], [0, -8]], 50, 1.5, seed=0)
    generator = torch.Generator().manual_seed(5)
    singles = [make_gmm(D=2, K=6).initialize(x, "em", generator=generator) for _ in range(4)]
    bounds = [report.lower_bound for report in singles]

    gmm = make_gmm(D=2, K=6)
    report = gmm.initialize(x, "em", n_init=4, generator=torch.Generator().manual_seed(5))

    assert max(bounds) - min(bounds) > 1e-3  # the restarts differ
    assert report.n_init == 4 and report.restart == int(np.argmax(bounds))
    assert report.lower_bounds == singles[report.restart].lower_bounds


def test_em_stopped_at_max_iter_warns():
    x = data()
    gmm = make_gmm()
    with pytest.warns(ContmixConvergenceWarning, match=r"max_iter=2\).*raise max_iter.*tol"):
        report = gmm.initialize(x, "em", max_iter=2, tol=1e-12)
    assert not report.converged and report.iterations == 2

    with pytest.warns(ContmixConvergenceWarning):
        assert not gmm.em(x, max_iter=1).converged
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContmixConvergenceWarning)
        assert gmm.em(x, tol=1e-3, max_iter=500).converged


def test_progress_bars(capsys, monkeypatch):
    r"""``progress=True`` shows bars for the restarts, k-means and EM, the lower bound
    of each EM iteration in the postfix; ``False`` and ``None`` (not a terminal) none."""

    bars = []

    class Recording(contmix.report.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.what, self.shown, self.postfixes = kwargs["desc"], not self.disable, []
            bars.append(self)

        def set_postfix(self, *args, **kwargs):
            self.postfixes.append(kwargs.get("lower_bound"))
            super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(contmix.report, "tqdm", Recording)
    x = data()
    gmm = make_gmm()
    report = gmm.initialize(x, "em", n_init=2, progress=True)

    shown = {bar.what for bar in bars if bar.shown}
    assert shown == {"restarts", "k-means", "EM"}  # and no bar for one k-means restart
    kept = [bar for bar in bars if bar.what == "EM"][report.restart]
    shown = [float(value) for value in kept.postfixes]
    assert shown == pytest.approx(report.lower_bounds, rel=1e-5)
    assert "restarts" in capsys.readouterr().err

    bars.clear()
    gmm.em(x, progress=False)
    gmm.initialize(x, "em")  # None: not a terminal here, so quiet
    assert bars and not any(bar.shown for bar in bars)
    assert capsys.readouterr().err == ""


def test_bad_input_after_a_fit_changes_nothing():
    r"""Neither the parameters nor the fit report (the bad input of every model, before a
    fit, in test_battery.py)."""

    x = data()
    gmm = make_gmm()
    gmm.initialize(x, "kmeans")
    report = gmm.fit_report

    with unchanged(gmm):
        with pytest.raises(ValueError, match="below"):
            gmm.em(1e-9 * x)
        with pytest.raises(TypeError, match="progress must be"):
            gmm.initialize(x, "em", progress="yes")
        with pytest.raises(ValueError, match="tol must be"):
            gmm.em(x, tol=-1.0)
        with pytest.raises(ValueError, match="NaN"):
            gmm.initialize(x * float("nan"))
    assert gmm.fit_report is report


@pytest.mark.parametrize("cov,tied", list(SKLEARN), ids=list(SKLEARN.values()))
def test_predict_proba_vs_sklearn(cov, tied):
    x = data()
    sk = sklearn_fit(x, start(x, kmeans(x, 3)[0], cov, tied), SKLEARN[cov, tied])
    gmm = make_gmm(cov=cov, tied=tied)
    load_natural(gmm, sk.weights_, sk.means_, sk.covariances_)

    with torch.no_grad():
        proba = gmm.predict_proba(x)
        assert torch.allclose(proba.sum(dim=-1), torch.ones(len(x), dtype=x.dtype))
        assert torch.allclose(proba, gmm().posterior(x).exp())
        assert np.allclose(proba.numpy(), sk.predict_proba(x.numpy()), atol=1e-8)
        assert np.array_equal(gmm.predict(x).numpy(), sk.predict(x.numpy()))


def test_predict_proba_conditional():
    gmm = make_gmm(context=2)
    x, c = data()[:10], torch.randn(10, 2, dtype=torch.float64)
    proba = gmm.predict_proba(x, c)
    assert proba.shape == (10, 3)
    assert torch.allclose(proba.sum(dim=-1), torch.ones(10, dtype=x.dtype))
    assert torch.equal(gmm.predict(x, c), proba.argmax(dim=-1))


@pytest.mark.parametrize("cov,tied", list(SKLEARN), ids=list(SKLEARN.values()))
def test_free_parameters_vs_sklearn(cov, tied):
    x = data()
    sk = sklearn_fit(x, start(x, kmeans(x, 3)[0], cov, tied), SKLEARN[cov, tied], max_iter=1)
    assert make_gmm(cov=cov, tied=tied).free_parameters() == sk._n_parameters()
