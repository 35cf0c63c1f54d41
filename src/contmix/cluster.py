r"""Clustering: centres for initialization (random, k-means++, k-means) and spectral
clustering of the components of a mixture.

Every squared distance here is expanded as :math:`\|x - c\|^2 = \|x'\|^2 - 2 x'^T c' +
\|c'\|^2`, one matrix product for all pairs, with :math:`x' = x - r` and :math:`c' = c -
r` taken around a reference point :math:`r` in the middle of the data (the median of
the samples, feature by feature, :func:`reference`). Expanded around the origin instead,
the three terms are of the order of :math:`\|x\|^2` and cancel: in float32, the data
:math:`x + 10^4` would lose its distances to rounding. Around :math:`r`, the rounding
error of a distance is :math:`O(\epsilon (\|x - r\|^2 + \|c - r\|^2))`, of the order of
the spread of the data whatever its offset, and the median is not moved by a few
outliers (a mean is: one sample at :math:`10^6` among 200 moves it by :math:`5 \cdot
10^3`). The results are therefore the same, up to that rounding, for the data shifted by
any offset. Where a distance is needed for a single pair (a sample and its own centre:
the inertia, the farthest samples), it is the sum of the squared differences, which
does not cancel.

:func:`reference`, :func:`assign`, :func:`random_centers`, :func:`kmeans_plusplus` and
:func:`kmeans` also take an iterable of batches (:data:`~contmix.distributed.Data`) and
pass through it as often as they need, holding no more than a batch and the centres: the
same draws and the same sums as on the concatenated batches (up to the rounding of the
sums), exact k-means++ and Lloyd's algorithm rather than a minibatch approximation.

Randomized functions draw from ``generator`` (a :class:`torch.Generator`), or from
torch's global generator when it is :py:`None`: with a generator of their own, fits are
reproducible without touching the global seed.
"""

__all__ = [
    "assign",
    "check_generator",
    "cluster_components",
    "frechet_distances",
    "kmeans",
    "kmeans_plusplus",
    "labeller",
    "predict_clusters",
    "random_centers",
    "reference",
    "spectral_clustering",
]

import math

from collections.abc import Callable

import torch

from torch import Tensor
from torch.distributions import Distribution

from .distributed import Data, all_reduce, batches, check_batches, gather, is_sharded, rank
from .report import check_progress, progress_bar, warn_convergence
from .utils import check_sizes

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

    d = squares.unsqueeze(-1) - 2 * x @ centers.T + centers.square().sum(dim=-1)
    return d.clamp(min=0)


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


def _reseed(x: Tensor, centers: Tensor, labels: Tensor, empty: Tensor) -> Tensor:
    r"""Moves the samples of all shards farthest from their centres to the empty
    clusters, one each, and returns the new labels."""

    own = _own(x, centers, labels)
    E = len(empty)
    top = own.topk(min(E, len(own)))

    if not is_sharded():
        labels[top.indices] = empty
        return labels

    values = own.new_full((E,), -1.0)
    values[: len(top.values)] = top.values
    chosen = gather(values).flatten().topk(E).indices  # the same on every process
    mine = chosen // E == rank()
    labels[top.indices[chosen[mine] % E]] = empty[mine]

    return labels


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


def _unchanged(new: Tensor, labels: Tensor) -> bool:
    r"""Returns whether no label changed on any shard."""

    if is_sharded():
        return bool(all_reduce((new != labels).sum()) == 0)

    return torch.equal(new, labels)


def _lloyd(
    x: Tensor, squares: Tensor, centers: Tensor, iterations: int, progress: bool | None = None
) -> tuple[Tensor, Tensor, Tensor, bool]:
    r"""Lloyd's algorithm on centred samples from centred centres (see :func:`kmeans`).
    Returns the centres, the labels, the inertia (of all shards) and whether the labels
    stopped changing within ``iterations``."""

    k, labels, converged, empty = len(centers), None, False, []

    with progress_bar(iterations, "k-means", progress) as bar:
        for _ in range(iterations):
            new = _expanded(x, squares, centers).argmin(dim=-1)
            counts = all_reduce(torch.bincount(new, minlength=k))
            empty = (counts == 0).nonzero().squeeze(-1)
            if len(empty) > 0:
                new = _reseed(x, centers, new, empty)
                counts = all_reduce(torch.bincount(new, minlength=k))

            if labels is not None and _unchanged(new, labels):
                converged = True
                break

            labels = new
            sums = all_reduce(torch.zeros_like(centers).index_add_(0, labels, x))
            centers = sums / counts.unsqueeze(-1).to(x.dtype)
            bar.update()

    if not converged:
        fix = f"lower k (now {k}) if x has fewer distinct samples: clusters kept emptying"
        warn_convergence("k-means", "iterations", iterations, fix if len(empty) > 0 else "")

    return centers, labels, all_reduce(_own(x, centers, labels).sum()), converged


def _lloyd_pass(
    x: Data, shift: Tensor, centers: Tensor
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    r"""One pass of Lloyd's algorithm over the batches, with centred centres: the sums
    and counts of the clusters of the nearest centres, their inertia, and this process's
    :math:`k` samples farthest from their centres (distances, centred samples, labels),
    those that would reseed empty clusters."""

    k, sums, counts, inertia = len(centers), torch.zeros_like(centers), 0, 0
    far = (centers.new_empty(0), centers[:0], torch.zeros(0, dtype=torch.long, device=sums.device))

    for b in batches(x):
        c = b - shift
        labels = _expanded(c, c.square().sum(dim=-1), centers).argmin(dim=-1)
        sums = sums.index_add_(0, labels, c)
        counts = counts + torch.bincount(labels, minlength=k)
        own = _own(c, centers, labels)
        inertia = inertia + own.sum()
        values = torch.cat((far[0], own))
        top = values.topk(min(k, len(values))).indices
        far = (values[top], torch.cat((far[1], c))[top], torch.cat((far[2], labels))[top])

    sums, counts, inertia = all_reduce(sums, counts, inertia)

    return sums, counts, inertia, far


def _move_farthest(
    sums: Tensor, counts: Tensor, far: tuple[Tensor, Tensor, Tensor], empty: Tensor
) -> None:
    r"""Moves the samples of all shards farthest from their centres to the empty
    clusters, one each, in the sums and counts of the clusters (as :func:`_reseed`)."""

    E, (values, rows, labels) = len(empty), (t[: len(empty)] for t in far)

    if is_sharded():
        n = len(values)
        padded = (values.new_full((E,), -1.0), rows.new_zeros(E, rows.shape[-1]))
        padded[0][:n], padded[1][:n] = values, rows
        own = labels.new_zeros(E)
        own[:n] = labels
        chosen = gather(padded[0]).flatten().topk(E).indices  # the same on every process
        mine, local = chosen // E == rank(), chosen % E
        rows = all_reduce(torch.where(mine.unsqueeze(-1), padded[1][local], 0))
        labels = all_reduce(torch.where(mine, own[local], 0))

    empty = empty[: len(rows)]
    sums.index_add_(0, labels, -rows).index_add_(0, empty, rows)
    counts.index_add_(0, labels, -torch.ones_like(labels)).index_add_(
        0, empty, torch.ones_like(labels)
    )


def _lloyd_batches(
    x: Data, shift: Tensor, centers: Tensor, iterations: int, progress: bool | None = None
) -> tuple[Tensor, None, Tensor, bool]:
    r"""Lloyd's algorithm over batches from centred centres, one pass per iteration (see
    :func:`_lloyd`). The labels of the samples are not kept: they stopped changing when
    the centres they give are the centres they were assigned to (the same sums, in the
    same order), which :func:`_lloyd` would find at the same iteration."""

    k, converged, empty = len(centers), False, []

    with progress_bar(iterations, "k-means", progress) as bar:
        for i in range(iterations):
            sums, counts, inertia, far = _lloyd_pass(x, shift, centers)
            empty = (counts == 0).nonzero().squeeze(-1)
            if len(empty) > 0:
                _move_farthest(sums, counts, far, empty)

            new = sums / counts.unsqueeze(-1).to(sums.dtype)
            if i > 0 and torch.equal(new, centers):
                converged = True
                break

            centers = new
            bar.update()

    if not converged:
        fix = f"lower k (now {k}) if x has fewer distinct samples: clusters kept emptying"
        warn_convergence("k-means", "iterations", iterations, fix if len(empty) > 0 else "")
        inertia = _lloyd_pass(x, shift, centers)[2]

    return centers, None, inertia, converged


@torch.no_grad()
def kmeans(
    x: Data,
    k: int,
    iterations: int = 100,
    centers: Tensor | None = None,
    n_init: int = 1,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    r"""Runs Lloyd's algorithm until the assignments stop changing.

    Starts from greedy k-means++ centres (:func:`kmeans_plusplus`) unless ``centers``
    is given, ``n_init`` times, and keeps the run of the lowest inertia
    :math:`\sum_n \|x_n - c_{\ell_n}\|^2`, as :class:`sklearn.cluster.KMeans` does. A
    cluster that empties is moved to the sample farthest from its centre, so every
    cluster keeps samples. The distances are expanded around :func:`reference`, and
    the centres are the means of the samples around it: the clusters of :math:`x + s`
    are those of :math:`x`, in float32 too.

    Within :func:`~contmix.distributed.sharded`, :math:`x` is this process's shard: the
    sums and counts of the clusters are over all shards, the farthest samples are those
    of all shards, and every process returns the same centres (and the labels of its
    own shard).

    A run whose assignments still change after ``iterations`` iterations warns with a
    :class:`~contmix.report.ConvergenceWarning`. Progress bars count the iterations and
    the restarts (:func:`~contmix.report.progress_bar`), without host transfers beyond
    the test of the assignments.

    Over an iterable of batches (:data:`~contmix.distributed.Data`), each iteration is
    one pass through the batches, holding a batch and the centres at a time (the seeds
    are those of :func:`kmeans_plusplus` over the batches): the same centres as on their
    concatenation, up to the rounding of the sums. The labels are not kept; label the
    batches with :func:`labeller`.

    Wikipedia:
        https://wikipedia.org/wiki/K-means_clustering

    Arguments:
        x: The samples, with shape :math:`(N, D)`, or an iterable of batches.
        k: The number of clusters.
        iterations: The maximum number of iterations.
        centers: Initial centres, with shape :math:`(k, D)` (then ``n_init`` must be 1).
        n_init: The number of runs from k-means++ centres.
        generator: The random generator (torch's global generator if :py:`None`).
        progress: Whether to show progress bars (:py:`None`: only in a terminal).

    Returns:
        The centres, with shape :math:`(k, D)`, and the labels, with shape :math:`(N,)`
        (:py:`None` for an iterable of batches).

    Example:
        >>> x = torch.cat((torch.randn(50, 2) - 10, torch.randn(50, 2) + 10))
        >>> centers, labels = kmeans(x, 2, n_init=3, generator=torch.Generator().manual_seed(0))
        >>> torch.bincount(labels).tolist()
        [50, 50]
        >>> same, _ = kmeans(x.split(32), 2, n_init=3, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(same, centers)
        True
    """

    check_sizes(k=k, iterations=iterations, n_init=n_init)
    check_generator(generator)
    check_progress(progress)
    check_batches(x)

    if centers is not None and n_init > 1:
        raise ValueError(
            f"n_init={n_init} restarts from k-means++ centres, but centers are given: "
            "pass n_init=1 with centers, or no centers."
        )

    shift = reference(x)
    best = None

    if isinstance(x, Tensor):
        centred = x - shift
        squares = centred.square().sum(dim=-1)
        seeds = lambda: _seeds(x, shift, centred, squares, k, generator)
        lloyd = lambda start: _lloyd(centred, squares, start, iterations, progress)
    else:
        seeds = lambda: _seeds_batches(x, shift, k, generator)
        lloyd = lambda start: _lloyd_batches(x, shift, start, iterations, progress)

    with progress_bar(n_init, "k-means restarts", progress if n_init > 1 else False) as bar:
        for _ in range(n_init):
            start = (seeds() if centers is None else centers.to(shift)) - shift
            fit = lloyd(start)

            if best is None or fit[2] < best[2]:
                best = fit
            bar.update()

    return best[0] + shift, best[1]


def frechet_distances(loc: Tensor, cov: Tensor, chunk: int = 16) -> Tensor:
    r"""Returns the squared Fréchet (2-Wasserstein) distances between all pairs of
    Gaussians :math:`\mathcal{N}(\mu_i, \Sigma_i)`, with shape :math:`(K, K)`.

    .. math:: d^2_{ij} = \| \mu_i - \mu_j \|^2 + \operatorname{tr}(\Sigma_i + \Sigma_j)
        - 2 \operatorname{tr} \left( (\Sigma_i^{1/2} \Sigma_j \Sigma_i^{1/2})^{1/2} \right)

    The last trace is the sum of the square roots of the eigenvalues of
    :math:`L_i^T \Sigma_j L_i`, with :math:`\Sigma_i = L_i L_i^T`. Of diagonal covariances,
    given as their variances :math:`\sigma^2_i` with shape :math:`(K, D)`, it is the
    closed form :math:`d^2_{ij} = \| \mu_i - \mu_j \|^2 + \| \sigma_i - \sigma_j \|^2`,
    :math:`O(K^2 D)` operations instead of :math:`O(K^2 D^3)` (seconds rather than hours
    for 250 components in 784 dimensions).

    References:
        | The Fréchet distance between multivariate normal distributions
        | (Dowson et al., 1982) https://doi.org/10.1016/0047-259X(82)90077-X

    Arguments:
        loc: The means, with shape :math:`(K, D)`.
        cov: The covariances, with shape :math:`(K, D, D)`, or the variances of diagonal
            ones, with shape :math:`(K, D)`.
        chunk: The number of rows computed at once, to bound memory.

    Example:
        >>> loc, cov = torch.tensor([[0.0], [3.0]]), torch.tensor([[[1.0]], [[4.0]]])
        >>> frechet_distances(loc, cov)  # (0 - 3)^2 + (1 - 2)^2
        tensor([[ 0., 10.],
                [10.,  0.]])
        >>> frechet_distances(loc, cov.squeeze(-1))  # the same, diagonal
        tensor([[ 0., 10.],
                [10.,  0.]])
    """

    if cov.dim() == loc.dim():  # the variances of diagonal covariances
        points = torch.cat((loc, cov.sqrt()), dim=-1)
        distances = _distances(points, points, points.median(dim=0).values)
        return distances * (1 - torch.eye(len(loc), dtype=loc.dtype, device=loc.device))

    from .utils import cholesky

    tril = cholesky(cov)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    cross = torch.cat(
        [
            torch.linalg.eigvalsh(t.mT[:, None] @ cov @ t[:, None]).clamp(min=0).sqrt().sum(dim=-1)
            for t in tril.split(chunk)
        ]
    )
    means = _distances(loc, loc, loc.median(dim=0).values)  # no cancellation far from 0
    means = means * (1 - torch.eye(len(loc), dtype=loc.dtype, device=loc.device))

    return (means + trace[:, None] + trace - 2 * cross).clamp(min=0)


def spectral_clustering(affinity: Tensor, k: int) -> Tensor:
    r"""Clusters the nodes of a graph with a symmetric non-negative affinity matrix
    :math:`W` by the normalized spectral method: the :math:`k` leading eigenvectors of
    :math:`D^{-1/2} W D^{-1/2}`, rows normalized to unit length, then k-means.

    References:
        | On Spectral Clustering: Analysis and an algorithm (Ng et al., 2001)
        | https://papers.nips.cc/paper/2092

    Returns:
        The cluster of each node, with shape :math:`(K,)`.

    Example:
        >>> W = torch.block_diag(torch.ones(3, 3), torch.ones(2, 2)) + 1e-3
        >>> labels = spectral_clustering(W, 2)
        >>> bool(labels[0] == labels[2] != labels[3] == labels[4])
        True
    """

    scale = affinity.sum(dim=-1).rsqrt()
    _, vectors = torch.linalg.eigh(scale[:, None] * affinity * scale)
    u = vectors[:, -k:]
    u = u / u.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(u.dtype).tiny)

    return kmeans(u, k)[1]


def _gaussians(mixture: Distribution) -> tuple[Tensor, Tensor]:
    base = mixture.base
    if hasattr(base, "covariance_matrix"):
        return base.mean, base.covariance_matrix
    return base.mean, base.variance


def cluster_components(mixture: Distribution, k: int) -> Tensor:
    r"""Groups the components of a Gaussian mixture into :math:`k` clusters by spectral
    clustering with the affinity :math:`W_{ij} = \exp(-d^2_{ij} / m)`, where
    :math:`d^2_{ij}` is the squared Fréchet distance between components and :math:`m`
    its median over pairs. This is the cluster attribution of the many-component GMM
    baseline of Bender et al. (2023).

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023)
        | Proceedings of the 40th International Conference on Machine Learning, PMLR 202

    Arguments:
        mixture: A :class:`~contmix.distributions.GaussianMixture` with
            :math:`K` components and no batch shape.
        k: The number of clusters.

    Returns:
        The cluster of each component, with shape :math:`(K,)`.

    Example:
        >>> from contmix.distributions import DiagNormal, GaussianMixture
        >>> loc = torch.tensor([[0.0], [0.5], [10.0], [10.5]])
        >>> d = GaussianMixture(DiagNormal(loc, torch.ones(4, 1)), torch.zeros(4))
        >>> labels = cluster_components(d, 2)
        >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
        True
    """

    distances = frechet_distances(*_gaussians(mixture))
    off = distances[~torch.eye(len(distances), dtype=torch.bool, device=distances.device)]

    return spectral_clustering(torch.exp(-distances / off.median()), k)


def predict_clusters(mixture: Distribution, labels: Tensor, x: Tensor) -> Tensor:
    r"""Returns the most probable cluster of each sample, where the probability of a
    cluster is the sum of the responsibilities of its components.

    .. math:: p(c \mid x) = \sum_{k : \ell_k = c} p(k \mid x)

    Arguments:
        mixture: A :class:`~contmix.distributions.GaussianMixture`.
        labels: The cluster :math:`\ell_k` of each component, with shape :math:`(K,)`.
        x: The samples, with shape :math:`(N, D)`.

    Example:
        >>> from contmix.distributions import DiagNormal, GaussianMixture
        >>> loc = torch.tensor([[0.0], [0.5], [10.0]])
        >>> d = GaussianMixture(DiagNormal(loc, torch.ones(3, 1)), torch.zeros(3))
        >>> predict_clusters(d, torch.tensor([1, 1, 0]), torch.tensor([[0.2], [9.0]]))
        tensor([1, 0])
    """

    onehot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).to(x.dtype)

    return (mixture.posterior(x).exp() @ onehot).argmax(dim=-1)
