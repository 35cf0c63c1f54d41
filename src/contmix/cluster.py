r"""Clustering: centres for initialization (random, k-means++, k-means) and spectral
clustering of the components of a mixture."""

__all__ = [
    "assign",
    "cluster_components",
    "frechet_distances",
    "kmeans",
    "kmeans_plusplus",
    "predict_clusters",
    "random_centers",
    "spectral_clustering",
]

import torch

from torch import Tensor
from torch.distributions import Distribution

from .distributed import all_reduce, gather, is_sharded, rank


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


def _draw(x: Tensor, weights: Tensor) -> Tensor:
    r"""Returns one sample, with shape :math:`(1, D)`, drawn with probability
    proportional to its weight among the samples of all shards: the shard by its total
    weight, then the sample within it, from one uniform number that every process draws
    alike; its owner sends it to the others."""

    if not is_sharded():
        return x[torch.multinomial(weights, 1)]

    masses = gather(weights.sum())
    cumulative = masses.cumsum(dim=0)
    u = torch.rand((), dtype=masses.dtype, device=x.device) * cumulative[-1]
    owner = torch.searchsorted(cumulative, u, right=True).clamp(max=len(masses) - 1)
    point = x.new_zeros(1, x.shape[-1])

    if owner == rank():
        local = (u - cumulative[owner] + masses[owner]).to(weights.dtype)
        index = torch.searchsorted(weights.cumsum(dim=0), local, right=True)
        point = x[index.clamp(max=len(x) - 1)].unsqueeze(0)

    return all_reduce(point)


def _reseed(distances: Tensor, labels: Tensor, empty: Tensor) -> Tensor:
    r"""Moves the samples of all shards farthest from their centres to the empty
    clusters, one each, and returns the new labels."""

    own = distances.gather(-1, labels[:, None]).squeeze(-1)
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


def kmeans_plusplus(x: Tensor, k: int) -> Tensor:
    r"""Returns :math:`k` centres by k-means++ seeding: each new centre is a sample drawn
    with probability proportional to its squared distance to the nearest centre so far.
    Within :func:`~contmix.distributed.sharded`, :math:`x` is this process's shard and
    the centres are drawn among the samples of all shards, the same on every process
    provided that the random generator is seeded alike on all of them.

    References:
        | k-means++: The Advantages of Careful Seeding (Arthur et al., 2007)
        | https://dl.acm.org/doi/10.5555/1283383.1283494

    Example:
        >>> x = torch.cat((torch.randn(50, 2) - 10, torch.randn(50, 2) + 10))
        >>> c = kmeans_plusplus(x, 2)
        >>> bool(c[0, 0] * c[1, 0] < 0)  # one centre per blob
        True
    """

    if is_sharded():
        centers = _draw(x, torch.ones_like(x[:, 0]))
    else:
        centers = x[torch.randint(len(x), (1,), device=x.device)]

    nearest = _distances(x, centers).squeeze(-1)

    for _ in range(1, k):
        total = all_reduce(nearest.sum())
        weights = nearest if total > 0 else torch.ones_like(nearest)
        center = _draw(x, weights)
        centers = torch.cat((centers, center))
        nearest = torch.minimum(nearest, _distances(x, center).squeeze(-1))

    return centers


def _unchanged(new: Tensor, labels: Tensor) -> bool:
    r"""Returns whether no label changed on any shard."""

    if is_sharded():
        return bool(all_reduce((new != labels).sum()) == 0)

    return torch.equal(new, labels)


def kmeans(
    x: Tensor,
    k: int,
    iterations: int = 100,
    centers: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Runs Lloyd's algorithm until the assignments stop changing.

    Starts from k-means++ centres unless ``centers`` is given. A cluster that empties is
    moved to the sample farthest from its centre, so every cluster keeps samples.
    Within :func:`~contmix.distributed.sharded`, :math:`x` is this process's shard: the
    sums and counts of the clusters are over all shards, the farthest samples are those
    of all shards, and every process returns the same centres (and the labels of its
    own shard).

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

        counts = all_reduce(torch.bincount(new, minlength=k))
        empty = (counts == 0).nonzero().squeeze(-1)
        if len(empty) > 0:
            new = _reseed(distances, new, empty)
            counts = all_reduce(torch.bincount(new, minlength=k))

        if labels is not None and _unchanged(new, labels):
            break

        labels = new
        sums = all_reduce(torch.zeros_like(centers).index_add_(0, labels, x))
        centers = sums / counts[:, None].to(x.dtype)

    return centers, labels


def frechet_distances(loc: Tensor, cov: Tensor, chunk: int = 16) -> Tensor:
    r"""Returns the squared Fréchet (2-Wasserstein) distances between all pairs of
    Gaussians :math:`\mathcal{N}(\mu_i, \Sigma_i)`, with shape :math:`(K, K)`.

    .. math:: d^2_{ij} = \| \mu_i - \mu_j \|^2 + \operatorname{tr}(\Sigma_i + \Sigma_j)
        - 2 \operatorname{tr} \left( (\Sigma_i^{1/2} \Sigma_j \Sigma_i^{1/2})^{1/2} \right)

    The last trace is the sum of the square roots of the eigenvalues of
    :math:`L_i^T \Sigma_j L_i`, with :math:`\Sigma_i = L_i L_i^T`.

    References:
        | The Fréchet distance between multivariate normal distributions
        | (Dowson et al., 1982) https://doi.org/10.1016/0047-259X(82)90077-X

    Arguments:
        loc: The means, with shape :math:`(K, D)`.
        cov: The covariances, with shape :math:`(K, D, D)`.
        chunk: The number of rows computed at once, to bound memory.

    Example:
        >>> loc, cov = torch.tensor([[0.0], [3.0]]), torch.tensor([[[1.0]], [[4.0]]])
        >>> frechet_distances(loc, cov)  # (0 - 3)^2 + (1 - 2)^2
        tensor([[ 0., 10.],
                [10.,  0.]])
    """

    from .utils import cholesky

    tril = cholesky(cov)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    cross = torch.cat(
        [
            torch.linalg.eigvalsh(t.mT[:, None] @ cov @ t[:, None]).clamp(min=0).sqrt().sum(dim=-1)
            for t in tril.split(chunk)
        ]
    )
    means = torch.cdist(loc, loc).square()

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
    return base.mean, torch.diag_embed(base.variance)


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
