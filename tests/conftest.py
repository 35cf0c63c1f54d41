r"""Shared fixtures of the contmix test suite."""

import pytest
import torch

from torch import Tensor

# The tests use small tensors: one intra-op thread is as fast, and it avoids the
# slowdown of OpenMP threads spinning when the CPUs are shared (CI, parallel sessions).
torch.set_num_threads(1)


def make_blobs(
    n: int = 200,
    centers: Tensor | None = None,
    scale: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns ``n`` samples per blob around ``centers``, the centres and the labels."""

    if centers is None:
        centers = torch.tensor([[-8.0, 0.0, 2.0], [8.0, 1.0, -2.0], [0.0, 9.0, 0.0]])

    generator = torch.Generator().manual_seed(seed)
    centers = centers.to(dtype)
    K, D = centers.shape
    labels = torch.arange(K).repeat_interleave(n)
    noise = torch.randn(K * n, D, generator=generator, dtype=dtype)

    return centers[labels] + scale * noise, centers, labels


@pytest.fixture
def blobs():
    r"""Three well-separated Gaussian blobs in 3-D (float64), 200 samples each."""

    return make_blobs()
