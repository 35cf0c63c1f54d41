r"""Figures of what a model learned."""

__all__ = [
    "plot_trajectories",
    "trajectory_means",
]

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from torch import Tensor
from zuko.lazy import LazyDistribution


@torch.no_grad()
def trajectory_means(model: LazyDistribution, c: Tensor | None = None) -> Tensor:
    r"""Returns the means :math:`\mu_c(t_j)` of a hierarchical mixture, with shape
    :math:`(C, G, D)`: one row per trajectory (or group), one column per pseudotime.

    Arguments:
        model: A :class:`~contmix.HierarchicalCPMM` or :class:`~contmix.HierarchicalMFA`
            (any model whose distribution is a mixture of mixtures).
        c: A context, for a conditional model.

    Example:
        >>> from contmix import HierarchicalMFA
        >>> trajectory_means(HierarchicalMFA(features=4, groups=3, components=5)).shape
        torch.Size([3, 5, 4])
    """

    d = model() if c is None else model(c)
    return d.base.base.mean.detach()


def plot_trajectories(
    model: LazyDistribution,
    shape: Sequence[int] | None = None,
    path: str | Path | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    order: Sequence[int] | None = None,
    size: float = 0.6,
):
    r"""Draws the means along each trajectory of a hierarchical mixture as a grid of
    images, trajectories from top to bottom and pseudotimes from left to right, as in
    Figure 4 of Bender et al. (2023).

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023)
        | Proceedings of the 40th International Conference on Machine Learning, PMLR 202

    Arguments:
        model: A hierarchical model (see :func:`trajectory_means`).
        shape: The image shape, :math:`(H, W)` or :math:`(C, H, W)` with 1 or 3 channels;
            by default, the model's own (an image-shaped :class:`~contmix.HierarchicalCPMM`).
        path: Where to save the figure (PNG, PDF, ...), if given.
        transform: A map from the model's space to pixel intensities, e.g. the inverse
            of a :class:`~contmix.transforms.LogitTransform`.
        order: The order in which to draw the trajectories.
        size: The size of one image, in inches.

    Returns:
        The :class:`matplotlib.figure.Figure`. Requires matplotlib.

    Example:
        >>> from contmix import HierarchicalMFA
        >>> fig = plot_trajectories(HierarchicalMFA(features=64, groups=2, components=4), (8, 8))
        >>> len(fig.axes)
        8
    """

    import matplotlib.pyplot as plt

    shape = shape or getattr(model, "shape", None)
    if shape is None:
        raise ValueError("The model has no image shape: pass shape=(H, W) or (C, H, W).")

    means = trajectory_means(model)
    if transform is not None:
        means = transform(means)
    if order is not None:
        means = means[list(order)]

    C, G = means.shape[:2]
    images = means.reshape(C, G, *shape).float().cpu()
    if len(shape) == 3:
        images = images.movedim(2, -1).squeeze(-1)

    fig, axes = plt.subplots(C, G, figsize=(G * size, C * size), squeeze=False)
    for i, j in ((i, j) for i in range(C) for j in range(G)):
        axes[i, j].imshow(images[i, j].numpy(), cmap="gray_r" if images.dim() == 4 else None)
        axes[i, j].set_axis_off()
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0, right=1, bottom=0, top=1)

    if path is not None:
        fig.savefig(path)
        plt.close(fig)

    return fig
