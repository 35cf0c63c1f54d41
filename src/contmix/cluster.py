r"""Cluster centres for initialization: random, k-means++ and k-means."""

__all__ = [
    "assign",
    "kmeans",
    "kmeans_plusplus",
    "random_centers",
]

import torch

from torch import Tensor


def _distances(x: Tensor, centers: Tensor) -> Tensor:
    r"""Squared Euclidean distances, with shape :math:`(N, K)`, as matrix products."""

    d = (x * x).sum(dim=-1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(dim=-1)
    return d.clamp(min=0)


def assign(x: Tensor, centers: Tensor) -> Tensor:
    r"""Returns the index of the nearest centre of each sample.

    Example:
        >>> assign(torch.tensor([[0.0], [0.9], [3.0]]), torch.tensor([[0.0], [2.0]]))
        tensor([0, 0, 1])
    """

    return _distances(x, centers).argmin(dim=-1)


def random_centers(x: Tensor, k: int) -> Tensor:
    r"""Returns :math:`k` distinct samples of :math:`x`, drawn uniformly.

    Example:
        >>> random_centers(torch.randn(100, 3), 4).shape
        torch.Size([4, 3])
    """

    return x[torch.randperm(len(x), device=x.device)[:k]]


def kmeans_plusplus(x: Tensor, k: int) -> Tensor:
    r"""Returns :math:`k` centres by k-means++ seeding: each new centre is a sample drawn
    with probability proportional to its squared distance to the nearest centre so far.

    References:
        | k-means++: The Advantages of Careful Seeding (Arthur et al., 2007)
        | https://dl.acm.org/doi/10.5555/1283383.1283494

    Example:
        >>> x = torch.cat((torch.randn(50, 2) - 10, torch.randn(50, 2) + 10))
        >>> c = kmeans_plusplus(x, 2)
        >>> bool(c[0, 0] * c[1, 0] < 0)  # one centre per blob
        True
    """

    N = len(x)
    index = torch.randint(N, (1,), device=x.device)
    centers = x[index]
    nearest = _distances(x, centers).squeeze(-1)

    for _ in range(1, k):
        total = nearest.sum()
        weights = nearest if total > 0 else torch.ones_like(nearest)
        index = torch.multinomial(weights, 1)
        centers = torch.cat((centers, x[index]))
        nearest = torch.minimum(nearest, _distances(x, x[index]).squeeze(-1))

    return centers


def kmeans(
    x: Tensor,
    k: int,
    iterations: int = 100,
    centers: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Runs Lloyd's algorithm until the assignments stop changing.

    Starts from k-means++ centres unless ``centers`` is given. A cluster that empties is
    moved to the sample farthest from its centre, so every cluster keeps samples.

    Wikipedia:
        https://wikipedia.org/wiki/K-means_clustering

    Arguments:
        x: The samples, with shape :math:`(N, D)`.
        k: The number of clusters.
        iterations: The maximum number of iterations.
        centers: Initial centres, with shape :math:`(k, D)`.

    Returns:
        The centres, with shape :math:`(k, D)`, and the labels, with shape :math:`(N,)`.

    Example:
        >>> x = torch.cat((torch.randn(50, 2) - 10, torch.randn(50, 2) + 10))
        >>> centers, labels = kmeans(x, 2)
        >>> torch.bincount(labels).tolist()
        [50, 50]
    """

    if centers is None:
        centers = kmeans_plusplus(x, k)

    labels = None

    for _ in range(iterations):
        distances = _distances(x, centers)
        new = distances.argmin(dim=-1)

        counts = torch.bincount(new, minlength=k)
        empty = (counts == 0).nonzero().squeeze(-1)
        if len(empty) > 0:
            far = distances.gather(-1, new[:, None]).squeeze(-1).topk(len(empty)).indices
            new[far] = empty
            counts = torch.bincount(new, minlength=k)

        if labels is not None and torch.equal(new, labels):
            break

        labels = new
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        centers = sums / counts[:, None].to(x.dtype)

    return centers, labels
