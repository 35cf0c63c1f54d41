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

from .distances import assign, labeller, reference
from .kmeans import kmeans
from .seeding import check_generator, kmeans_plusplus, random_centers
from .spectral import cluster_components, frechet_distances, predict_clusters, spectral_clustering
