r"""Tests of saving, loading and resuming across processes, devices and dtypes: every
model's state dict saved in this process and loaded in a fresh one (this file run as a
script), the curriculum's checkpoint resumed in another process, CPU <-> --device and
float32 <-> float64.

Run as a script, ``python tests/test_persistence.py load DIR`` loads the saved state
dicts into freshly built models and writes their log-densities, and
``python tests/test_persistence.py train DIR STOP SEED`` trains through the curriculum
with a checkpoint in DIR from the seed SEED, killing the process at step STOP (-1:
never).
"""

import copy
import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch
import zuko

from data import blobs
from models import CONTEXTUAL, MODELS, build, initialize_kwargs

from contmix import GMM, Curriculum
from contmix.curriculum import Settings, Spaces

D = 3

# every model, those that take a context with one, and the mixtures the ODE models extract
CASES = {f"{name}-c0": (name, 0) for name in MODELS}
CASES |= {f"{name}-c2": (name, 2) for name in CONTEXTUAL}
CASES |= {f"{name}-extract": (name, 0) for name in MODELS if MODELS[name].ode}


def make(key: str, seed: int = 0) -> torch.nn.Module:
    r"""The model of ``key``, in float64, built from the seed ``seed``."""

    name, context = CASES[key]
    model = build(name, D, context, seed).double()
    return model.extract() if key.endswith("extract") else model


def data() -> tuple[torch.Tensor, torch.Tensor]:
    r"""Samples of three blobs and their contexts, in float64."""

    g = torch.Generator().manual_seed(0)
    x, _ = blobs([[-4.0, 0, 1], [4, 1, -1], [0, 5, 0]], 40, seed=g)
    return x, torch.randn(len(x), 2, generator=g, dtype=torch.float64)


def models() -> dict[str, torch.nn.Module]:
    r"""Every model, in float64, initialized on the data and in evaluation mode."""

    x, _ = data()
    out = {}

    for key, (name, _) in CASES.items():
        if key.endswith("extract"):
            out[key] = out[f"{name}-c0"].extract()
            continue
        model = make(key)
        model.initialize(x, **initialize_kwargs(name, steps=10))
        out[key] = model.eval()

    return out


@torch.no_grad()
def log_prob(model: torch.nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return model(c if model.context else None).log_prob(x)


def load(folder: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    r"""Builds every model from another seed, loads its state dict and evaluates it."""

    x, c = data()
    states = torch.load(folder / "states.pt", map_location=device, weights_only=True)
    out = {}

    for name, state in states.items():
        model = make(name, seed=1)
        model.load_state_dict(state)
        model = model.to(device).eval()
        out[name] = log_prob(model, x.to(device), c.to(device)).cpu()

    return out


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.nn.Module]:
    return models()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained) -> tuple[Path, dict[str, torch.Tensor]]:
    r"""The state dicts, saved, and the log-densities of the models in this process."""

    folder = tmp_path_factory.mktemp("persistence")
    x, c = data()
    torch.save({name: m.state_dict() for name, m in trained.items()}, folder / "states.pt")

    return folder, {name: log_prob(m, x, c) for name, m in trained.items()}


def script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True, timeout=120
    )


def test_load_in_a_fresh_process(saved):
    folder, expected = saved
    run = script("load", str(folder))
    assert run.returncode == 0, run.stderr
    loaded = torch.load(folder / "loaded.pt", weights_only=True)

    assert set(loaded) == set(CASES)
    for name, value in expected.items():
        assert torch.isfinite(value).all()
        assert torch.equal(loaded[name], value), name

    fresh = make("mfa-c0", seed=1)  # a model that was not loaded differs
    assert not torch.allclose(log_prob(fresh, *data()), expected["mfa-c0"])


def test_extract_matches_its_model(saved):
    _, expected = saved

    for key in filter(lambda key: key.endswith("extract"), CASES):
        torch.testing.assert_close(expected[key], expected[key.replace("extract", "c0")])


def test_cpu_to_device_and_back(saved, tmp_path, accelerator):
    folder, expected = saved
    on_device = load(folder, accelerator)

    for name, value in expected.items():  # other kernels: equal up to rounding (and
        # the adaptive ODE steps of the CPMMs that follow from it)
        torch.testing.assert_close(on_device[name], value, rtol=1e-7, atol=1e-7)

    # Saved on the device, loaded on the CPU: the same parameters, the same log-densities
    states = torch.load(folder / "states.pt", map_location=accelerator, weights_only=True)
    assert {t.device.type for state in states.values() for t in state.values()} == {
        accelerator.type
    }
    torch.save(states, tmp_path / "states.pt")
    back = load(tmp_path, "cpu")

    for name, value in expected.items():
        assert torch.equal(back[name], value), name


@pytest.mark.parametrize("name", CASES)
def test_dtype_round_trip(saved, trained, name):
    x, c = data()
    _, expected = saved
    model = trained[name]

    single = copy.deepcopy(model).to(torch.float32)
    assert all(p.dtype == torch.float32 for p in single.parameters())
    value = log_prob(single, x.float(), c.float())
    assert value.dtype == torch.float32
    # measured: at most 1e-5 (float32), 1.2e-6 (float32 parameters in float64)
    torch.testing.assert_close(value.double(), expected[name], rtol=1e-4, atol=1e-4)

    double = single.to(torch.float64)  # the float32 parameters, in float64
    value = log_prob(double, x, c)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5)


# The curriculum's checkpoint, resumed in another process


def curriculum(folder: Path, stop: int = -1, seed: int = 1) -> list[torch.Tensor]:
    r"""Trains a GMM through the saved spaces with a checkpoint in ``folder``, from
    seeds ``seed`` and ``seed + 1``; the process dies (no clean-up, no exception) at
    step ``stop``."""

    def kill(model, info):
        if info["step"] == stop:
            os._exit(3)

    spaces = Spaces.load(folder / "spaces.pt")
    cnf = zuko.flows.CNF(D, hidden_features=(8,)).double()
    torch.manual_seed(seed)
    gmm = GMM(D, components=3).double()
    torch.manual_seed(seed + 1)
    Curriculum(cnf).train(
        gmm,
        spaces,
        settings=Settings(finetune_epochs=2, lr=1e-2, batch_size=32, noise=0.01, strategy="em"),
        callbacks=[kill],
        checkpoint=folder / "checkpoint.pt",
        progress=False,
    )

    return [p.detach() for p in gmm.parameters()]


def test_curriculum_resumes_in_another_process(tmp_path):
    torch.manual_seed(0)
    cnf = zuko.flows.CNF(D, hidden_features=(8,), atol=1e-5, rtol=1e-4).double()
    Curriculum(cnf).spaces(data()[0], steps=4).save(tmp_path / "spaces.pt")

    run = script("train", str(tmp_path), "9", "1")  # killed in the fourth epoch of 4 batches
    assert run.returncode == 3, run.stderr
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 2

    run = script("train", str(tmp_path), "-1", "5")  # other seeds: all from the checkpoint
    assert run.returncode == 0, run.stderr
    resumed = torch.load(tmp_path / "trained.pt", weights_only=True)

    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    (uninterrupted / "spaces.pt").write_bytes((tmp_path / "spaces.pt").read_bytes())
    expected = curriculum(uninterrupted)

    for a, b in zip(resumed, expected, strict=True):
        assert torch.equal(a, b)

    torch.manual_seed(1)
    assert not torch.allclose(GMM(D, components=3).double().phi[1], expected[1])


if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test process (tests/conftest.py)
    mode, folder = sys.argv[1], Path(sys.argv[2])

    if mode == "load":
        torch.save(load(folder), folder / "loaded.pt")
    else:
        stop, seed = int(sys.argv[3]), int(sys.argv[4])
        torch.save(curriculum(folder, stop, seed), folder / "trained.pt")
