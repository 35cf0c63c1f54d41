import pytest
import torch

from contmix.transforms import LogitTransform, dequantize


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
