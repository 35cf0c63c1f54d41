r"""Tests for contmix.em against numpy/scipy computations."""

import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from contmix.em import degenerate, fit_gmm, gaussian_mixture, gmm_log_likelihood, gmm_m_step
from contmix.report import ConvergenceWarning

COV_TYPES = ["full", "diagonal", "spherical"]
EPS = 10 * np.finfo(np.float64).eps


def np_m_step(X, R, cov: str, tied: bool, reg: float = 1e-6):
    r"""The M-step written directly: two passes, covariances around each component mean."""

    N, D = X.shape
    nk = R.sum(0) + EPS
    means = R.T @ X / nk[:, None]
    diff = X[None] - means[:, None]  # (K, N, D)
    covs = (R.T[:, :, None] * diff).transpose(0, 2, 1) @ diff / nk[:, None, None]

    if tied:
        covs = (nk[:, None, None] * covs).sum(0, keepdims=True) / nk.sum()

    if cov == "full":
        return np.log(nk / N), means, covs + reg * np.eye(D)

    variances = np.diagonal(covs, axis1=-2, axis2=-1) + reg
    if cov == "spherical":
        variances = variances.mean(-1, keepdims=True)
    return np.log(nk / N), means, variances


def np_covariances(covariances, cov: str, K: int, D: int):
    r"""Full (K, D, D) covariance matrices of any layout."""

    if cov == "full":
        full = covariances
    else:
        full = np.stack([np.diag(v) for v in np.broadcast_to(covariances, (len(covariances), D))])
    return np.broadcast_to(full, (K, D, D))


def np_e_step(X, logits, means, covariances, cov: str):
    K, D = means.shape
    full = np_covariances(covariances, cov, K, D)
    joint = np.stack(
        [
            logits[k] + scipy.stats.multivariate_normal(means[k], full[k]).logpdf(X)
            for k in range(K)
        ],
        axis=-1,
    )
    log_p = scipy.special.logsumexp(joint, axis=-1, keepdims=True)
    return log_p.mean(), np.exp(joint - log_p)


def data(seed: int = 0, n: int = 150) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.5]])
    A = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.7, 0.0], [0.2, -0.3, 0.6]])
    z = torch.randn(3 * n, 3, generator=generator)
    return (centers.repeat_interleave(n, 0) + 0.8 * z @ A.T).double()


def soft(N: int, K: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(N, K, generator=generator, dtype=torch.float64), -1)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
def test_m_step(cov, tied):
    x = data()
    resp = soft(len(x), 4)

    logits, means, covariances = gmm_m_step(x, resp, cov, tied, reg=1e-6)
    ref = np_m_step(x.numpy(), resp.numpy(), cov, tied, reg=1e-6)
    L = 1 if tied else 4

    assert logits.shape == (4,)
    assert means.shape == (4, 3)
    assert covariances.shape == {"full": (L, 3, 3), "diagonal": (L, 3), "spherical": (L, 1)}[cov]
    assert np.allclose(logits.numpy(), ref[0], rtol=0, atol=1e-12)
    assert np.allclose(means.numpy(), ref[1], rtol=0, atol=1e-10)
    assert np.allclose(covariances.numpy(), ref[2], rtol=0, atol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_m_step_empty_component(cov):
    r"""A component without responsibility gets scikit-learn's covariance, ``reg`` I."""

    x = data()
    resp = torch.zeros(len(x), 2, dtype=torch.float64)
    resp[:, 0] = 1

    _, means, covariances = gmm_m_step(x, resp, cov, reg=1e-6)
    ref = np_m_step(x.numpy(), resp.numpy(), cov, False, reg=1e-6)

    assert torch.isfinite(means).all()
    assert np.allclose(covariances[0].numpy(), ref[2][0], atol=1e-10)
    assert np.allclose(covariances[1].numpy(), ref[2][1], atol=1e-12)


def test_m_step_duplicated_points_float32():
    x = torch.tensor([[5.3, 4.7]] * 20 + [[-5.1, -3.9]] * 20)
    resp = torch.zeros(40, 2)
    resp[:20, 0], resp[20:, 1] = 1, 1

    _, _, covariances = gmm_m_step(x, resp, "full", reg=1e-6)

    assert (torch.linalg.eigvalsh(covariances) > 0).all()
    assert torch.allclose(covariances, 1e-6 * torch.eye(2), rtol=0, atol=1e-7)


def start(x: torch.Tensor, cov: str, tied: bool):
    r"""A poor start: the M-step of a random partition."""

    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(3, (len(x),), generator=generator)
    resp = torch.nn.functional.one_hot(labels, 3).to(x.dtype)
    return gmm_m_step(x, resp, cov, tied)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
def test_fit_vs_numpy(cov, tied):
    r"""Each iteration of :func:`fit_gmm` against a scipy E-step and a numpy M-step,
    including the tied diagonal and spherical cases that scikit-learn lacks."""

    x = data()
    logits, means, covariances = start(x, cov, tied)
    fit = fit_gmm(x, logits, means, covariances, cov, tied, tol=0.0, max_iter=10)

    X, params = x.numpy(), [t.numpy() for t in (logits, means, covariances)]
    history = []
    for _ in range(10):
        log_lik, resp = np_e_step(X, *params, cov)
        history.append(log_lik)
        params = np_m_step(X, resp, cov, tied)

    assert len(fit.history) == 10
    assert not fit.converged
    assert np.allclose(fit.history.numpy(), history, rtol=0, atol=1e-9)
    assert np.allclose(fit.logits.numpy(), params[0], atol=1e-9)
    assert np.allclose(fit.means.numpy(), params[1], atol=1e-8)
    assert np.allclose(fit.covariances.numpy(), params[2], atol=1e-8)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("tied", [False, True])
def test_fit_monotone(cov, tied):
    r"""EM never lowers the log-likelihood, and stops at the tolerance."""

    x = data(seed=3, n=300)
    fit = fit_gmm(x, *start(x, cov, tied), cov, tied, tol=1e-8, max_iter=300)
    steps = torch.diff(fit.history)

    assert fit.converged
    assert len(fit.history) < 300
    assert (steps >= -1e-12).all()
    assert steps[-1].abs() < 1e-8
    assert (steps[:-1].abs() >= 1e-8).all()


def test_fit_not_converged():
    x = data()
    with pytest.warns(ConvergenceWarning, match=r"EM did not converge in 3 iterations"):
        fit = fit_gmm(x, *start(x, "full", False), "full", tol=1e-12, max_iter=3)

    assert not fit.converged
    assert len(fit.history) == 3


def test_fit_converged_does_not_warn():
    x = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit = fit_gmm(x, *start(x, "full", False), "full", tol=1e-3, max_iter=1000)
    assert fit.converged
    assert fit.history.dtype == x.dtype and fit.history.device == x.device


def test_bad_tol_and_max_iter():
    x = data()
    for kwargs, match in [
        ({"tol": -1e-3}, "tol must be"),
        ({"tol": float("inf")}, "tol must be"),
        ({"tol": True}, "tol must be"),
        ({"max_iter": 0}, "max_iter must be an integer"),
        ({"max_iter": 2.0}, "max_iter must be an integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit_gmm(x, *start(x, "full", False), "full", **kwargs)
    with pytest.raises(TypeError, match="progress must be"):
        fit_gmm(x, *start(x, "full", False), "full", progress=1)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("L", [1, 3])
def test_gaussian_mixture(cov, L):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, generator=generator, dtype=torch.float64)
    means = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    if cov == "full":
        A = torch.randn(L, 4, 4, generator=generator, dtype=torch.float64)
        covariances = A @ A.mT + 0.1 * torch.eye(4, dtype=torch.float64)
    else:
        shape = (L, 4) if cov == "diagonal" else (L, 1)
        covariances = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5

    full = torch.as_tensor(np_covariances(covariances.numpy(), cov, 3, 4).copy())
    reference = MixtureSameFamily(Categorical(logits=logits), MultivariateNormal(means, full))
    x = torch.randn(10, 4, generator=generator, dtype=torch.float64)

    d = gaussian_mixture(logits, means, covariances, cov)
    assert torch.allclose(d.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_log_likelihood_vs_scipy(cov):
    x = data()
    logits, means, covariances = gmm_m_step(x, soft(len(x), 3), cov)
    ref, _ = np_e_step(x.numpy(), logits.numpy(), means.numpy(), covariances.numpy(), cov)

    assert gmm_log_likelihood(x, logits, means, covariances, cov).item() == pytest.approx(ref)
    # the value fit_gmm records for these parameters, at its first E-step
    fit = fit_gmm(x, logits, means, covariances, cov, max_iter=1)
    assert fit.history[0].item() == pytest.approx(ref, abs=1e-10)


def test_fits_build_no_graph():
    x = data().requires_grad_()
    resp = soft(len(x), 3).requires_grad_()
    params = gmm_m_step(x, resp)

    assert not any(t.requires_grad for t in params)
    assert not any(t.requires_grad for t in fit_gmm(x, *params, max_iter=2)[:4])
    assert not gmm_log_likelihood(x, *params).requires_grad


def test_degenerate_message():
    finite = torch.tensor([True, False, True])
    positive = torch.tensor([True, True, False])
    message = str(degenerate("covariance", finite, positive, "reg"))

    assert "covariance of component [1] is not finite" in message
    assert "standardize x" in message
    assert "component [2] is singular" in message and "raise reg" in message

    with pytest.raises(ValueError, match="reg must be a finite number"):
        fit_gmm(data(), torch.zeros(1), torch.zeros(1, 3), torch.eye(3)[None], reg=-1e-6)


def blobs(K: int = 12, D: int = 20, n: int = 40, spread: float = 6.0) -> torch.Tensor:
    r"""K blobs in D dimensions, ``spread`` standard deviations apart per coordinate."""

    generator = torch.Generator().manual_seed(2)
    centers = spread * torch.randn(K, D, generator=generator, dtype=torch.float64)
    z = torch.randn(K * n, D, generator=generator, dtype=torch.float64)
    return centers.repeat_interleave(n, 0) + z * torch.rand(D, generator=generator).double()


@pytest.mark.parametrize("spread", [6.0, 0.3])  # nearly hard responsibilities, then soft
@pytest.mark.parametrize("cov", COV_TYPES)
def test_fit_vs_numpy_many_components(cov, spread):
    r"""With more components than :data:`contmix.em.gmm.SPARSE` allows to skip, the sums
    of the M-step over the largest responsibilities only (separated blobs) or over all of
    them (overlapping ones) give the iterations of a numpy M-step on all of them."""

    x = blobs(spread=spread)
    K = 12
    resp = soft(len(x), K, seed=3) ** 8
    logits, means, covariances = gmm_m_step(x, resp / resp.sum(-1, keepdim=True), cov)
    fit = fit_gmm(x, logits, means, covariances, cov, tol=0.0, max_iter=5)

    X, params = x.numpy(), [t.numpy() for t in (logits, means, covariances)]
    history = []
    for _ in range(5):
        log_lik, resp = np_e_step(X, *params, cov)
        history.append(log_lik)
        params = np_m_step(X, resp, cov, False)

    hard = torch.as_tensor(resp).topk(4, dim=-1).values.sum(-1).min().item()
    assert (hard > 1 - 1e-13) == (spread > 1)  # the case that the sparse sums cover
    # the expanded quadratic form of the E-step, at variances down to 1e-4 of the blobs'
    # spread, rounds the log-likelihood to about 1e-9 of its value (dense sums alike)
    assert np.allclose(fit.history.numpy(), history, rtol=1e-8, atol=0)
    assert np.allclose(fit.means.numpy(), params[1], atol=1e-8)
    assert np.allclose(fit.covariances.numpy(), params[2], rtol=1e-7, atol=1e-10)


def test_weighted_sums_sparse_equals_dense():
    from contmix.em.sums import SPARSE, weighted_sums

    generator = torch.Generator().manual_seed(0)
    phi = torch.randn(500, 7, generator=generator, dtype=torch.float64) + 1e4  # far offset
    logits = 50 * torch.randn(500, 3 * SPARSE, generator=generator, dtype=torch.float64)
    hard = logits.softmax(-1)  # nearly hard: the sparse sums
    assert torch.allclose(weighted_sums(hard, phi), hard.T @ phi, rtol=1e-13, atol=0)

    mixed = torch.where(torch.arange(500)[:, None] % 7 == 0, (logits / 50).softmax(-1), hard)
    assert torch.allclose(weighted_sums(mixed, phi), mixed.T @ phi, rtol=1e-13, atol=0)

    for resp in ((logits / 50).softmax(-1), hard - 1e-3):  # soft; a negative weight
        assert torch.equal(weighted_sums(resp, phi), resp.T @ phi)  # the product itself


def test_pairs_only_where_most_responsibilities_are_negligible():
    r"""The pairs of the sparse sums are those of the responsibilities that are not
    negligible where they are few; where many are not (all the rows, or the rows between
    those that the subsample looks at), the sums are one dense product."""

    from contmix.em.sums import SAMPLE, kept, pairs

    generator = torch.Generator().manual_seed(0)
    logits = 200 * torch.randn(640, 24, generator=generator, dtype=torch.float64)
    hard, soft = logits.softmax(-1), (logits / 200).softmax(-1)

    rows, cols, values = pairs(hard)
    keep = kept(hard)
    assert torch.equal(torch.stack((rows, cols)), keep.nonzero().T)
    assert torch.equal(values, hard[keep])
    assert pairs(soft) is None

    sampled = torch.arange(640)[:, None] % SAMPLE == 0
    assert pairs(torch.where(sampled, soft, hard)) is None  # looks dense: dense
    assert pairs(torch.where(sampled, hard, soft)) is None  # is dense: dense


@pytest.fixture(params=["statistics", "covariance"])
def form(request, monkeypatch):
    r"""Both forms of full-covariance EM at any dimension: the sufficient statistics and
    the covariance form of :mod:`contmix.em.full` (the switch of :mod:`contmix.em.gmm`)."""

    monkeypatch.setattr(
        "contmix.em.gmm.COVARIANCE_FORM", 10**9 if request.param == "statistics" else 1
    )
    return request.param


def np_iterations(x, start, tied: bool, reg: float, n: int):
    params, history = [t.double().numpy() for t in start], []
    for _ in range(n):
        log_lik, resp = np_e_step(x.double().numpy(), *params, "full")
        history.append(log_lik)
        params = np_m_step(x.double().numpy(), resp, "full", tied, reg)
    return history, params


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("spread", [6.0, 0.3])  # nearly hard responsibilities (sparse sums), soft
def test_full_forms_vs_numpy(form, tied, spread):
    x = blobs(spread=spread)
    resp = soft(len(x), 12, seed=3) ** 8
    start = gmm_m_step(x, resp / resp.sum(-1, keepdim=True), "full", tied)
    ref = np_m_step(x.numpy(), (resp / resp.sum(-1, keepdim=True)).numpy(), "full", tied)
    for p, q in zip(start, ref, strict=True):
        assert np.allclose(p.numpy(), q, rtol=1e-10, atol=1e-10)

    fit = fit_gmm(x, *start, "full", tied, tol=0.0, max_iter=5)
    history, params = np_iterations(x, start, tied, 1e-6, 5)
    assert np.allclose(fit.history.numpy(), history, rtol=1e-8, atol=0)
    assert np.allclose(fit.means.numpy(), params[1], atol=1e-8)
    assert np.allclose(fit.covariances.numpy(), params[2], rtol=1e-7, atol=1e-10)
    ll = gmm_log_likelihood(x, *fit[:3], "full")
    assert ll.item() == pytest.approx(
        np_e_step(x.numpy(), *[t.numpy() for t in fit[:3]], "full")[0]
    )


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
def test_full_covariance_form_ill_conditioned(monkeypatch):
    r"""Offsets of 1e4 and variances near ``reg``: the covariance form (differences
    around each component's mean, triangular solves) follows numpy closely."""

    monkeypatch.setattr("contmix.em.gmm.COVARIANCE_FORM", 1)
    g = torch.Generator().manual_seed(5)
    scales = torch.logspace(-3, 0, 6, dtype=torch.float64)  # variances from 1e-6 to 1
    x = 1e4 + blobs(K=3, D=6, n=60, spread=0.5) * scales
    resp = torch.rand(len(x), 3, generator=g, dtype=torch.float64).softmax(-1)
    reg = 1e-6
    start = gmm_m_step(x, resp, "full", reg=reg)
    ref = np_m_step(x.numpy(), resp.numpy(), "full", False, reg)
    assert np.allclose(start[1].numpy(), ref[1], rtol=0, atol=1e-9)
    assert np.allclose(start[2].numpy(), ref[2], rtol=0, atol=1e-12)

    fit = fit_gmm(x, *start, "full", tol=0.0, max_iter=4, reg=reg)
    history, params = np_iterations(x, start, False, reg, 4)
    assert np.allclose(fit.history.numpy(), history, rtol=1e-9, atol=0)
    assert np.allclose(fit.means.numpy(), params[1], rtol=0, atol=1e-9)
    assert np.allclose(fit.covariances.numpy(), params[2], rtol=1e-6, atol=1e-12)


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
def test_full_covariance_form_float32_and_batches(monkeypatch):
    r"""float32 samples and an iterable of batches: float64 statistics, the same fit as
    the float64 tensor up to the rounding of the samples, parameters in float32."""

    monkeypatch.setattr("contmix.em.gmm.COVARIANCE_FORM", 1)
    x = blobs(K=4, D=5, n=50, spread=2.0)
    x32 = x.float()
    resp = soft(len(x), 4)
    start = gmm_m_step(x32.double(), resp, "full")
    expected = fit_gmm(x32.double(), *start, "full", tol=0.0, max_iter=5)

    for data in (x32, list(x32.split(37))):
        if isinstance(data, torch.Tensor):
            m_step = gmm_m_step(data, resp, "full")
        else:
            m_step = gmm_m_step(data, lambda b: resp[_rows(x32, b)], "full")
        assert all(p.dtype == torch.float32 for p in m_step)
        for p, q in zip(m_step, start, strict=True):
            torch.testing.assert_close(p.double(), q, rtol=1e-6, atol=1e-6)

        fit = fit_gmm(data, *start, "full", tol=0.0, max_iter=5)
        assert fit.means.dtype == torch.float32 and fit.history.dtype == torch.float32
        torch.testing.assert_close(fit.history.double(), expected.history, rtol=1e-6, atol=0)
        for p, q in zip(fit[:3], expected[:3], strict=True):
            torch.testing.assert_close(p.double(), q, rtol=1e-5, atol=1e-5)
        ll = gmm_log_likelihood(data, *expected[:3], "full")
        assert ll.dtype == torch.float32
        reference = gmm_log_likelihood(x32.double(), *expected[:3], "full")
        assert ll.item() == pytest.approx(reference.item(), rel=1e-6)


def _rows(x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    r"""The indices of the rows of ``batch`` in ``x``."""

    return (batch[:, None] == x[None]).all(-1).nonzero()[:, 1]


def test_full_covariance_form_degenerate(monkeypatch):
    monkeypatch.setattr("contmix.em.gmm.COVARIANCE_FORM", 1)
    x = data()
    start = torch.stack((torch.eye(3), torch.zeros(3, 3), torch.eye(3))).double()
    with pytest.raises(ValueError, match=r"component \[1\] is singular.*raise reg"):
        fit_gmm(x, torch.zeros(3, dtype=x.dtype), x[:3], start, "full")
    with pytest.raises(ValueError, match=r"not finite.*standardize x"):
        fit_gmm(1e160 * x, torch.zeros(3, dtype=x.dtype), 1e160 * x[:3], 1e320 * start, "full")


def test_full_covariance_form_is_default_in_784d():
    import contmix.em.gmm

    assert 784 >= contmix.em.gmm.COVARIANCE_FORM > 3


# EM for MFA: the sparse sums and the batched Cholesky decomposition


def np_mfa_statistics(X, R, Z):
    r"""The sums of the M-step of MFA written directly in float64: :math:`N_k`,
    :math:`\sum r z`, :math:`\sum r z z^T`, :math:`\sum r x z^T`, :math:`\sum r x`,
    :math:`\sum r x^2`."""

    return (
        R.sum(0),
        np.einsum("nk,nkr->kr", R, Z),
        np.einsum("nk,nkr,nks->krs", R, Z, Z),
        np.einsum("nk,nm,nkr->kmr", R, X, Z),
        R.T @ X,
        R.T @ X**2,
    )


@pytest.mark.parametrize("soft", [0, 7])
def test_mfa_sparse_sums_vs_numpy(soft):
    r"""The sums of the pairs of each sample with its largest responsibilities, plus the
    dense sums of the soft samples, are the sums over all components (numpy, float64),
    for nearly hard responsibilities with and without soft samples."""

    from contmix.em.factors import batch_statistics

    g = torch.Generator().manual_seed(0)
    N, K, M, R = 60, 20, 6, 2
    x = torch.randn(N, M, generator=g, dtype=torch.float64)
    loc = torch.randn(K, M, generator=g, dtype=torch.float64)
    beta = torch.randn(K, R, M, generator=g, dtype=torch.float64)
    resp = torch.eye(K, dtype=torch.float64)[torch.randint(K, (N,), generator=g)]
    resp[:5] = 0.5 * resp[:5] + 0.5 * resp[5:10]  # two components, within the kept four
    resp[10 : soft + 10] = torch.rand(soft, K, generator=g, dtype=torch.float64).softmax(-1)

    X, Rs = x.numpy(), resp.numpy()
    Z = np.einsum("krm,nkm->nkr", beta.numpy(), X[:, None] - loc.numpy()[None])
    for ours, ref in zip(
        batch_statistics(x, resp, loc, beta), np_mfa_statistics(X, Rs, Z), strict=True
    ):
        assert np.allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_mfa_cholesky_vs_numpy():
    r"""The batched Cholesky decomposition of the M-step is numpy's, and flags the
    matrices that are not positive definite (singular, indefinite, NaN)."""

    from contmix.em.mfa import _cholesky

    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 8, 5, generator=g, dtype=torch.float64)
    moments = a.mT @ a
    moments[1] = torch.outer(a[1, 0], a[1, 0])  # rank one
    moments[2, 0, 0] = -1.0
    moments[3, 2, 2] = float("nan")
    tril, positive = _cholesky(moments)

    assert positive.tolist() == [True] + [False] * 3 + [True] * 26
    ok = positive.numpy()
    assert np.allclose(tril.numpy()[ok], np.linalg.cholesky(moments.numpy()[ok]), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_mfa_sparse_matches_dense(monkeypatch, dtype):
    r"""EM for MFA with the sparse sums and the batched Cholesky decomposition fits as
    the dense sums over all components and LAPACK's Cholesky decomposition (the previous
    code): the same number of iterations, the mean log-likelihood of each within float
    tolerance, on clusters far apart in 100-D where the responsibilities are nearly hard
    (and a few samples between two clusters are soft)."""

    import contmix.em.factors as factors
    import contmix.em.mfa as mfa

    g = torch.Generator().manual_seed(0)
    K, M, R, N = 12, 100, 3, 1200
    centres = 6 * torch.randn(K, M, generator=g)
    labels = torch.arange(N) % K
    x = centres[labels] + torch.randn(N, M, generator=g) * (0.3 + torch.rand(M, generator=g))
    x[:20] = 0.5 * (centres[0] + centres[1]) + 0.1 * torch.randn(20, M, generator=g)
    x = x.to(dtype)
    start = (
        torch.full((K,), -np.log(K), dtype=dtype),
        (centres + 0.5 * torch.randn(K, M, generator=g)).to(dtype),
        0.1 * torch.randn(K, M, R, generator=g, dtype=dtype),
        torch.ones(K, M, dtype=dtype),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        new = mfa.fit_mfa(x, *start, tol=1e-6, max_iter=30)

        def lapack(moments):
            tril, info = torch.linalg.cholesky_ex(moments)
            return tril, info == 0

        monkeypatch.setattr(factors, "support", lambda resp: None)
        monkeypatch.setattr(mfa, "_cholesky", lapack)
        old = mfa.fit_mfa(x, *start, tol=1e-6, max_iter=30)

    assert len(new.history) == len(old.history) > 2
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.allclose(new.history, old.history, rtol=0, atol=tol * old.history.abs().max())
    for a, b in zip(new[:4], old[:4], strict=True):
        assert torch.allclose(a, b, rtol=1e-3 if dtype == torch.float32 else 1e-7, atol=1e-4)
