r"""The paper's pipeline end to end (benchmarks/evaluation.py) on a small subset of
Fashion-MNIST: the CNF teacher, its spaces, direct and curriculum rows, Table 3."""

import json
import math
import subprocess
import sys

from pathlib import Path

import pytest

from contmix.datasets import fashion_mnist

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

try:
    fashion_mnist(limit=1)
except FileNotFoundError:
    pytest.skip(
        "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
        allow_module_level=True,
    )


def test_pipeline_on_a_subset(tmp_path):
    out, cache = tmp_path / "rows.json", tmp_path / "cache"
    command = [
        sys.executable, "evaluation.py", "--data", "fashion-mnist", "--setting", "quick",
        "--limit", "200", "--models", "gmm-diagonal", "gmm-curriculum", "mfa", "kmeans",
        "--seeds", "0", "--ood-seeds", "--ood-digits-seeds", "0", "--teacher-epochs", "1",
        "--finetune", "1", "--cache", str(cache), "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, cwd=BENCHMARKS, check=True, capture_output=True, timeout=600)

    results = json.loads(out.read_text())
    rows = {row["model"]: row for row in results["rows"] if row["task"] == "table1"}

    assert results["samples"]["train"] == results["samples"]["test"] == 200
    assert set(rows) == {
        "CNF teacher (zuko, seed 0)",
        "GMM matched, diagonal (EM)",
        "GMM with curriculum",
        "MFA (EM), as many components as the CPMM",
        "k-means (clusters only)",
    }
    for name, row in rows.items():
        if "k-means" not in name:  # bits/dim of 256-level pixels: above 0, finite
            assert 0 < row["bits_per_dim"] < 32, name
        if "accuracy" in row:  # better than nothing, at most all
            assert 0.1 <= row["accuracy"] <= 1, name
    for name in ("GMM matched, diagonal (EM)", "GMM with curriculum"):
        assert 0 <= rows[name]["digits_auroc"] <= 1, name
        assert math.isfinite(rows[name]["digits_aupr"]), name

    # the teacher's checkpoint, its CNF and its float16 spaces are in the cache
    suffixes = sorted("".join(path.suffixes) for path in cache.iterdir())
    assert suffixes == [".cnf.pt", ".pt", ".teacher.pt"]
