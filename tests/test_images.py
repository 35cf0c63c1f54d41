r"""Tests for image-shaped CPMMs: the state in image shape and CNN dynamics."""

import pytest
import torch

from torch.autograd import gradcheck

from contmix import CPMM, HierarchicalCPMM
from contmix.mixtures.state import StateLayout
from contmix.nn import ConvDynamics

SHAPE = (2, 5, 6)  # (C, H, W)


def test_layout_image_channels():
    C, H, W = SHAPE
    layout = StateLayout(features=C * H * W, rank=3, augmented=4 * H * W, shape=SHAPE)
    assert layout.channels == (3 + 2) * C + 4

    h = torch.randn(7, layout.size)
    image, state = layout.image(h), layout.unpack(h)

    # the means and log-diagonals are images in the features' own (C, H, W) order
    assert torch.equal(image[:, :C], state.loc.unflatten(-1, SHAPE))
    assert torch.equal(image[:, 4 * C : 5 * C], state.log_diag.unflatten(-1, SHAPE))
    # each column of the loadings is an image
    for r in range(3):
        column = state.factor[..., r].unflatten(-1, SHAPE)
        assert torch.equal(image[:, (1 + r) * C : (2 + r) * C], column)
    assert torch.equal(image[:, 5 * C :].flatten(1), state.alpha)


@pytest.mark.parametrize(
    "shape, augmented, weights, match",
    [
        ((2, 5), 30, False, "C, H, W"),
        ((2, 5, 6), 31, False, "multiple"),
        (SHAPE, 30, True, "weights"),
    ],
)
def test_layout_image_errors(shape, augmented, weights, match):
    with pytest.raises(ValueError, match=match):
        StateLayout(features=60, rank=1, augmented=augmented, weights=weights, shape=shape)


def test_conv_dynamics_are_local_in_image_shape():
    # three 3x3 convolutions see 3 pixels away: the derivative at a pixel depends on the
    # state within that distance only, in every channel, where the pixels are laid out
    # as in layout.image
    torch.manual_seed(0)
    f = ConvDynamics(shape=(3, 9, 9), hidden_channels=(8, 8)).double()
    y = torch.randn(3 * 81, dtype=torch.float64, requires_grad=True)

    out = f(torch.tensor(0.2), y).unflatten(-1, (3, 9, 9))
    (grad,) = torch.autograd.grad(out[1, 4, 1], y)
    grad = grad.unflatten(-1, (3, 9, 9)).abs().sum(dim=0)

    rows, cols = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    near = ((rows - 4).abs() <= 3) & ((cols - 1).abs() <= 3)
    assert (grad[~near] == 0).all()
    assert (grad[near] > 0).all()


def test_conv_dynamics_time_and_context_channels():
    torch.manual_seed(0)
    f = ConvDynamics(shape=(2, 4, 4), context=3, hidden_channels=(8,))
    y = torch.randn(5, 32 + 3)
    out = f(torch.tensor(0.3), y)

    assert out.shape == (5, 35)
    assert (out[:, 32:] == 0).all()  # the context has zero derivative
    assert not torch.allclose(out, f(torch.tensor(0.7), y))  # t enters explicitly
    y2 = torch.cat((y[:, :32], torch.randn(5, 3)), dim=-1)
    assert not torch.allclose(out[:, :32], f(torch.tensor(0.3), y2)[:, :32])


def test_conv_dynamics_copies_match_loop():
    torch.manual_seed(0)
    f = ConvDynamics(shape=(2, 3, 3), context=1, hidden_channels=(4,), copies=3)
    y = torch.randn(5, 3, 19)
    out = f(torch.tensor(0.3), y)

    for k in range(3):
        g = ConvDynamics(shape=(2, 3, 3), context=1, hidden_channels=(4,))
        with torch.no_grad():
            for p, q in zip(g.parameters(), f.parameters(), strict=True):
                p.copy_(q.unflatten(0, (3, -1))[k])
        assert torch.allclose(out[:, k], g(torch.tensor(0.3), y[:, k]), atol=1e-6)


def test_conv_dynamics_gradcheck():
    torch.manual_seed(0)
    f = ConvDynamics(shape=(2, 3, 3), context=1, hidden_channels=(4,), activation="tanh")
    f = f.double()
    y = torch.randn(2, 19, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda y: f(torch.tensor(0.5), y), (y,))


def test_conv_dynamics_errors():
    with pytest.raises(ValueError, match="odd"):
        ConvDynamics((2, 3, 3), kernel_size=2)
    with pytest.raises(ValueError, match="activation"):
        ConvDynamics((2, 3, 3), activation="relu")


def images(n: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, *SHAPE).flatten(1)


def test_image_cpmm_trains_and_extracts():
    x = images()
    model = CPMM(SHAPE, components=4, rank=2, hidden_features=(8, 8))
    assert isinstance(model.dynamics, ConvDynamics)
    assert model.features == 60 and model.layout.channels == 4 * 2 + 16

    model.initialize(x, steps=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = -model().log_prob(x).mean()
    for _ in range(5):
        loss = -model().log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
        optimizer.step()

    model.eval()
    after = -model().log_prob(x).mean()
    assert after < before

    # the same parameters through another code path (copies against views of the
    # states): equal to float32 rounding, 1e-5 relative of log p ~ -85 in 60 dimensions
    mfa = model.extract()
    with torch.no_grad():
        assert torch.allclose(mfa().log_prob(x), model().log_prob(x), rtol=1e-5, atol=1e-5)


def test_image_hierarchical_cpmm_separate_and_context():
    x = images()
    model = HierarchicalCPMM(
        SHAPE, trajectories=3, components=4, hidden_features=(4,), separate=True
    )
    model.initialize(x, steps=0)
    model.eval()
    assert model.dynamics.copies == 3

    # the extracted model's labels are the argmax of the model's joint log-densities,
    # but at float32 near-ties (another code path), where either label is right
    with torch.no_grad():
        joint, labels = model().joint(x), model.extract().predict(x)
    top = joint.topk(2, dim=-1).values
    margin = 2e-5 * (1 + top[:, 0].abs())
    chosen = joint.gather(-1, labels[:, None]).squeeze(-1)
    assert (chosen >= top[:, 0] - margin).all()
    assert (top[:, 0] - top[:, 1] > margin).float().mean() > 0.9

    conditional = CPMM(SHAPE, context=2, components=3, hidden_features=(4,))
    c = torch.randn(64, 2)
    assert conditional(c).log_prob(x).shape == (64,)
    assert conditional.extract(c=c[0])().log_prob(x).shape == (64,)


def test_image_shape_errors():
    with pytest.raises(ValueError, match="C, H, W"):
        CPMM((8, 8), components=3)
    with pytest.raises(ValueError, match="weights"):
        CPMM(SHAPE, components=3, learn_weights=True)
    with pytest.raises(ValueError, match="60"):  # images must be flattened
        CPMM(SHAPE, components=3, hidden_features=(4,)).initialize(torch.randn(20, *SHAPE))
