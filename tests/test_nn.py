r"""Tests of the dynamics networks (``contmix.nn``): the MLP of vectors and the CNN of
images."""

import pytest
import torch

from torch.autograd import gradcheck

from contmix.nn import ConvDynamics, Dynamics


def test_dynamics_copies_match_loop():
    torch.manual_seed(0)
    f = Dynamics(state=4, context=2, hidden_features=(8,), activation="tanh", copies=3)
    y = torch.randn(5, 3, 6)
    out = f(torch.tensor(0.3), y)

    for k in range(3):
        g = Dynamics(state=4, context=2, hidden_features=(8,), activation="tanh")
        with torch.no_grad():
            for p, q in zip(g.parameters(), f.parameters(), strict=True):
                p.copy_(q[k])
        assert torch.allclose(out[:, k], g(torch.tensor(0.3), y[:, k]), atol=1e-6)

    assert (out[..., 4:] == 0).all()  # the context has zero derivative


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
