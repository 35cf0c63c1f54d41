r"""Shared fixtures and options of the contmix test suite: ``--device`` and
``--dtype`` choose where and in which precision the tests that are about a device or
a dtype run (``pytest --device cuda``)."""

import pytest
import torch

from data import THREE
from data import blobs as make_blobs

# The tests use small tensors: one intra-op thread is as fast, and it avoids the
# slowdown of OpenMP threads spinning when the CPUs are shared (CI, parallel sessions).
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="the device of the device tests (cpu)")
    parser.addoption(
        "--dtype",
        default="float32",
        choices=("float32", "float64"),
        help="the dtype of the models fitted on the device (float32)",
    )


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    return torch.device(pytestconfig.getoption("device"))


@pytest.fixture(scope="session")
def dtype(pytestconfig: pytest.Config) -> torch.dtype:
    return getattr(torch, pytestconfig.getoption("dtype"))


@pytest.fixture(scope="session")
def accelerator(device: torch.device) -> torch.device:
    r"""The device of ``--device`` for the tests that compare it with the CPU or move
    between the two: they skip on the CPU (the default)."""

    if device.type == "cpu":
        pytest.skip("compares a device with the CPU: run with --device cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda but CUDA is not available")
    return device


@pytest.fixture
def blobs():
    r"""Three well-separated Gaussian blobs in 3-D (float64), 200 samples each: the
    samples, the centres and the labels."""

    x, labels = make_blobs(THREE, 200, 0.5)
    return x, torch.tensor(THREE, dtype=x.dtype), labels
