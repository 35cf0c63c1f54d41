r"""Tests of the package's face: the README's commands and tour, and the first example
(tests/test_docs.py runs the pages of the documentation)."""

import re
import subprocess
import sys

from pathlib import Path

import pytest
import torch

from helpers import fenced_blocks, run_python_blocks

import contmix

ROOT = Path(__file__).parents[1]

# The pattern by which .ci/run finds the README's test command
CI_PATTERN = re.compile(r"^pip install torch==.*pytest", re.MULTILINE)


def test_readme_commands():
    commands = [b.code for b in fenced_blocks(ROOT / "README.md") if b.info == "bash"]
    demo, test = (c.strip() for c in commands[:2])

    # The README opens with them, torch pinned first
    assert (ROOT / "README.md").read_text().index(demo) < 600
    assert demo == (
        'pip install torch==2.13.0 && pip install -e ".[examples]" && python examples/gmm_2d.py'
    )
    assert test == 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest'

    # .ci/run extracts the test command with CI_PATTERN: it must find exactly this one
    ci = (ROOT / ".ci" / "run").read_text()
    assert "grep -m 1 -E '^pip install torch==.*pytest' README.md" in ci
    assert CI_PATTERN.search((ROOT / "README.md").read_text()).group(0) == test.rstrip()
    assert 'bash -c "$command"' in ci


def test_readme_tour():
    ns, skipped = run_python_blocks(ROOT / "README.md")
    assert not skipped
    x, d = ns["x"], ns["d"]

    # Posteriors are distributions over the 4 components
    assert ns["log_r"].shape == (2048, 4)
    assert torch.allclose(ns["log_r"].exp().sum(dim=-1), torch.ones(2048), atol=1e-5)

    # The marginal of dims (0, 1) is the mixture of the components' marginals
    cov = d.base.covariance_matrix[:, :2, :2]
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=d.logits),
        torch.distributions.MultivariateNormal(d.base.loc[:, :2], cov),
    )
    assert torch.allclose(ns["m"].log_prob(x[:, :2]), reference.log_prob(x[:, :2]), atol=1e-4)

    # E[x_2 | x_0, x_1] of a fitted GMM predicts x_2 better than E[x_2] does
    assert ns["in_painted"].shape == (5, 1)
    c = d.condition([0, 1], x[:, :2])
    assert (c.mean - x[:, 2:]).square().mean() < (d.mean[2] - x[:, 2:]).square().mean()

    # EM + Adam beats a single Gaussian by a margin (the data is Gaussian, so barely)
    single = torch.distributions.MultivariateNormal(x.mean(dim=0), x.T.cov())
    assert d.log_prob(x).mean() > single.log_prob(x).mean() - 0.05

    # The extracted hierarchical model is the CPMM in eval mode, without the ODE
    spiral, model, mixture = ns["spiral"], ns["model"], ns["mixture"]
    assert torch.allclose(mixture().log_prob(spiral), model().log_prob(spiral), atol=1e-4)
    assert torch.equal(ns["clusters"], mixture().posterior(spiral).argmax(dim=-1))

    # The CWM starts out equal to a diagonal GMM fitted by EM, and samples from it
    gmm = contmix.GMM(2, components=8, covariance_type="diagonal")
    torch.manual_seed(0)
    gmm.initialize(spiral, strategy="em")
    torch.manual_seed(0)
    ns["cwm"].initialize(spiral, strategy="em")
    assert torch.allclose(ns["cwm"]().log_prob(spiral), gmm().log_prob(spiral), atol=1e-3)
    assert ns["samples"].shape == (64, 2)
    assert torch.isfinite(ns["bic"]) and torch.isfinite(ns["loss"])


def test_example(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")

    out = tmp_path / "density.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "gmm_2d.py"), "--epochs", "1", "--out", out],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A 16-component GMM on the standardized two moons: a single Gaussian gets about
    # -2.7 nats per sample, the fitted mixture above -1.3 on held-out data
    tests = re.findall(r"test log-likelihood:\s+(-?\d+\.\d+)", result.stdout)
    assert len(tests) == 2
    assert all(float(t) > -1.3 for t in tests)
