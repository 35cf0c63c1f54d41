r"""Tests of the layout of the ODE state of the continuous mixtures
(``contmix.mixtures.state``)."""

import pytest
import torch

from contmix.mixtures.state import StateLayout, inverse_soft_clip, soft_clip

SHAPE = (2, 5, 6)  # (C, H, W) of the state in image shape


@pytest.mark.parametrize("weights", [False, True])
def test_layout_round_trip(weights):
    layout = StateLayout(features=3, rank=2, augmented=5, weights=weights)
    assert layout.size == 3 + 6 + 3 + weights + 5
    assert layout.mixture == layout.size - 5

    h = torch.randn(4, 7, layout.size)
    assert torch.equal(layout.pack(layout.unpack(h)), h)

    state = layout.unpack(h)
    assert state.factor.shape == (4, 7, 3, 2)
    assert (state.log_weight is None) == (not weights)
    assert torch.equal(state.loc, h[..., :3])
    assert torch.equal(state.factor[..., 1, 0], h[..., 3 + 1])  # column-major vec(A)
    assert torch.equal(state.factor[..., 0, 1], h[..., 3 + 3])
    assert torch.equal(state.alpha, h[..., -5:])

    again = layout.unpack(layout.pack(state))
    for a, b in zip(again, state, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)

    # the named slices tile the state exactly once
    covered = torch.zeros(layout.size, dtype=torch.long)
    for s in layout.slices.values():
        covered[s] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("weights", [False, True])
def test_layout_spherical(weights):
    layout = StateLayout(features=3, rank=2, augmented=5, weights=weights, spherical=True)
    assert layout.size == 3 + 6 + 1 + weights + 5
    h = torch.randn(4, 7, layout.size)
    assert torch.equal(layout.pack(layout.unpack(h)), h)
    state = layout.unpack(h)
    assert state.log_diag.shape == (4, 7, 1)
    assert torch.equal(state.log_diag[..., 0], h[..., 9])
    assert torch.equal(state.alpha, h[..., -5:])

    augmented = StateLayout.of(3, rank=2, augment=2.0, weights=weights, spherical=True)
    assert augmented.augmented == 2 * (3 + 6 + 1 + weights)
    with pytest.raises(ValueError, match="spherical"):
        StateLayout.of((1, 2, 2), rank=1, augment=1.0, spherical=True)


def test_soft_clip():
    x = torch.linspace(-20, 10, 301, dtype=torch.float64)
    y = soft_clip(x, -6.0)
    assert (y > -6.0).all()
    assert (y[1:] > y[:-1]).all()  # smooth and increasing
    assert torch.allclose(y[x > 4], x[x > 4], atol=1e-4)
    assert torch.allclose(inverse_soft_clip(y[y > -5.9], -6.0), x[y > -5.9], atol=1e-6)


# the state in image shape


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
