r"""Lloyd's algorithm (k-means) to convergence, in memory or over batches."""

import torch

from torch import Tensor

from .distances import _expanded, _own, reference
from .elkan import Elkan
from .seeding import _seeds, _seeds_batches, check_generator
from ..distributed import Data, all_reduce, batches, check_batches, gather, is_sharded, rank
from ..report import check_progress, progress_bar, warn_convergence
from ..utils import check_sizes

BOUNDS = 2**25  # the most lower bounds that Lloyd's algorithm keeps
# the dimension from which Lloyd's algorithm is bounded (K=32, N=50,000, 50 iterations,
# separated / overlapping blobs, Elkan against dense: 16-D 1.26x / 0.76x, 64-D 1.30x /
# 1.45x, 256-D 1.49x / 1.65x; 784-D Fashion-MNIST, 250 centres: 3.0x, 6.3 s against 19 s)
FEATURES = 64


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


def _unchanged(new: Tensor, labels: Tensor) -> bool:
    r"""Returns whether no label changed on any shard."""

    if is_sharded():
        return bool(all_reduce((new != labels).sum()) == 0)

    return torch.equal(new, labels)


def _bounded(x: Tensor, k: int) -> bool:
    r"""Whether Lloyd's algorithm assigns the samples through Elkan's bounds
    (:class:`~contmix.cluster.elkan.Elkan`): from :data:`FEATURES` features on, for more
    than 8 centres, on the CPU (on a GPU the selection of the samples in doubt would wait
    for the device), where the :math:`N k` lower bounds hold in :data:`BOUNDS` elements."""

    return x.shape[-1] >= FEATURES and k > 8 and x.device.type == "cpu" and len(x) * k <= BOUNDS


def _lloyd(
    x: Tensor, squares: Tensor, centers: Tensor, iterations: int, progress: bool | None = None
) -> tuple[Tensor, Tensor, Tensor, bool]:
    r"""Lloyd's algorithm on centred samples from centred centres (see :func:`kmeans`).
    Returns the centres, the labels, the inertia (of all shards) and whether the labels
    stopped changing within ``iterations``."""

    k, labels, converged, empty = len(centers), None, False, []
    bounds = Elkan(x, squares) if _bounded(x, k) else None

    with progress_bar(iterations, "k-means", progress) as bar:
        for _ in range(iterations):
            if bounds is None:
                new = _expanded(x, squares, centers).argmin(dim=-1)
            else:
                new = bounds.labels(centers).clone()
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
