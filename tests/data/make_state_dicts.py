# Saved tests/data/state_dicts_0.1.0.pt from commit 4a3ca79, before the layout of issue 16
# moved the code: the state dicts of every model with their log-densities. Not to be rerun
# on a later layout, whose output would test nothing; run from the repository root. Guarded
# by __main__: pytest's --doctest-modules imports every module under tests/.
import sys

import torch

from contmix import CPMM, CWM, HierarchicalCPMM


def main() -> None:
    sys.path.insert(0, "tests")
    from test_persistence import data, log_prob, models

    extra = {
        "cpmm image": lambda: CPMM((1, 2, 2), components=4, rank=1, hidden_features=(4,)),
        "cpmm context": lambda: CPMM(4, context=2, components=4, rank=1, hidden_features=(8,)),
        "hierarchical cpmm separate": lambda: HierarchicalCPMM(
            4, trajectories=2, components=3, rank=1, hidden_features=(8,), separate=True
        ),
        "cwm context": lambda: CWM(4, context=2, components=3, hidden_features=(8,)),
    }
    out = {"states": {}, "log_prob": {}, "builders": {}}
    x, c = data()
    for name, m in models().items():
        out["states"][name] = m.state_dict()
        out["log_prob"][name] = log_prob(m, x, c)
    g = torch.Generator().manual_seed(3)
    x4 = torch.randn(50, 4, generator=g, dtype=torch.float64)
    c4 = torch.randn(50, 2, generator=g, dtype=torch.float64)
    for name, build in extra.items():
        torch.manual_seed(0)
        m = build().double().eval()
        out["states"][name] = m.state_dict()
        out["log_prob"][name] = log_prob(m, x4, c4)
    torch.save(out, "tests/data/state_dicts_0.1.0.pt")
    for k, v in out["log_prob"].items():
        print(k, v[:2].tolist(), torch.isfinite(v).all().item())


if __name__ == "__main__":
    main()
