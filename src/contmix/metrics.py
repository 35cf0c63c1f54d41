r"""Evaluation metrics: bits per dimension, clustering accuracy, OOD detection."""

__all__ = [
    "aupr",
    "auroc",
    "bits_per_dim",
    "clustering_accuracy",
]

import math

import torch

from torch import Tensor


def bits_per_dim(log_prob: Tensor, features: int, levels: int = 256) -> Tensor:
    r"""Returns the bits per dimension of discrete data from the log-density
    :math:`\log p(y)` of its dequantization :math:`y \in [0, 1]^D` (see
    :func:`contmix.transforms.dequantize`).

    .. math:: \text{bpd} = \frac{-\log p(y) + D \log L}{D \log 2}

    Arguments:
        log_prob: Log-densities on :math:`[0, 1]^D`, in nats.
        features: The number of dimensions :math:`D`.
        levels: The number of levels :math:`L` of each dimension.

    Example:
        >>> bits_per_dim(torch.tensor(0.0), features=784)  # uniform on [0, 1]^D
        tensor(8.)
    """

    return (-log_prob + features * math.log(levels)) / (features * math.log(2))


def clustering_accuracy(labels: Tensor, clusters: Tensor) -> float:
    r"""Returns the fraction of samples whose cluster maps to their label under the best
    one-to-one map between clusters and labels (Hungarian matching).

    .. math:: \text{acc} = \max_{m} \frac{1}{N} \sum_n \mathbb{1}[y_n = m(c_n)]

    References:
        | The Hungarian method for the assignment problem (Kuhn, 1955)
        | https://doi.org/10.1002/nav.3800020109

    Example:
        >>> clustering_accuracy(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([2, 2, 0, 0, 0]))
        0.8
    """

    from scipy.optimize import linear_sum_assignment

    labels, clusters = torch.as_tensor(labels).long(), torch.as_tensor(clusters).long()
    if labels.shape != clusters.shape or labels.dim() != 1:
        raise ValueError(
            f"labels and clusters must be vectors of one shape, got {tuple(labels.shape)} "
            f"and {tuple(clusters.shape)}."
        )

    size = int(max(labels.max(), clusters.max())) + 1
    counts = torch.zeros(size, size, dtype=torch.long)
    counts.index_put_((clusters.cpu(), labels.cpu()), torch.ones_like(labels.cpu()), True)

    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)

    return counts[rows, cols].sum().item() / len(labels)


def _scores(inside: Tensor, outside: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.cat((inside.flatten(), outside.flatten())).double()
    positive = torch.cat((torch.ones(inside.numel()), torch.zeros(outside.numel())))
    return scores, positive.to(scores.device, torch.double)


def auroc(inside: Tensor, outside: Tensor) -> float:
    r"""Returns the area under the ROC curve of telling in-distribution samples from
    out-of-distribution ones by their score (e.g. log-likelihood): the probability
    that an in-distribution sample scores higher than an out-of-distribution one, ties
    counting one half.

    .. math:: \text{AUROC} = P(s_\text{in} > s_\text{out})
        + \tfrac{1}{2} P(s_\text{in} = s_\text{out})

    Example:
        >>> auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 3.5]))
        0.75
    """

    scores, positive = _scores(inside, outside)

    # average ranks, ties sharing the mean of their positions
    _, inverse, counts = scores.unique(return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts - 1) / 2)[inverse]

    n_in, n_out = inside.numel(), outside.numel()
    u = (ranks * positive).sum() - n_in * (n_in + 1) / 2

    return (u / (n_in * n_out)).item()


def aupr(inside: Tensor, outside: Tensor) -> float:
    r"""Returns the area under the precision-recall curve, as average precision, with
    the in-distribution samples as positives ranked by decreasing score.

    .. math:: \text{AP} = \sum_n (R_n - R_{n-1}) P_n

    where :math:`P_n` and :math:`R_n` are the precision and recall at the :math:`n`-th
    threshold.

    Example:
        >>> aupr(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 3.5]))
        0.8333333333333333
    """

    scores, positive = _scores(inside, outside)

    order = scores.argsort(descending=True)
    scores, positive = scores[order], positive[order]

    # one threshold per distinct score
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]

    tp = positive.cumsum(0)[last]
    seen = torch.arange(1, len(scores) + 1, device=scores.device, dtype=torch.double)[last]
    precision, recall = tp / seen, tp / positive.sum()
    steps = torch.diff(recall, prepend=recall.new_zeros(1))

    return (steps * precision).sum().item()
