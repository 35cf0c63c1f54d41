r"""Squared distances between samples and centres, expanded around a reference point
(see :mod:`contmix.cluster`), and the nearest centre of each sample."""

from collections.abc import Callable

import torch

from torch import Tensor

from ..distributed import Data, batches, gather, is_sharded

SUBSAMPLE = 1024  # at least this many samples (of each shard) give the reference point


def _sizes(x: Data) -> list[int]:
    r"""The number of samples of each batch of this process (one pass)."""

    return [len(b) for b in batches(x)]


def _subsample(x: Data, step: int) -> Tensor:
    r"""The samples of global index :math:`0, s, 2s, \dots` of the batches, i.e.
    :py:`torch.cat(list(x))[::step]` (one pass)."""

    picked, start = [], 0

    for b in batches(x):
        picked.append(b[(-start) % step :: step])
        start += len(b)

    return torch.cat(picked)


def reference(x: Data) -> Tensor:
    r"""Returns the point :math:`r` around which the distances are expanded: the median
    of each feature over a regular subsample of at least 1024 samples (all of them when
    there are fewer), with shape :math:`(D,)`. It moves with the data (the reference
    of :math:`x + s` is that of :math:`x` plus :math:`s`) and is not moved by outliers.
    Within :func:`~contmix.distributed.sharded`, it is the median of the references of
    the shards, the same on every process. Of an iterable of batches, it is that of
    their concatenation, in two passes (one to count the samples).

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 1e6]])
        >>> reference(x)
        tensor([1., 2.])
        >>> reference(x.split(2))
        tensor([1., 2.])
    """

    if isinstance(x, Tensor):
        local = x[:: max(1, len(x) // SUBSAMPLE)].median(dim=0).values
    else:
        local = _subsample(x, max(1, sum(_sizes(x)) // SUBSAMPLE)).median(dim=0).values

    if is_sharded():
        return gather(local).median(dim=0).values

    return local


def _expanded(x: Tensor, squares: Tensor, centers: Tensor) -> Tensor:
    r"""Squared distances, with shape :math:`(N, K)`, between centred samples
    :math:`x'`, whose squared norms are ``squares``, and centred centres :math:`c'`, as
    one matrix product: :math:`\|x'\|^2 - 2 x'^T c' + \|c'\|^2`."""

    d = torch.addmm(centers.square().sum(dim=-1), x, centers.T, alpha=-2)  # one pass
    return d.add_(squares.unsqueeze(-1)).clamp_(min=0)


def _rounding(norms: Tensor, largest: Tensor, D: int, dtype: torch.dtype) -> Tensor:
    r"""A bound on the rounding of the squared distances of :func:`_expanded` in
    ``dtype`` between :math:`D`-dimensional samples of norms ``norms`` and centres of
    norm at most ``largest``, with the shape of ``norms``: twice the bound
    :math:`\gamma_{D + 3} (\|x'\| + \|c'\|)^2` of a sum of :math:`D + 3` terms of
    absolute sum at most :math:`(\|x'\| + \|c'\|)^2`."""

    gamma = (D + 3) * torch.finfo(dtype).eps  # twice (D + 3) u

    return gamma / (1 - gamma) * (norms + largest).square()


def _distances(x: Tensor, centers: Tensor, shift: Tensor | None = None) -> Tensor:
    r"""Squared Euclidean distances, with shape :math:`(N, K)`, expanded around
    ``shift`` (by default :func:`reference` of :math:`x`)."""

    shift = reference(x) if shift is None else shift
    x, centers = x - shift, centers - shift

    return _expanded(x, x.square().sum(dim=-1), centers)


def _own(x: Tensor, centers: Tensor, labels: Tensor) -> Tensor:
    r"""The squared distance of each sample to its own centre, with shape :math:`(N,)`,
    as the sum of the squared differences (no cancellation)."""

    return (x - centers[labels]).square().sum(dim=-1)


@torch.no_grad()
def assign(x: Tensor, centers: Tensor) -> Tensor:
    r"""Returns the index of the nearest centre of each sample.

    The squared distances are expanded around :func:`reference` of :math:`x`, so that
    the assignments of :math:`x + s` to the centres :math:`c + s` are those of
    :math:`x` to :math:`c`, in float32 too.

    Example:
        >>> assign(torch.tensor([[0.0], [0.9], [3.0]]), torch.tensor([[0.0], [2.0]]))
        tensor([0, 0, 1])
        >>> assign(torch.tensor([[0.0], [0.9], [3.0]]) + 1e4, torch.tensor([[0.0], [2.0]]) + 1e4)
        tensor([0, 0, 1])
    """

    return _distances(x, centers).argmin(dim=-1)


def labeller(x: Data, centers: Tensor) -> Callable[[Tensor], Tensor]:
    r"""Returns a function that gives the nearest centre of each sample of a batch of
    :math:`x`, the distances expanded around :func:`reference` of all of :math:`x`, so
    that the labels of the batches are those :func:`assign` gives their concatenation.

    Example:
        >>> x = torch.tensor([[0.0], [0.9], [3.0]])
        >>> label = labeller(x.split(2), torch.tensor([[0.0], [2.0]]))
        >>> [label(b).tolist() for b in x.split(2)]
        [[0, 0], [1]]
    """

    shift = reference(x)

    return lambda batch: _distances(batch, centers.to(batch), shift.to(batch)).argmin(dim=-1)
