import math

import pytest
import torch

from torch.distributions import Normal

from contmix.transforms import LogitTransform, dequantize, dequantize_logit, logit_bits_per_dim


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1e-6])
def test_logit_inverse_and_ladj(alpha):
    t = LogitTransform(alpha)
    y = torch.rand(100, dtype=torch.float64).clamp(1e-3, 1 - 1e-3).requires_grad_()
    x = t(y)

    assert torch.allclose(t.inv(x), y, atol=1e-12)

    (grad,) = torch.autograd.grad(x.sum(), y)
    assert torch.allclose(t.log_abs_det_jacobian(y, x), grad.log(), atol=1e-10)


def test_logit_changes_density_consistently():
    # p_Y(y) = p_Z(f(y)) |f'(y)| integrates to the mass of Z on f([0, 1])
    t = LogitTransform(0.05)
    z = torch.distributions.Normal(0.3, 1.5)
    y = torch.linspace(0, 1, 200001, dtype=torch.float64)
    log_p = z.log_prob(t(y)) + t.log_abs_det_jacobian(y, t(y))

    bounds = t(torch.tensor([0.0, 1.0], dtype=torch.float64))
    mass = (z.cdf(bounds[1]) - z.cdf(bounds[0])).item()

    assert mass < 0.95
    assert torch.trapezoid(log_p.exp(), y).item() == pytest.approx(mass, abs=1e-6)


def test_logit_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(0.5)


def test_dequantize_bins():
    v = torch.randint(0, 17, (10000,))
    y = dequantize(v, levels=17, generator=torch.Generator().manual_seed(0))

    assert y.dtype == torch.get_default_dtype()
    assert torch.equal((y * 17).floor().long(), v)
    # uniform within each bin: mean offset one half
    assert (y * 17 - v).mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("alpha", [0.05, 1e-6])
def test_dequantize_logit_round_trip(alpha):
    v = torch.randint(0, 256, (50, 784), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    x = dequantize_logit(v, alpha=alpha, generator=generator, dtype=torch.float64)

    assert x.shape == v.shape and x.dtype == torch.float64 and x.isfinite().all()
    assert torch.equal((LogitTransform(alpha).inv(x) * 256).floor().to(torch.uint8), v)

    # the noise of dequantize, then the transform
    y = dequantize(v.double(), 256, torch.Generator().manual_seed(0))
    assert torch.allclose(x, torch.logit(alpha + (1 - 2 * alpha) * y), rtol=0, atol=1e-12)
    assert dequantize_logit(v[:2], alpha=alpha).dtype == torch.get_default_dtype()


def test_dequantize_logit_bad_levels():
    with pytest.raises(ValueError, match=r"\[0, 256\), got values from 0 to 300"):
        dequantize_logit(torch.tensor([0, 300]))
    with pytest.raises(ValueError, match=r"levels=\.\.\."):
        dequantize_logit(torch.tensor([-1, 3]), levels=17)


@pytest.mark.parametrize("alpha", [0.05, 1e-6])
@pytest.mark.parametrize("levels", [17, 256])
def test_logit_bits_per_dim_uniform(alpha, levels):
    # the image in logit space of the uniform density on [0, 1]^D: s = sigmoid(x) is
    # uniform on (alpha, 1 - alpha), p(x) = s (1 - s) / (1 - 2 alpha); log2(L) bits/dim
    v = torch.randint(0, levels, (20, 64))
    x = dequantize_logit(v, levels, alpha, dtype=torch.float64)
    s = torch.sigmoid(x)
    log_prob = (s * (1 - s) / (1 - 2 * alpha)).log().sum(dim=-1)

    bpd = logit_bits_per_dim(log_prob, x, levels, alpha)
    assert bpd.shape == (20,) and bpd.dtype == torch.float64
    assert torch.allclose(bpd, torch.tensor(math.log2(levels), dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.05, 1e-6])
def test_logit_bits_per_dim_jacobian(alpha):
    # a standard Gaussian in logit space; the log-determinant of the map y -> x from
    # torch.autograd.functional.jacobian, in float64
    def transform(y):
        return torch.logit(alpha + (1 - 2 * alpha) * y)

    y = dequantize(torch.randint(0, 256, (4, 6)).double(), 256)
    x = transform(y)
    log_prob = Normal(0.0, 1.0).log_prob(x).sum(dim=-1)

    for i in range(4):
        jacobian = torch.autograd.functional.jacobian(transform, y[i])
        log_py = log_prob[i] + torch.linalg.slogdet(jacobian).logabsdet
        reference = (-log_py + 6 * math.log(256)) / (6 * math.log(2))
        assert logit_bits_per_dim(log_prob[i], x[i], alpha=alpha).item() == pytest.approx(
            reference.item(), rel=1e-12
        )


@pytest.mark.parametrize("v", [0, 37, 128, 255])
def test_logit_bits_per_dim_bounds_the_levels(v):
    # one pixel, a Gaussian N(0.5, 2^2) in logit space: the mass of its bin, exactly, is
    # Phi(f((v + 1) / L)) - Phi(f(v / L)); the average of bits/dim over the noise (the
    # midpoint rule over u) bounds -log2 P(v) from above, and closely for a smooth density
    alpha, levels = 0.05, 256
    model, t = Normal(0.5, 2.0), LogitTransform(alpha)
    edges = torch.tensor([v / levels, (v + 1) / levels], dtype=torch.float64)
    exact = -math.log2((model.cdf(t(edges[1])) - model.cdf(t(edges[0]))).item())

    u = (torch.arange(10000, dtype=torch.float64) + 0.5) / 10000
    x = t((v + u[:, None]) / levels)
    bpd = logit_bits_per_dim(model.log_prob(x).squeeze(-1), x, levels, alpha).mean().item()

    assert -1e-9 < bpd - exact < 1e-4


def test_logit_bits_per_dim_shapes():
    x = torch.randn(2, 3, 5)
    log_prob = torch.randn(2, 3)

    bpd = logit_bits_per_dim(log_prob, x)
    assert bpd.shape == (2, 3) and bpd.dtype == torch.float32

    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(3, 5\)"):
        logit_bits_per_dim(log_prob, x[0])
