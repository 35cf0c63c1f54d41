r"""The data in the intermediate spaces of a curriculum."""

__all__ = [
    "Spaces",
]

import os

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from torch import Tensor


@dataclass
class Spaces:
    r"""The data in the intermediate spaces :math:`u_v(x)` of a curriculum.

    Iterating gives the pairs :math:`(v, u_v(x))` in the order of the curriculum, from
    :math:`v = 1` (the Gaussian) to :math:`v = 0` (the data).

    Arguments:
        v: The times :math:`1 = v_1 > \dots > v_T = 0`, with shape :math:`(T,)`.
        u: The spaces :math:`u_{v_t}(x)`, with shape :math:`(T, N, D)`.
        c: The contexts of the samples, with shape :math:`(N, C)`, or :py:`None`.
        meta: How the spaces were made (tolerances, jitter).

    Example:
        >>> spaces = Spaces(torch.linspace(1, 0, 3), torch.randn(3, 10, 2))
        >>> [tuple(u.shape) for v, u in spaces]
        [(10, 2), (10, 2), (10, 2)]
    """

    v: Tensor
    u: Tensor
    c: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.v.dim() != 1 or self.u.dim() != 3 or len(self.v) != len(self.u):
            raise ValueError(
                f"v must have shape (T,) and u shape (T, N, D), got {tuple(self.v.shape)} "
                f"and {tuple(self.u.shape)}."
            )
        if len(self.v) > 1 and not (self.v[1:] < self.v[:-1]).all():
            raise ValueError("v must decrease, from the Gaussian (v = 1) to the data (v = 0).")
        if self.c is not None and self.c.shape[:-1] != self.u.shape[1:2]:
            raise ValueError(
                f"c must have shape ({self.u.shape[1]}, C), one context per sample, "
                f"got {tuple(self.c.shape)}."
            )

    def __len__(self) -> int:
        return len(self.v)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return zip(self.v, self.u, strict=True)

    def save(self, path: str | os.PathLike) -> None:
        r"""Saves the spaces to ``path`` with :func:`torch.save`."""

        torch.save({"v": self.v, "u": self.u, "c": self.c, "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = None) -> "Spaces":
        r"""Loads spaces saved by :meth:`save`."""

        state = torch.load(path, map_location=map_location, weights_only=True)
        missing = {"v", "u", "c", "meta"} - set(state)

        if missing:
            raise ValueError(f"{path} is not a saved Spaces: it lacks {sorted(missing)}.")

        return cls(**state)
