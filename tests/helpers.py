r"""Helpers shared by the test modules (importable as ``helpers``: pytest puts the
folder of the tests on the path)."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from torch import Tensor


def snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    r"""A copy of the module's state."""

    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(module: torch.nn.Module, before: dict[str, Tensor]) -> list[str]:
    r"""The entries of the module's state that differ from a :func:`snapshot`."""

    after = module.state_dict()
    assert after.keys() == before.keys(), "the module's state has other entries"
    return [k for k, v in after.items() if not torch.equal(v, before[k])]


@contextmanager
def unchanged(*modules: torch.nn.Module) -> Iterator[None]:
    r"""Asserts that the state of the modules after the block is the one before it:
    e.g. ``with unchanged(model), pytest.raises(ValueError): model.initialize(bad)``."""

    before = [snapshot(module) for module in modules]
    yield
    for module, state in zip(modules, before, strict=True):
        assert not changed(module, state), f"{type(module).__name__} changed"
