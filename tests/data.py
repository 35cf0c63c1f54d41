r"""The data sets of the test suite (importable as ``data``: pytest puts the folder of
the tests on the path)."""

import torch

from torch import Tensor

# three well-separated centres in 3-D, and two opposite ones in 2-D
THREE = [[-8.0, 0.0, 2.0], [8.0, 1.0, -2.0], [0.0, 9.0, 0.0]]
TWO = [[-3.0, -3.0], [3.0, 3.0]]
PLANE = [[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]]  # three centres in 2-D, 4 or 5 apart


def blobs(
    centers: list | Tensor = THREE,
    n: int = 200,
    scale: float = 1.0,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float64,
    cycle: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Samples of isotropic Gaussians of standard deviation ``scale`` around the
    centres and their labels: ``n`` samples per centre, one blob after the other, or
    ``n`` in all, cycling through the centres when ``cycle``.

    The noise is drawn in ``dtype`` from ``seed``, a seed or a generator (which the
    caller may draw on from after, e.g. contexts)."""

    if isinstance(seed, int):
        seed = torch.Generator().manual_seed(seed)

    centers = torch.as_tensor(centers, dtype=dtype)
    K, D = centers.shape
    labels = torch.arange(n) % K if cycle else torch.arange(K).repeat_interleave(n)
    noise = torch.randn(len(labels), D, generator=seed, dtype=dtype)

    return centers[labels] + scale * noise, labels


def plane(n: int = 300, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""Three unit blobs in 2-D (float32) around :data:`PLANE`, ``n`` samples in all,
    cycling through the centres, and their labels."""

    return blobs(PLANE, n, seed=seed, dtype=torch.float32, cycle=True)
