r"""contmix models inside zuko: as the base of a normalizing flow, and conditional."""

import torch
import zuko

from torch import Tensor
from zuko.flows import MaskedAutoregressiveTransform

from contmix import GMM
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


def train(model, loss, steps: int = 300, lr: float = 1e-2) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()


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
