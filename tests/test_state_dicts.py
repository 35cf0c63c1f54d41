r"""State dicts saved by contmix 0.1.0 before the code moved (issue 16) load into the
models as they are built today and give the same log-densities, in float64.

``tests/data/state_dicts_0.1.0.pt`` was written by ``tests/data/make_state_dicts.py`` at
commit 4a3ca79; it holds each model's state dict and its log-densities on fixed points.
"""

from pathlib import Path

import pytest
import torch

from test_persistence import log_prob

from contmix import CPMM, CWM, GMM, MFA, HierarchicalCPMM, HierarchicalMFA

SAVED = torch.load(Path(__file__).parent / "data" / "state_dicts_0.1.0.pt", weights_only=True)

# the models saved in 0.1.0, as tests/test_persistence.py built them then (a record of
# the saved file: not the registry of tests/models.py, whose sizes may change)
D = 3
ARCHITECTURES = {
    "gmm": lambda: GMM(D, components=3),
    "gmm diagonal": lambda: GMM(D, components=3, covariance_type="diagonal"),
    "gmm context": lambda: GMM(D, context=2, components=3, hidden_features=(8,)),
    "mfa": lambda: MFA(D, components=3, rank=1),
    "cpmm": lambda: CPMM(D, components=5, rank=1, hidden_features=(16,)),
    "hierarchical cpmm": lambda: HierarchicalCPMM(
        D, trajectories=2, components=3, rank=1, hidden_features=(16,)
    ),
    "cwm": lambda: CWM(D, components=3, hidden_features=(8,)),
    "hierarchical mfa": lambda: HierarchicalMFA(D, groups=2, components=3, rank=1),
    "cpmm extract": lambda: MFA(D, components=5, rank=1),
    "hierarchical cpmm extract": lambda: HierarchicalMFA(D, groups=2, components=3, rank=1),
}

EXTRA = {
    "cpmm image": lambda: CPMM((1, 2, 2), components=4, rank=1, hidden_features=(4,)),
    "cpmm context": lambda: CPMM(4, context=2, components=4, rank=1, hidden_features=(8,)),
    "hierarchical cpmm separate": lambda: HierarchicalCPMM(
        4, trajectories=2, components=3, rank=1, hidden_features=(8,), separate=True
    ),
    "cwm context": lambda: CWM(4, context=2, components=3, hidden_features=(8,)),
}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    r"""The points of the saved log-densities: three blobs and contexts, in float64."""

    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-4.0, 0, 1], [4, 1, -1], [0, 5, 0]], dtype=torch.float64)
    x = centers.repeat_interleave(40, dim=0) + torch.randn(120, D, generator=g).double()
    c = torch.randn(120, 2, generator=g, dtype=torch.float64)

    return x, c


def points(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name in EXTRA:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(50, 4, generator=g, dtype=torch.float64)
        return x, torch.randn(50, 2, generator=g, dtype=torch.float64)
    return data()


@pytest.mark.parametrize("name", sorted(SAVED["states"]))
def test_old_state_dict_loads(name):
    build = EXTRA.get(name) or ARCHITECTURES[name]
    torch.manual_seed(1)
    model = build().double().eval()
    before = log_prob(model, *points(name))

    model.load_state_dict(SAVED["states"][name])  # strict: same keys and shapes
    after = log_prob(model, *points(name))

    expected = SAVED["log_prob"][name]
    assert not torch.allclose(before, expected)  # the load is what makes them agree
    assert torch.allclose(after, expected, rtol=1e-9, atol=1e-9), name
