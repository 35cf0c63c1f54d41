r"""Tests of gradient training under DistributedDataParallel: every model trained for a
few Adam steps in 2 processes (gloo, CPU), each on its half of every batch, against the
same steps on the whole batches in one process."""

import re
import subprocess
import sys

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import CONTEXTUAL, MODELS, build
from torch.nn.parallel import DistributedDataParallel

from contmix.ddp import LogProb

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)

D, STEPS, BATCH = 2, 4, 32  # each process takes BATCH // 2 samples of every batch

# every model, and those that take a context with one
CASES = {f"{name}-c0": (name, 0) for name in MODELS}
CASES |= {f"{name}-c1": (name, 1) for name in CONTEXTUAL}
UNUSED = ("gmm-full-c1", "hcpmm-c0", "cwm-affine-c1")  # also find_unused_parameters


def make(key: str) -> torch.nn.Module:
    name, context = CASES[key]
    return build(name, D, context).double()


def batches() -> tuple[torch.Tensor, torch.Tensor]:
    r"""The samples and contexts of every step, with shapes (STEPS, BATCH, *)."""

    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS, BATCH, D, generator=g, dtype=torch.float64)
    c = torch.randn(STEPS, BATCH, 1, generator=g, dtype=torch.float64)

    return x + 2 * c, c


def train(name: str, rank: int = 0, world: int = 1, unused: bool = False) -> list[torch.Tensor]:
    r"""Builds the model with seed 0, runs the Adam steps on the shards of ``rank``
    (wrapped in DDP when ``world > 1``, through :class:`LogProb` with
    ``find_unused_parameters`` when ``unused``) and returns its parameters."""

    model = make(name)
    if unused:
        net = DistributedDataParallel(LogProb(model), find_unused_parameters=True)
    else:
        net = model if world == 1 else DistributedDataParallel(model)  # net(c): a distribution
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, c = (t.chunk(world, dim=1)[rank] for t in batches())

    for xb, cb in zip(x, c, strict=True):
        cb = cb if model.context else None
        loss = -(net(xb, cb) if unused else net(cb).log_prob(xb)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return [p.detach().clone() for p in model.parameters()]


def worker(rank: int, init: str, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    out = {key: train(key, rank, 2) for key in CASES}
    out |= {f"{name} unused": train(name, rank, 2, unused=True) for name in UNUSED}
    torch.save(out, f"{results}/{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(f"file://{tmp / 'init'}", str(tmp)), nprocs=2, join=True)

    return [torch.load(tmp / f"{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.parametrize("key", [*CASES, *(f"{key} unused" for key in UNUSED)])
def test_ddp_equals_whole_batches(results, key):
    name = key.removesuffix(" unused")
    start = [p.detach() for p in make(name).parameters()]
    expected = train(name)

    for out in results:
        assert len(out[key]) == len(expected)
        for actual, e, s in zip(out[key], expected, start, strict=True):
            assert actual.dtype == torch.float64
            torch.testing.assert_close(actual, e, rtol=1e-10, atol=1e-12)
            assert not torch.allclose(e, s)  # every parameter was trained

    for a, b in zip(results[0][key], results[1][key], strict=True):
        assert torch.equal(a, b)  # the processes agree exactly


def test_example_under_torchrun(tmp_path):
    root = Path(__file__).parents[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    arguments = ["--samples=512", "--steps=20", "--teacher-epochs=2"]
    checkpoint = tmp_path / "checkpoint.pt"
    run = subprocess.run(
        [*command, str(root / "examples" / "distributed_train.py"), *arguments]
        + [f"--checkpoint={checkpoint}"],
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert run.returncode == 0, run.stderr

    def checksums(model: str) -> set[str]:
        values = re.findall(rf"{model} checksum (-?[\d.]+(?:e[-+]?\d+)?)", run.stdout)
        assert len(values) == 2  # one per process
        return set(values)

    assert len(checksums("CWM")) == 1  # the same model on both processes
    assert float(run.stdout.split("single-process run:")[-1].split()[0]) < 1e-10

    (gmm,) = checksums("curriculum GMM")
    state = torch.load(checkpoint, weights_only=True)["model"]  # written by rank 0
    assert repr(sum(t.sum().item() for t in state.values())) == gmm
