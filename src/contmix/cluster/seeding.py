r"""Seeds for clustering: random samples and greedy k-means++, over a tensor, an iterable
of batches or the shards of a process group."""

import math

from collections.abc import Callable

import torch

from torch import Tensor

from .distances import _distances, _expanded, _sizes, reference
from ..distributed import Data, all_reduce, batches, check_batches, gather, is_sharded, rank
from ..utils import check_sizes


def _take(x: Data, index: Tensor) -> Tensor:
    r"""The samples of global indices ``index`` of this process's batches, in that
    order, with shape :math:`(n, D)` (one pass for an iterable)."""

    if isinstance(x, Tensor):
        return x[index.to(x.device)]

    rows, start = None, 0

    for b in x:
        index = index.to(b.device)
        rows = b.new_zeros(len(index), b.shape[-1]) if rows is None else rows
        inside = (index >= start) & (index < start + len(b))
        rows[inside] = b[index[inside] - start]
        start += len(b)

    return rows


def _device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    r"""The device on which to draw random numbers: that of ``generator``, or of
    :math:`x` for the global generator."""

    return x.device if generator is None else generator.device


def check_generator(generator: torch.Generator | None) -> None:
    r"""Raises a :class:`TypeError` unless ``generator`` is a :class:`torch.Generator`
    or :py:`None`.

    Example:
        >>> check_generator(torch.Generator().manual_seed(0))
        >>> check_generator(0)
        Traceback (most recent call last):
            ...
        TypeError: generator must be a torch.Generator or None, got int: ...
    """

    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}: "
            "e.g. torch.Generator().manual_seed(0)."
        )


@torch.no_grad()
def random_centers(x: Data, k: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Returns :math:`k` distinct samples of :math:`x`, drawn uniformly.

    The draw is a random permutation of the :math:`N` samples (for an iterable of
    batches too, in two passes: :math:`8 N` bytes for the permutation), so that the
    batches of :math:`x` give the centres their concatenation gives.

    Arguments:
        x: The samples, with shape :math:`(N, D)`, or an iterable of batches.
        k: The number of centres.
        generator: The random generator (torch's global generator if :py:`None`).

    Example:
        >>> random_centers(torch.randn(100, 3), 4).shape
        torch.Size([4, 3])
        >>> x, g = torch.arange(10.0).unsqueeze(-1), torch.Generator()
        >>> a = random_centers(x, 3, g.manual_seed(1))
        >>> torch.equal(a, random_centers(x, 3, g.manual_seed(1)))
        True
    """

    check_generator(generator)
    check_batches(x)
    N = len(x) if isinstance(x, Tensor) else sum(_sizes(x))
    device = generator.device if generator is not None else next(iter(batches(x))).device
    order = torch.randperm(N, generator=generator, device=device)

    return _take(x, order[:k])


def _uniform(x: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    r"""Returns :math:`n` uniform numbers in :math:`[0, 1)`, in float64, on the device
    of :math:`x`."""

    device = _device(x, generator)
    u = torch.rand(n, dtype=torch.float64, device=device, generator=generator)

    return u.to(x.device)


def _draw(
    x: Tensor, weights: Tensor, n: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    r"""Returns :math:`n` samples, with shape :math:`(n, D)`, each drawn with probability
    proportional to its weight among the samples of all shards (with replacement): the
    shard by its total weight, then the sample within it, from uniform numbers that
    every process draws alike; the owners send them to the others."""

    u = _uniform(x, n, generator)
    cumulative = weights.double().cumsum(dim=0)

    if not is_sharded():
        index = torch.searchsorted(cumulative, u * cumulative[-1], right=True)
        return x[index.clamp(max=len(x) - 1)]

    masses = gather(cumulative[-1])
    total = masses.cumsum(dim=0)
    u = u * total[-1]
    owner = torch.searchsorted(total, u, right=True).clamp(max=len(masses) - 1)
    local = u - total[owner] + masses[owner]
    index = torch.searchsorted(cumulative, local, right=True).clamp(min=0, max=len(x) - 1)
    points = torch.where((owner == rank()).unsqueeze(-1), x[index], 0)

    return all_reduce(points)


def _locate(masses: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Maps uniform numbers :math:`u` to the batch of this process that holds each draw
    (by the batches' total weights ``masses``, the shards' first within
    :func:`~contmix.distributed.sharded`), the weight left to walk within that batch, and
    whether this process owns the draw."""

    if is_sharded():
        shards = gather(masses.sum())
        total = shards.cumsum(dim=0)
        u = u * total[-1]
        owner = torch.searchsorted(total, u, right=True).clamp(max=len(shards) - 1)
        u, mine = u - total[owner] + shards[owner], owner == rank()
    else:
        u, mine = u * masses.sum(), torch.ones_like(u, dtype=torch.bool)

    cumulative = masses.cumsum(dim=0)
    batch = torch.searchsorted(cumulative, u, right=True).clamp(max=len(masses) - 1)

    return batch, u - cumulative[batch] + masses[batch], mine


def _draw_batches(
    x: Data,
    weight: Callable[[Tensor], Tensor],
    masses: Tensor,
    n: int,
    generator: torch.Generator | None,
) -> Tensor:
    r"""Returns :math:`n` samples of the batches, each drawn with probability
    proportional to its weight (:func:`_draw` over the concatenation): the batch by its
    total weight ``masses``, then the sample within it by the cumulative weights
    ``weight(batch)``, recomputed in one pass for the batches that hold a draw."""

    u = _uniform(masses, n, generator)
    batch, left, mine = _locate(masses, u)
    points = None

    for i, b in enumerate(batches(x)):
        points = b.new_zeros(n, b.shape[-1]) if points is None else points
        here = mine & (batch == i)
        if here.any():
            cumulative = weight(b).double().cumsum(dim=0)
            index = torch.searchsorted(cumulative, left[here], right=True)
            points[here] = b[index.clamp(max=len(b) - 1)]

    return all_reduce(points) if is_sharded() else points


def _nearest(b: Tensor, shift: Tensor, centers: Tensor) -> Tensor:
    r"""The squared distance of each sample of a batch to its nearest centre."""

    c = b - shift

    return _expanded(c, c.square().sum(dim=-1), centers - shift).min(dim=-1).values


def _seeds_batches(x: Data, shift: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    r"""Greedy k-means++ (:func:`_seeds`) over batches, holding a batch and the centres
    at a time: the squared distances to the nearest centre are recomputed at each pass,
    two passes per centre (one to fetch the candidates, one to weigh them)."""

    trials = 2 + int(math.log(k))
    sizes = torch.tensor(_sizes(x), dtype=torch.float64, device=shift.device)
    centers = _draw_batches(x, lambda b: torch.ones(len(b), device=b.device), sizes, 1, generator)
    masses = torch.stack(
        [_nearest(b, shift, centers).double().sum() for b in batches(x)]
    )  # per batch

    for _ in range(1, k):
        if all_reduce(masses.sum()) > 0:
            current = centers
            weight = lambda b, current=current: _nearest(b, shift, current)
            candidates = _draw_batches(x, weight, masses, trials, generator)
        else:  # every sample is a centre already: uniform draws, as _seeds
            ones = lambda b: torch.ones(len(b), device=b.device)
            candidates = _draw_batches(x, ones, sizes, trials, generator)

        closest = torch.stack(
            [
                torch.minimum(
                    _nearest(b, shift, centers).unsqueeze(-1),
                    _distances(b, candidates, shift),
                )
                .double()
                .sum(dim=0)
                for b in batches(x)
            ]
        )  # (batches, trials)
        best = all_reduce(closest.sum(dim=0)).argmin()
        centers = torch.cat((centers, candidates[best].unsqueeze(0)))
        masses = closest[:, best]

    return centers


def _seeds(
    x: Tensor,
    shift: Tensor,
    centred: Tensor,
    squares: Tensor,
    k: int,
    generator: torch.Generator | None,
) -> Tensor:
    r"""Greedy k-means++ (see :func:`kmeans_plusplus`) with the distances of the
    centred samples :math:`x' = x - r`, whose squared norms are ``squares``: the
    candidates are samples of :math:`x`, and :math:`c - r` is exactly the row of
    :math:`x'` (a subtraction is correctly rounded)."""

    trials = 2 + int(math.log(k))
    centers = _draw(x, torch.ones_like(squares), 1, generator)
    nearest = _expanded(centred, squares, centers - shift).squeeze(-1)

    for _ in range(1, k):
        total = all_reduce(nearest.sum())
        weights = torch.where(total > 0, nearest, torch.ones_like(nearest))
        candidates = _draw(x, weights, trials, generator)
        distances = _expanded(centred, squares, candidates - shift)
        closest = torch.minimum(nearest.unsqueeze(-1), distances)
        best = all_reduce(closest.sum(dim=0)).argmin()
        centers = torch.cat((centers, candidates[best].unsqueeze(0)))
        nearest = closest[:, best]

    return centers


@torch.no_grad()
def kmeans_plusplus(x: Data, k: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Returns :math:`k` centres by greedy k-means++ seeding.

    The first centre is a sample drawn uniformly. Each next one is chosen among
    :math:`2 + \lfloor \ln k \rfloor` candidate samples, each drawn with probability
    proportional to its squared distance :math:`D^2(x)` to the nearest centre so far:
    the candidate that lowers the potential :math:`\sum_n D^2(x_n)` the most is kept, as
    Arthur and Vassilvitskii (2007) propose and scikit-learn does. Plain k-means++ (one
    candidate) often puts two centres in one cluster and none in another, which
    neither k-means nor EM undoes.

    Within :func:`~contmix.distributed.sharded`, :math:`x` is this process's shard and
    the centres are drawn among the samples of all shards, the same on every process
    provided that the random generator (``generator``, or the global one) is seeded
    alike on all of them.

    Over an iterable of batches, the same draws are made (the same centres, up to the
    rounding of the sums), holding a batch and the centres at a time: the squared
    distances to the nearest centre are recomputed at each pass rather than kept, two
    passes per centre (:math:`2k + 1` in all) and :math:`O(N k^2 D)` operations instead
    of :math:`O(N k D \log k)`.

    References:
        | k-means++: The Advantages of Careful Seeding (Arthur et al., 2007)
        | https://dl.acm.org/doi/10.5555/1283383.1283494

    Arguments:
        x: The samples, with shape :math:`(N, D)`, or an iterable of batches.
        k: The number of centres.
        generator: The random generator (torch's global generator if :py:`None`).

    Returns:
        The centres, samples of :math:`x`, with shape :math:`(k, D)`.

    Example:
        >>> x = torch.cat((torch.randn(50, 2) - 10, torch.randn(50, 2) + 10))
        >>> c = kmeans_plusplus(x, 2, generator=torch.Generator().manual_seed(0))
        >>> bool(c[0, 0] * c[1, 0] < 0)  # one centre per blob
        True
    """

    check_sizes(k=k)
    check_generator(generator)
    check_batches(x)

    shift = reference(x)

    if not isinstance(x, Tensor):
        return _seeds_batches(x, shift, k, generator)

    centred = x - shift

    return _seeds(x, shift, centred, centred.square().sum(dim=-1), k, generator)
