r"""The shapes of the inputs of the Gaussian families: checks of events and batches,
and the indexing of dimensions to marginalize or condition on."""

from collections.abc import Sequence

import torch

from torch import Size, Tensor

Dims = Sequence[int] | Tensor


def _index(dims: Dims, features: int) -> Tensor:
    r"""Turns a sequence of dimensions or a boolean mask into a long index tensor."""

    if isinstance(dims, Tensor) and dims.dtype == torch.bool:
        if dims.shape != (features,):
            raise ValueError(
                f"A boolean mask of dimensions must have shape ({features},), "
                f"got {tuple(dims.shape)}."
            )
        return dims.nonzero().squeeze(-1)

    index = torch.as_tensor(dims).flatten()

    if index.numel() == 0:
        raise ValueError("At least one dimension must be given.")
    if index.is_floating_point() or index.is_complex():
        raise TypeError(f"Dimensions must be integers or a boolean mask, got {index.dtype}.")

    index = index.long()

    if index.numel() > 0 and (index.min() < -features or index.max() >= features):
        raise ValueError(
            f"Dimensions must lie in [{-features}, {features}), got {index.tolist()}."
        )

    index = index % features

    if index.unique().numel() != index.numel():
        raise ValueError(f"Dimensions must not repeat, got {index.tolist()}.")

    return index


def _complement(index: Tensor, features: int) -> Tensor:
    mask = torch.ones(features, dtype=torch.bool, device=index.device)
    mask[index] = False
    return mask.nonzero().squeeze(-1)


def _check_event(x: Tensor, features: int, name: str = "x", like: Tensor | None = None) -> None:
    r"""Checks the last dimension of :math:`x` and, given ``like`` (a parameter), that
    :math:`x` is on its device and does not promote its dtype (integers and lower
    precisions are promoted, a higher precision is refused)."""

    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < 1 or x.shape[-1] != features:
        raise ValueError(
            f"{name} must have shape (*, {features}), got {tuple(x.shape)}: "
            f"its last dimension should hold the {features} features."
        )
    if like is None:
        return
    if x.device != like.device:
        raise ValueError(
            f"{name} is on {x.device} but the distribution is on {like.device}: "
            f"move one of them, e.g. {name}.to('{like.device}')."
        )
    if torch.promote_types(x.dtype, like.dtype) != like.dtype:
        raise TypeError(
            f"{name} is {x.dtype} but the distribution is {like.dtype}: "
            f"use {name}.to({like.dtype}) or convert the model."
        )


def _check_batch(x: Tensor, batch_shape: Size, name: str = "x") -> None:
    r"""Raises a :class:`ValueError` unless the batch shape of :math:`x` broadcasts with
    the batch shape of a mixture (for a conditional model, the shape of its context
    :math:`c` but the last dimension)."""

    try:
        torch.broadcast_shapes(x.shape[:-1], batch_shape)
    except RuntimeError:
        dims = ", ".join(map(str, batch_shape))
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, whose batch shape {tuple(x.shape[:-1])} does "
            f"not broadcast with the distribution's {tuple(batch_shape)}, that of the context "
            f"c it was built from (c with shape ({dims}, C)): give one row of {name} per "
            f"context, with shape ({dims}, {x.shape[-1]}), or build it with another c."
        ) from None


def _is_empty(x: Tensor, batch_shape: Size) -> bool:
    r"""Whether :math:`x` and the batch broadcast to no sample at all (torch's
    multivariate normals divide by the batch size then)."""

    return torch.broadcast_shapes(x.shape[:-1], batch_shape).numel() == 0


def _empty(x: Tensor, batch_shape: Size, like: Tensor) -> Tensor:
    r"""The empty densities, part of the graph of ``like``, so that the loss of an empty
    batch backpropagates (to zero gradients)."""

    shape = torch.broadcast_shapes(x.shape[:-1], batch_shape)
    return x.new_zeros(shape) + 0 * like.sum()


def _shared(x: Tensor, batch_shape: Size) -> bool:
    r"""Whether :math:`x` is shared by all components (a 1 in the component dimension)."""

    return len(batch_shape) > 0 and x.dim() >= 2 and x.shape[-2] == 1


def _rows(x: Tensor, batch_shape: Size) -> Tensor | None:
    r"""For an input :math:`x` with shape :math:`(*, 1, D)` shared by all components,
    returns it as rows with shape :math:`(S, D)` when it does not vary along the batch
    dimensions of the mixture (samples against one mixture, or against a batch of
    mixtures as in a mixture of mixtures), so that all components of all mixtures are
    one flat batch; returns none when each sample has mixtures of its own (a
    conditional model), whose differences are then formed directly."""

    lead, inner = x.shape[:-2], batch_shape[:-1]
    if any(s != 1 for s in lead[max(len(lead) - len(inner), 0) :]):
        return None

    return x.reshape(-1, x.shape[-1])


def _unflat(values: Tensor, x: Tensor, batch_shape: Size) -> Tensor:
    r"""Reshapes values with shape :math:`(S, \prod B, *)` computed on :func:`_rows` to
    the broadcast shape of :math:`x` and the mixture's batch :math:`B`."""

    lead, inner = x.shape[:-2], batch_shape[:-1]
    samples = lead[: max(len(lead) - len(inner), 0)]

    return values.reshape(*samples, *batch_shape, *values.shape[2:])


def _flatten(p: Tensor, batch_shape: Size, event_dims: int) -> Tensor:
    r"""The parameter ``p``, expanded to the batch shape, as one flat batch."""

    return p.expand(*batch_shape, *p.shape[p.dim() - event_dims :]).reshape(
        -1, *p.shape[p.dim() - event_dims :]
    )


def _take(p: Tensor, index: Tensor, event_dims: int) -> Tensor:
    r"""Selects component ``index`` of a parameter with shape :math:`(*, K, *E)`."""

    dim = -1 - event_dims
    index = index.reshape(index.shape + (1,) * (event_dims + 1))
    p = p.reshape((1,) * max(index.dim() - p.dim(), 0) + p.shape)

    return torch.take_along_dim(p, index, dim=dim).squeeze(dim)
