r"""The state of a continuous mixture, defined once: the parameters of a mixture of
factor analyzers' component stacked in one vector that a neural ODE moves.

.. math:: h = [\mu, \operatorname{vec}(A^T), \log d, (\log \pi), \alpha]
"""

__all__ = [
    "State",
    "StateLayout",
    "inverse_soft_clip",
    "soft_clip",
]

import math

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from torch import Tensor


class State(NamedTuple):
    r"""The parts of a CPMM state, each with shape :math:`(*, \dots)`: means
    :math:`(*, M)`, loadings :math:`(*, M, R)`, log-diagonals :math:`(*, M)` (or
    :math:`(*, 1)` when they are spherical), log-weights
    :math:`(*, 1)` (or :py:`None` when the weights are constant) and the augmented part
    :math:`(*, L)`."""

    loc: Tensor
    factor: Tensor
    log_diag: Tensor
    log_weight: Tensor | None
    alpha: Tensor


class StateLayout:
    r"""The layout of the CPMM state, defined once.

    .. math:: h = [\mu, \operatorname{vec}(A^T), \log d, (\log \pi), \alpha] \in
        \mathbb{R}^{J + L}, \quad J = (R + 2) M \, (+ 1)

    where the loadings are stored column after column (each column :math:`A_{:, r}` is
    one contiguous block of :math:`M` values), :math:`\log \pi` is present only when the
    weights are learned and :math:`\alpha \in \mathbb{R}^L` is the augmented part, never
    read by the mixture. With spherical diagonals, :math:`D = d I`, :math:`\log d` is one
    value and :math:`J = (R + 1) M + 1 \, (+ 1)`.

    For image-shaped features :math:`M = C \times H \times W` (``shape``), the same
    flat state is a stack of :math:`(R + 2) C + L / (H W)` image channels: :math:`C`
    channels of means, :math:`R C` of loadings, :math:`C` of log-diagonals and
    :math:`L / (H W)` augmented ones (:meth:`image`).

    Arguments:
        features: The number of features :math:`M`.
        rank: The rank :math:`R` of the loadings.
        augmented: The size :math:`L` of the augmented part.
        weights: Whether :math:`\log \pi` is in the state.
        shape: The image shape :math:`(C, H, W)` of the features, if any.
        spherical: Whether :math:`\log d` is one value, :math:`D = d I`.

    Example:
        >>> layout = StateLayout(features=2, rank=1, augmented=3)
        >>> layout.size, layout.slices["log_diag"]
        (9, slice(4, 6, None))
        >>> h = torch.randn(5, layout.size)
        >>> torch.equal(layout.pack(layout.unpack(h)), h)
        True
        >>> StateLayout(features=2, rank=1, augmented=3, spherical=True).slices["log_diag"]
        slice(4, 5, None)
        >>> layout = StateLayout(features=16, rank=2, augmented=32, shape=(1, 4, 4))
        >>> layout.image(torch.randn(5, layout.size)).shape
        torch.Size([5, 6, 4, 4])
    """

    def __init__(
        self,
        features: int,
        rank: int,
        augmented: int,
        weights: bool = False,
        shape: Sequence[int] | None = None,
        spherical: bool = False,
    ):
        self.features, self.rank, self.augmented = features, rank, augmented
        self.weights, self.spherical = weights, spherical
        self.shape = None if shape is None else tuple(shape)

        shapes = {
            "loc": (features,),
            "factor": (rank, features),
            "log_diag": (1,) if spherical else (features,),
            "log_weight": (1,) if weights else (0,),
            "alpha": (augmented,),
        }

        self.shapes, self.slices, start = {}, {}, 0
        for name, shape in shapes.items():
            self.shapes[name] = shape
            self.slices[name] = slice(start, start + math.prod(shape))
            start += math.prod(shape)

        self.size = start
        self.mixture = self.slices["alpha"].start

        if self.shape is not None:
            pixels = math.prod(self.shape[1:])
            if len(self.shape) != 3 or math.prod(self.shape) != features or augmented % pixels:
                raise ValueError(
                    f"shape must be (C, H, W) with C * H * W = features = {features} and the "
                    f"augmented size a multiple of H * W, got shape={self.shape} and "
                    f"augmented={augmented}."
                )
            for name, value in (("learn_weights", weights), ("spherical", spherical)):
                if value:
                    raise ValueError(
                        f"{name}=True is not available with image-shaped features: use "
                        f"{name}=False or flat features."
                    )
            self.channels = self.size // pixels

    @classmethod
    def of(
        cls,
        features: int | Sequence[int],
        rank: int,
        augment: float,
        weights: bool = False,
        spherical: bool = False,
    ) -> "StateLayout":
        r"""Returns the layout of a continuous mixture whose augmented part is ``augment``
        times the mixture part, :math:`L = \lceil a J \rceil`, or for image-shaped
        features :math:`(C, H, W)` :math:`\lceil a (R + 2) C \rceil` whole channels.

        Example:
            >>> StateLayout.of(2, rank=1, augment=2.0).augmented
            12
            >>> StateLayout.of((1, 4, 4), rank=1, augment=2.0).channels
            9
        """

        if isinstance(features, int):
            mixture = (rank + 1) * features + (1 if spherical else features) + weights
            return cls(features, rank, math.ceil(augment * mixture), weights, None, spherical)

        shape = tuple(features)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"Image-shaped features must be (C, H, W) with positive sizes, got {shape}."
            )

        channels, pixels = shape[0], math.prod(shape[1:])
        augmented = math.ceil(augment * (rank + 2) * channels) * pixels

        return cls(math.prod(shape), rank, augmented, weights, shape, spherical)

    def __repr__(self) -> str:
        return f"StateLayout({', '.join(f'{k}={v}' for k, v in self.shapes.items())})"

    def unpack(self, h: Tensor) -> State:
        r"""Splits states with shape :math:`(*, J + L)` into their named parts."""

        parts = {
            name: h[..., s].unflatten(-1, self.shapes[name]) for name, s in self.slices.items()
        }
        parts["factor"] = parts["factor"].mT

        if not self.weights:
            parts["log_weight"] = None

        return State(**parts)

    def pack(self, state: State) -> Tensor:
        r"""Concatenates named parts into states with shape :math:`(*, J + L)`."""

        loc = state.loc
        log_weight = state.log_weight if self.weights else loc[..., :0]
        parts = (loc, state.factor.mT.flatten(-2), state.log_diag, log_weight, state.alpha)

        return torch.cat(parts, dim=-1)

    def image(self, h: Tensor) -> Tensor:
        r"""Views states with shape :math:`(*, J + L)` as stacks of image channels, with
        shape :math:`(*, (R + 2) C + L / (H W), H, W)`."""

        return h.unflatten(-1, (self.channels, *self.shape[1:]))


def soft_clip(x: Tensor, floor: float) -> Tensor:
    r"""Clips :math:`x` smoothly from below, :math:`m + \operatorname{softplus}(x - m)`."""

    return floor + F.softplus(x - floor)


def inverse_soft_clip(y: Tensor, floor: float) -> Tensor:
    r"""The inverse of :func:`soft_clip`, for :math:`y > m`."""

    z = (y - floor).clamp(min=1e-4)
    return floor + z + torch.log(-torch.expm1(-z))
