r"""Tests for contmix.datasets (the synthetic sets)."""

import math

import torch

from contmix.datasets import spiral, two_circles


def test_two_circles():
    x, y = two_circles(4000, seed=1)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert y.bincount().tolist() == [2000, 2000]

    radius = x.norm(dim=-1)
    inner, outer = radius[y == 0], radius[y == 1]
    assert abs(outer.mean() / inner.mean() - 1.1) < 0.005  # radii differ by 10%
    assert abs(inner.std() - outer.std()) < 0.005  # similar thickness

    # broken: each circle misses an arc, on opposite sides
    angle = torch.atan2(x[:, 1], x[:, 0])
    assert (angle[y == 0].abs() > 0.2).all()
    assert ((angle[y == 1].abs() - math.pi).abs() > 0.2).all()


def test_two_circles_seeded():
    a, b = two_circles(100, seed=3), two_circles(100, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], two_circles(100, seed=4)[0])
    assert two_circles(10, dtype=torch.float64)[0].dtype == torch.float64


def test_spiral():
    x, y = spiral(3000, seed=1)
    assert x.shape == (3000, 2)
    assert (y == -1).sum() == 300  # 10% outliers
    assert torch.bincount(y[y >= 0]).tolist() == [540] * 5

    # each arm curves outward: its angle grows with the radius
    r = x.norm(dim=-1)
    for k in range(5):
        arm = x[y == k]
        inner, outer = arm[r[y == k] < 0.3].mean(0), arm[r[y == k] > 0.8].mean(0)
        assert outer.norm() > 2 * inner.norm()

    # outliers lie between arms: farther from their nearest arm point than arm points are
    arms = x[y >= 0]
    d_out = torch.cdist(x[y == -1], arms).min(dim=-1).values
    d_arm = torch.cdist(arms[:300], arms[300:]).min(dim=-1).values
    assert d_out.median() > 2 * d_arm.median()


def test_spiral_seeded():
    assert torch.equal(spiral(200, seed=2)[0], spiral(200, seed=2)[0])
    assert not torch.equal(spiral(200, seed=2)[0], spiral(200, seed=3)[0])
