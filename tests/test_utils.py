r"""Tests for contmix.utils: input checks and the jittered Cholesky factorization."""

import pytest
import torch

from contmix.utils import check_context, check_samples, cholesky


def test_check_samples_valid():
    assert check_samples(torch.randn(10, 3), features=3, minimum=10) is None
    assert check_samples(torch.randn(4, 2, dtype=torch.float64), 2, 4, torch.zeros(1)) is None


@pytest.mark.parametrize(
    "x,error,match",
    [
        ([[0.0, 1.0]], TypeError, "must be a torch.Tensor, got list"),
        (torch.randn(10, 3), ValueError, r"shape \(N, 2\), got \(10, 3\)"),
        (torch.randn(10), ValueError, r"shape \(N, 2\), got \(10,\)"),
        (torch.randn(5, 10, 2), ValueError, r"shape \(N, 2\), got \(5, 10, 2\)"),
        (torch.ones(10, 2, dtype=torch.long), TypeError, r"float32 or float64.*x\.float\(\)"),
        (torch.ones(10, 2, dtype=torch.float16), TypeError, "float32 or float64"),
        (torch.ones(10, 2, dtype=torch.bool), TypeError, "float32 or float64"),
        (torch.randn(2, 2), ValueError, "2 samples but at least 3"),
    ],
    ids=["list", "features", "vector", "3d", "long", "half", "bool", "few"],
)
def test_check_samples_errors(x, error, match):
    with pytest.raises(error, match=match):
        check_samples(x, features=2, minimum=3)


def test_check_samples_not_finite():
    x = torch.randn(10, 2)
    x[1, 0], x[4, 1], x[4, 0] = float("nan"), float("inf"), -float("inf")

    with pytest.raises(ValueError, match=r"NaN or Inf in 2 rows \(first: \[1, 4\]\)"):
        check_samples(x, features=2)


def test_check_samples_device():
    reference = torch.empty(1, device="meta")

    with pytest.raises(ValueError, match="x is on cpu but the model is on meta"):
        check_samples(torch.randn(10, 2), features=2, reference=reference)


def test_check_context():
    assert check_context(None, 0) is None
    c = torch.randn(4, 5, 3)
    assert check_context(c, 3) is c and check_context(c[0, 0], 3) is not None
    assert check_context(c, 0, ignore=True) is None  # ignored, as zuko's unconditional ones

    with pytest.raises(ValueError, match="no context"):
        check_context(torch.randn(4, 3), 0)
    with pytest.raises(ValueError, match=r"needs a context c with shape \(\*, 3\)"):
        check_context(None, 3)
    with pytest.raises(ValueError, match=r"shape \(\*, 3\), got \(4, 2\)"):
        check_context(torch.randn(4, 2), 3)


def spd(*batch: int, D: int = 4, seed: int = 0) -> torch.Tensor:
    A = torch.randn(*batch, D, D, generator=torch.Generator().manual_seed(seed))
    return (A @ A.mT + 0.1 * torch.eye(D)).double()


def test_cholesky_definite():
    r"""A positive definite matrix comes back exactly as torch.linalg.cholesky's."""

    cov = spd(5, 3)
    assert torch.equal(cholesky(cov), torch.linalg.cholesky(cov))


def ladder(cov: torch.Tensor) -> float:
    r"""The smallest jitter in :math:`\{0, 10^{-6}, \dots, 10^{1}\} \bar{\sigma}^2`
    that makes torch's Cholesky succeed, by brute force."""

    scale = cov.diagonal().mean().item()
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    for jitter in [0.0] + [10.0**i * scale for i in range(-6, 2)]:
        if torch.linalg.cholesky_ex(cov + jitter * eye).info == 0:
            return jitter
    raise AssertionError("no jitter works")


def test_cholesky_jitter_only_where_needed():
    cov = spd(4, seed=1)
    u = torch.randn(4, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cov[2] = u @ u.mT  # rank one
    cov[3] = torch.ones(4, 4, dtype=torch.float64)  # rank one, constant data

    L = cholesky(cov)
    # the factors of the definite matrices by the same call on the same batch, so that
    # exact equality (no jitter at all) holds whatever LAPACK kernel factors them
    definite = torch.linalg.cholesky_ex(cov).L[:2]

    assert torch.equal(L[:2], definite)
    for i in (2, 3):
        jitter = ladder(cov[i])
        assert jitter > 0
        expected = cov[i] + jitter * torch.eye(4, dtype=torch.float64)
        assert torch.allclose(L[i] @ L[i].mT, expected, rtol=0, atol=1e-12)
        assert torch.equal(L[i], L[i].tril())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_nan(dtype):
    cov = torch.eye(3, dtype=dtype).repeat(2, 1, 1)
    cov[1, 0, 0] = float("nan")

    with pytest.raises(ValueError, match="non-finite variance"):
        cholesky(cov)


def test_cholesky_indefinite():
    cov = torch.tensor([[1.0, 0.0], [0.0, -5.0]], dtype=torch.float64)

    with pytest.raises(ValueError, match="negative"):
        cholesky(cov)

    cov = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)

    with pytest.raises(ValueError, match="not positive definite"):
        cholesky(cov)


def test_cholesky_zero():
    with pytest.raises(ValueError, match="zero, negative or non-finite variance"):
        cholesky(torch.zeros(2, 3, 3, dtype=torch.float64))
