r"""contmix models inside zuko: as the base of a normalizing flow, and conditional."""

import pytest
import torch
import zuko

from helpers import train
from models import BASES, MODELS, build
from torch import Tensor
from zuko.flows import MaskedAutoregressiveTransform

from contmix import GMM, CWMDistribution
from contmix.distributions import GaussianMixture


def moons(n: int, seed: int) -> Tensor:
    r"""The two moons data set, generated here (no download)."""

    generator = torch.Generator().manual_seed(seed)
    t = torch.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(
        upper[:, None],
        torch.stack((t.cos(), t.sin()), dim=-1),
        torch.stack((1 - t.cos(), 0.5 - t.sin()), dim=-1),
    )
    return 2 * (x - torch.tensor([0.5, 0.25])) + 0.1 * torch.randn(n, 2, generator=generator)


def test_gmm_base_of_flow():
    torch.manual_seed(0)
    x, x_test = moons(512, seed=0), moons(512, seed=1)

    flow = zuko.lazy.Flow(
        [
            MaskedAutoregressiveTransform(2, hidden_features=(32, 32)),
            MaskedAutoregressiveTransform(2, order=[1, 0], hidden_features=(32, 32)),
        ],
        GMM(2, components=4),
    )
    flow.base.initialize(x, strategy="kmeans")
    base_before = [p.detach().clone() for p in flow.base.parameters()]

    assert isinstance(flow().base, GaussianMixture)
    with torch.no_grad():
        before = flow().log_prob(x_test).mean()
        gmm_alone = flow.base().log_prob(x_test).mean()

    train(flow, lambda: -flow().log_prob(x).mean(), steps=300, lr=3e-3)

    with torch.no_grad():
        after = flow().log_prob(x_test).mean()
        samples = flow().sample((4096,))

    assert torch.isfinite(before) and torch.isfinite(after)
    assert after > before + 0.3
    assert after > gmm_alone  # the flow on top of the GMM beats the GMM it started from
    base_after = list(flow.base.parameters())
    assert not any(torch.equal(p, q) for p, q in zip(base_after, base_before, strict=True))

    assert samples.shape == (4096, 2)
    assert torch.isfinite(samples).all()
    assert torch.allclose(samples.mean(0), x.mean(0), atol=0.15)
    assert torch.allclose(samples.std(0), x.std(0), rtol=0.1)


def regression(n: int, seed: int) -> tuple[Tensor, Tensor]:
    r"""x given c: a curve :math:`(c, \sin 2c)` with noise, c uniform in [-2, 2]."""

    generator = torch.Generator().manual_seed(seed)
    c = 4 * torch.rand(n, 1, generator=generator) - 2
    x = torch.cat((c, torch.sin(2 * c)), dim=-1) + 0.1 * torch.randn(n, 2, generator=generator)
    return x, c


def test_conditional_gmm_training():
    torch.manual_seed(0)
    x, c = regression(512, seed=0)
    x_test, c_test = regression(512, seed=1)

    gmm = GMM(2, context=1, components=3, hidden_features=(64, 64))
    gmm.initialize(x, strategy="em")

    with torch.no_grad():
        before = gmm(c_test).log_prob(x_test).mean()

    train(gmm, lambda: -gmm(c).log_prob(x).mean(), steps=200, lr=3e-3)

    grid = torch.linspace(-1.5, 1.5, 7)[:, None]
    with torch.no_grad():
        after = gmm(c_test).log_prob(x_test).mean()
        d = gmm(grid)
        samples = d.sample((2000,))

    truth = torch.cat((grid, torch.sin(2 * grid)), dim=-1)

    assert after > before + 1.0
    assert d.batch_shape == (7,)
    assert samples.shape == (2000, 7, 2)
    assert torch.allclose(d.mean, truth, atol=0.15)
    assert torch.allclose(samples.mean(0), truth, atol=0.15)


def test_conditional_flow():
    torch.manual_seed(0)
    x, c = regression(512, seed=0)
    x_test, c_test = regression(512, seed=1)

    flow = zuko.lazy.Flow(
        MaskedAutoregressiveTransform(2, context=1, hidden_features=(32, 32)),
        GMM(2, context=1, components=2, hidden_features=(32, 32)),
    )
    flow.base.initialize(x, strategy="kmeans++")

    with torch.no_grad():
        before = flow(c_test).log_prob(x_test).mean()

    train(flow, lambda: -flow(c).log_prob(x).mean(), steps=150, lr=3e-3)

    with torch.no_grad():
        after = flow(c_test).log_prob(x_test).mean()
        d = flow(c_test[:5])

    assert after > before + 1.0
    assert flow(c).log_prob(x).shape == (512,)
    assert d.sample().shape == (5, 2)
    assert d.sample((3,)).shape == (3, 5, 2)


# every model of contmix, as the base of a flow, conditional or not

D, C = 2, 3

# the registry's models, with networks of 16 hidden features
WIDE = (16,)


def transform_of(context: int, conditional_flow: bool) -> zuko.lazy.LazyTransform:
    r"""A masked autoregressive transform, conditional or not; unconditional within a
    conditional flow, it ignores the context (zuko's UnconditionalTransform)."""

    maf = MaskedAutoregressiveTransform(D, context=context, hidden_features=(16,))
    if context == 0 and conditional_flow:
        return zuko.lazy.UnconditionalTransform(maf)
    return maf


@pytest.mark.parametrize("base, transform", [(0, 0), (C, 0), (0, C), (C, C)])
@pytest.mark.parametrize("name", BASES)
def test_every_model_base_of_flow(name, base, transform):
    torch.manual_seed(0)
    x, c = regression(64, seed=0)
    c = torch.cat((c, c.square(), c.cos()), dim=-1) if base or transform else None

    maf = transform_of(transform, c is not None)
    flow = zuko.lazy.Flow(maf, MODELS[name].build(D, base, hidden=WIDE))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)

    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = -flow(c).log_prob(x).mean()
        loss.backward()
        for key, p in flow.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), key
        optimizer.step()
        losses.append(loss.detach())

    assert all(torch.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert any(p.grad.abs().sum() > 0 for p in flow.base.parameters())

    with torch.no_grad():
        d = flow(c)
        batch = () if c is None else (64,)
        samples = d.sample((3,))
        y, log_p = d.rsample_and_log_prob((3,))

    assert d.batch_shape == batch and d.event_shape == (D,)
    assert samples.shape == y.shape == (3, *batch, D)
    assert log_p.shape == (3, *batch)
    assert torch.isfinite(samples).all() and torch.isfinite(log_p).all()
    # the density of the samples by the flow's log_prob, independent of the sampling path
    assert torch.allclose(log_p, d.log_prob(y), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", BASES)
def test_unconditional_model_ignores_context(name):
    model = build(name, D, hidden=WIDE).eval()
    x, c = torch.randn(5, D), torch.randn(5, C)

    with torch.no_grad():
        ignored, plain = model(c).log_prob(x), model().log_prob(x)

    assert model(c).batch_shape == model().batch_shape == ()
    assert torch.allclose(ignored, plain)

    # within a conditional flow, as zuko's own unconditional base
    flow = zuko.lazy.Flow(transform_of(0, True), model)
    reference = zuko.lazy.Flow(transform_of(0, True), zuko.lazy.UnconditionalDistribution(model))
    reference.transform.load_state_dict(flow.transform.state_dict())
    with torch.no_grad():
        assert flow(c).batch_shape == reference(c).batch_shape == (5,)
        assert torch.allclose(flow(c).log_prob(x), reference(c).log_prob(x))


@pytest.mark.parametrize("maps", ["diagonal", "affine"])
def test_cwm_expand(maps):
    cwm = build(f"cwm-{maps}", D, C, hidden=WIDE)
    c, x = torch.randn(5, C), torch.randn(4, 5, D)
    d = cwm(c)
    e = d.expand((4, 5))

    assert isinstance(e, CWMDistribution)
    assert e.batch_shape == (4, 5) and e.event_shape == (D,)
    # the expanded distribution is the original one broadcast: the same densities
    with torch.no_grad():
        assert torch.allclose(e.log_prob(x), d.log_prob(x))
        assert torch.allclose(e.posterior(x), d.posterior(x))
    assert e.sample().shape == (4, 5, D)
    assert e.sample((2,)).shape == (2, 4, 5, D)
    assert d.expand((5,)).batch_shape == (5,)

    for bad in [(3,), (5, 4)]:
        with pytest.raises(ValueError, match=r"batch shape \(5,\) cannot be expanded to"):
            d.expand(bad)

    # an unconditional CWM expands from no batch at all
    u = MODELS["cwm-diagonal"].build(D, hidden=WIDE)()
    with torch.no_grad():
        assert torch.allclose(u.expand((4, 5)).log_prob(x), u.log_prob(x))
