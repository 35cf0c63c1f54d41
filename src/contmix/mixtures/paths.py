r"""Mixtures of factor analyzers fitted by EM and laid out along paths: the start of a
continuously parameterized mixture (:class:`~contmix.CPMM`) where a direct fit ends."""

__all__ = [
    "PathComponents",
    "align_loadings",
    "path_components",
    "path_groups",
]

from typing import NamedTuple

import torch

from torch import Tensor

from .groups import group_labels, order_path, ward_groups
from .mfa import MFA


class PathComponents(NamedTuple):
    r"""The result of :func:`path_components`, for :math:`C` groups of :math:`G`
    components in :math:`M` dimensions with loadings of rank :math:`R`."""

    logits: Tensor  #: The log-weights of the groups, with shape :math:`(C,)`.
    log_weights: Tensor  #: The log-weights within each group, with shape :math:`(C, G)`.
    loc: Tensor  #: The means, with shape :math:`(C, G, M)`.
    factor: Tensor  #: The loadings, with shape :math:`(C, G, M, R)`.
    diag: Tensor  #: The diagonals, with shape :math:`(C, G, M)`.


def align_loadings(factor: Tensor) -> Tensor:
    r"""Returns the loadings :math:`A_1, \dots, A_G` of a path, each rotated to follow
    the one before: :math:`A_j Q_j` with the orthogonal :math:`Q_j` closest to mapping
    :math:`A_j` onto :math:`A_{j - 1} Q_{j - 1}` (orthogonal Procrustes,
    :math:`Q = U V^T` for :math:`A_j^T A_{j - 1} Q_{j - 1} = U S V^T`).

    A factor analyzer's covariance :math:`D + A A^T` is that of :math:`A Q` for every
    orthogonal :math:`Q`: EM gives each component's loadings up to a rotation (for rank
    one, a sign), and a path through raw loadings jumps where it should glide.

    Arguments:
        factor: The loadings along the path, with shape :math:`(*, G, M, R)`.

    Example:
        >>> A = torch.tensor([[[1.0], [0.0]], [[-1.0], [0.1]]])  # a sign flip
        >>> align_loadings(A)[1].flatten().tolist()
        [1.0, -0.10000000149011612]
    """

    aligned = [factor[..., 0, :, :]]

    for j in range(1, factor.shape[-3]):
        a = factor[..., j, :, :]
        u, _, vh = torch.linalg.svd(a.mT @ aligned[-1])
        aligned.append(a @ (u @ vh))

    return torch.stack(aligned, dim=-3)


def _shrink(log_weight: Tensor, factor: Tensor, diag: Tensor, n: int, prior: float) -> Tensor:
    r"""The diagonals shrunk towards the pooled within-component variances."""

    weight = log_weight.softmax(dim=-1)
    pooled = weight @ (factor.square().sum(dim=-1) + diag)
    counts, pseudo = (n * weight)[:, None], prior * diag.shape[-1]

    return (counts * diag + pseudo * pooled) / (counts + pseudo)


@torch.no_grad()
def path_components(
    x: Tensor,
    labels: Tensor,
    groups: int,
    components: int,
    rank: int,
    n_init: int = 1,
    generator: torch.Generator | None = None,
    prior: float = 0.25,
    **kwargs,
) -> PathComponents:
    r"""Fits a mixture of factor analyzers by EM to each group of samples and lays its
    components out along a path.

    The samples with ``labels == c`` are fitted by :meth:`MFA.initialize
    <contmix.MFA.initialize>` with ``strategy="em"`` (k-means, then EM to convergence);
    its components are ordered along a path through their means
    (:func:`~contmix.mixtures.groups.order_path`) and their loadings aligned along it
    (:func:`align_loadings`). A group of :math:`n \leq G` samples gets :math:`n - 1`
    components (at least one) and repeats its last one.

    With few samples per component, EM drives the diagonals to the floor (a component
    of six samples in 64 dimensions is its samples); as in
    :func:`~contmix.mixtures.groups.group_statistics`, the diagonal of each component,
    :math:`n_k = n \pi_k` samples, is shrunk towards the pooled within-component
    variances :math:`\bar{S} = \sum_k \pi_k \operatorname{diag}(A_k A_k^T + D_k)` of its
    group, with ``prior`` pseudo-samples per feature,

    .. math:: D_k \leftarrow \frac{n_k D_k + \kappa M \bar{S}}{n_k + \kappa M} ,

    which leaves components of many samples per feature as they are: a diagonal of the
    two circles (70 samples per feature) moves by 4% of its value, one of the digits
    (0.1 sample per feature) three quarters of the way to the pooled variance.

    Arguments:
        x: The samples, with shape :math:`(N, M)`.
        labels: The group of each sample, in :math:`[0, C)`, with shape :math:`(N,)`;
            every group needs two samples.
        groups: The number of groups :math:`C`.
        components: The number of components :math:`G` per group.
        rank: The rank :math:`R` of the loadings.
        n_init: The number of EM restarts per group, of which the best is kept.
        generator: The random generator (torch's global generator if :py:`None`).
        prior: The pseudo-samples per feature :math:`\kappa` of the shrinkage.
        kwargs: The other arguments of :meth:`MFA.initialize <contmix.MFA.initialize>`
            (``tol``, ``max_iter``, ``reg``).

    Example:
        >>> x = torch.cat((torch.randn(100, 2) - 4, torch.randn(100, 2) + 4))
        >>> paths = path_components(x, torch.arange(200) // 100, groups=2, components=3, rank=1)
        >>> paths.loc.shape, paths.factor.shape, paths.logits.exp().tolist()
        (torch.Size([2, 3, 2]), torch.Size([2, 3, 2, 1]), [0.5, 0.5])
    """

    sizes = torch.bincount(labels, minlength=groups)
    if bool((sizes < 2).any()):
        raise ValueError(
            f"Every group needs two samples to fit its components by EM, got group sizes "
            f"{sizes.tolist()}: use fewer trajectories or strategy='kmeans'."
        )

    fits = []
    for c in range(groups):
        xc = x[labels == c]
        with torch.device("meta"):  # no draw from the global generator: EM sets it all
            mfa = MFA(x.shape[-1], components=min(components, len(xc) - 1), rank=rank)
        mfa = mfa.to_empty(device=x.device).to(x.dtype)
        mfa.initialize(xc, "em", n_init=n_init, generator=generator, **kwargs)
        log_weight, loc, factor, log_diag = (p.detach() for p in mfa.phi)
        diag = _shrink(log_weight, factor, log_diag.exp() + mfa.epsilon, len(xc), prior)
        order = order_path(loc)
        pad = torch.arange(components, device=x.device).clamp(max=len(order) - 1)
        order = order[pad]
        fits.append((log_weight[order], loc[order], align_loadings(factor[order]), diag[order]))

    log_weights, loc, factor, diag = (torch.stack(values) for values in zip(*fits, strict=True))
    logits = (sizes.to(x.dtype) / len(x)).log()

    return PathComponents(logits, log_weights.log_softmax(dim=-1), loc, factor, diag)


@torch.no_grad()
def path_groups(
    x: Tensor,
    groups: int,
    components: int,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    r"""Returns the group of each sample that :func:`path_components` fits, one group
    per trajectory: the labels ``y`` when given (checked), else the :math:`C`
    groups of Ward's agglomeration of :math:`C G` k-means clusters
    (:func:`~contmix.mixtures.groups.ward_groups`), as many as the components of the
    model; one group is all the samples (k-means with one cluster, as before).

    The trajectories keep the groups of their start (training moves the accuracy of
    their posterior on the digits by 0.01 to 0.03). On the 8x8 digits, seeds 0 to 2,
    the test accuracy of ``HierarchicalCPMM(64, trajectories=10, components=25,
    rank=4)`` at its start is 0.79, 0.76, 0.79 from these groups, 0.78, 0.76, 0.78
    from those of k-means with 10 restarts, 0.67, 0.76, 0.79 from one k-means run
    (``docs/benchmarks/cpmm_training.md``).

    Arguments:
        x: The samples, with shape :math:`(N, M)`.
        groups: The number of groups :math:`C`.
        components: The number of components :math:`G` per group.
        y: Optional labels in :math:`[0, C)`, with shape :math:`(N,)`.
        generator: The random generator (see
            :func:`~contmix.mixtures.groups.ward_groups`).
        progress: Whether to show progress bars (see
            :func:`~contmix.mixtures.groups.ward_groups`).

    Example:
        >>> x = torch.cat((torch.randn(60, 3) - 6, torch.randn(140, 3) + 6))
        >>> path_groups(x, 2, 4).bincount().sort().values.tolist()
        [60, 140]
    """

    if y is not None or groups == 1:
        return group_labels(x, groups, "kmeans", y, generator, progress)

    return ward_groups(x, groups, groups * components, generator, progress)
