r"""Tests of the dynamics networks (``contmix.nn``)."""

import torch

from contmix.nn import Dynamics


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
