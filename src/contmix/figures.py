r"""Figures of what a model learned: a 2-D density with its components, a grid of
images, the trajectories of a hierarchical mixture. They require matplotlib."""

__all__ = [
    "ellipse",
    "image_grid",
    "plot_density",
    "plot_trajectories",
    "trajectory_means",
]

import math

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from torch import Tensor
from torch.distributions import Distribution
from zuko.lazy import LazyDistribution

from .distributions import GaussianMixture


def ellipse(loc: Tensor, cov: Tensor, scale: float = 2.0, **kwargs: Any):
    r"""Returns the ellipse of a 2-D Gaussian at ``scale`` standard deviations,

    .. math:: \{x : (x - \mu)^T \Sigma^{-1} (x - \mu) = s^2\} ,

    whose semi-axes point along the eigenvectors :math:`v_i` of :math:`\Sigma` and have
    lengths :math:`s \sqrt{\lambda_i}`, the square roots of its eigenvalues times the scale.

    Arguments:
        loc: The mean :math:`\mu`, with shape :math:`(2,)`.
        cov: The covariance :math:`\Sigma`, with shape :math:`(2, 2)`.
        scale: The number of standard deviations :math:`s`.
        kwargs: Keyword arguments of :class:`matplotlib.patches.Ellipse`, e.g.
            ``color`` or ``alpha``.

    Returns:
        A :class:`matplotlib.patches.Ellipse` (unfilled by default), to add to axes with
        ``ax.add_patch``.

    Example:
        >>> e = ellipse(torch.zeros(2), torch.tensor([[4.0, 0.0], [0.0, 1.0]]), scale=2.0)
        >>> e.width, e.height, e.angle  # diameters 2 s sqrt(lambda)
        (8.0, 4.0, 0.0)

    Wikipedia:
        https://wikipedia.org/wiki/Multivariate_normal_distribution#Geometric_interpretation
    """

    from matplotlib.patches import Ellipse

    values, vectors = torch.linalg.eigh(cov.detach().double().cpu())  # ascending
    width, height = (2 * scale * values.clamp(min=0).flip(0).sqrt()).tolist()
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))  # the major axis

    kwargs.setdefault("fill", False)
    return Ellipse(loc.detach().tolist(), width, height, angle=angle, **kwargs)


def components(d: GaussianMixture) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns the weights :math:`(K,)`, means :math:`(K, D)` and covariances
    :math:`(K, D, D)` of the Gaussian components of a mixture, those of a mixture of
    mixtures flattened (the weights multiplied)."""

    log_w, base = d.logits.log_softmax(dim=-1), d.base
    while isinstance(base, GaussianMixture):
        log_w = log_w.unsqueeze(-1) + base.logits.log_softmax(dim=-1)
        base = base.base

    if hasattr(base, "covariance_matrix"):
        cov = base.covariance_matrix
    else:  # diagonal components
        cov = torch.diag_embed(base.variance)

    D = d.event_shape[-1]
    return log_w.exp().flatten(), base.mean.reshape(-1, D), cov.reshape(-1, D, D)


def plot_density(
    model: LazyDistribution | Distribution | Callable[[Tensor], Tensor],
    ax: Any = None,
    c: Tensor | None = None,
    extent: Sequence[float] | None = None,
    bins: int | Sequence[int] = 256,
    scale: float | None = 2.0,
    log: bool = False,
    cmap: str = "magma",
    color: str = "cyan",
):
    r"""Draws a 2-D density :math:`p(x)` on a grid and, for a Gaussian mixture, the
    ellipse of each component :math:`k` at ``scale`` standard deviations (see
    :func:`ellipse`), with the opacity :math:`\pi_k / \max_j \pi_j`.

    Arguments:
        model: A 2-D distribution, a lazy distribution (a model, called with ``c``) or
            a function from points :math:`(*, 2)` to log-densities :math:`(*)`, e.g. an
            unnormalized target.
        ax: The :class:`matplotlib.axes.Axes` to draw on (a new figure's if :py:`None`).
        c: A context, for a conditional model.
        extent: The window :math:`(x_0, x_1, y_0, y_1)`. By default, three standard
            deviations around the mean of a distribution that has them (not a CWM).
        bins: The number of grid points along each axis, or along :math:`(x, y)`.
        scale: The number of standard deviations of the ellipses, :py:`None` for none.
        log: Whether to draw :math:`\log p(x)` rather than :math:`p(x)`.
        cmap: The colormap of the density.
        color: The color of the ellipses.

    Returns:
        The axes, with the density as their image and the ellipses as their patches.

    Example:
        >>> from contmix import GMM
        >>> ax = plot_density(GMM(features=2, components=3), bins=32)
        >>> ax.images[0].get_array().shape, len(ax.patches)
        ((32, 32), 3)
    """

    import matplotlib.pyplot as plt

    d, log_prob = density(model, c)
    extent = window(d) if extent is None else tuple(extent)

    nx, ny = (bins, bins) if isinstance(bins, int) else bins
    x0, x1, y0, y1 = extent
    xs, ys = torch.linspace(x0, x1, nx), torch.linspace(y0, y1, ny)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (ny, nx, 2)

    with torch.no_grad():
        z = log_prob(grid.to(dtype_of(model, d)))
    z = z if log else z.exp()

    if ax is None:
        ax = plt.figure().add_subplot()
    ax.imshow(z.float().cpu().numpy(), extent=extent, origin="lower", cmap=cmap)

    if scale is not None:
        if not isinstance(d, GaussianMixture):
            raise ValueError("Only a Gaussian mixture has ellipses: pass scale=None.")
        weights, locs, covs = components(d)
        for w, loc, cov in zip(weights / weights.max(), locs, covs, strict=True):
            ax.add_patch(ellipse(loc, cov, scale, color=color, alpha=w.item(), lw=1))

    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xticks([])
    ax.set_yticks([])

    return ax


def density(
    model: LazyDistribution | Distribution | Callable[[Tensor], Tensor], c: Tensor | None
) -> tuple[Distribution | None, Callable[[Tensor], Tensor]]:
    r"""Returns the 2-D distribution of a model (:py:`None` for a function) and its
    log-density."""

    if isinstance(model, LazyDistribution):
        model = model(c)

    if not isinstance(model, Distribution):
        return None, model
    if model.batch_shape != () or model.event_shape != (2,):
        raise ValueError(
            "plot_density draws one 2-D distribution, got batch shape "
            f"{tuple(model.batch_shape)} and event shape {tuple(model.event_shape)}."
        )

    return model, model.log_prob


def window(d: Distribution | None, sigmas: float = 3.0) -> tuple[float, ...]:
    r"""Returns the window :math:`(x_0, x_1, y_0, y_1)` of ``sigmas`` standard deviations
    around the mean of a 2-D distribution."""

    try:
        with torch.no_grad():
            mean, std = d.mean.double().cpu(), d.variance.double().cpu().sqrt()
    except (AttributeError, NotImplementedError):  # a function, a CWM
        raise ValueError("The density has no mean: pass extent=(x0, x1, y0, y1).") from None

    low, high = (mean - sigmas * std).tolist(), (mean + sigmas * std).tolist()

    return low[0], high[0], low[1], high[1]


def dtype_of(model: Any, d: Distribution | None) -> torch.dtype:
    r"""Returns the floating-point type of a model's parameters or a distribution's."""

    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.dtype

    for name in ("logits", "mean"):
        try:
            return getattr(d, name).dtype
        except (AttributeError, NotImplementedError):
            pass

    return torch.get_default_dtype()


def tile(images: Tensor, nrow: int, padding: int) -> Tensor:
    r"""Tiles images :math:`(N, H, W, *)` into one array of rows of ``nrow`` images,
    separated and surrounded by ``padding`` pixels of NaN (blank), with shape
    :math:`(r (H + p) + p, c (W + p) + p, *)`."""

    N, H, W = images.shape[:3]
    rows, cols = math.ceil(N / nrow), min(N, nrow)
    p = padding

    grid = images.new_full((rows * (H + p) + p, cols * (W + p) + p, *images.shape[3:]), math.nan)
    for n, image in enumerate(images):
        i, j = divmod(n, nrow)
        top, left = p + i * (H + p), p + j * (W + p)
        grid[top : top + H, left : left + W] = image

    return grid


def image_grid(
    images: Tensor,
    shape: Sequence[int] | None = None,
    nrow: int = 8,
    ax: Any = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    padding: int = 1,
    labels: Sequence[str] | None = None,
    size: float = 0.6,
    cmap: str = "gray_r",
    vmin: float | None = None,
    vmax: float | None = None,
):
    r"""Draws images as a grid, ``nrow`` to a row, in one image of the axes: samples of
    an image model, its component means, its loadings.

    Arguments:
        images: The images, flat :math:`(*, D)` with :math:`D` the product of ``shape``,
            or shaped :math:`(N, *\text{shape})`, in the order of the grid.
        shape: The image shape, :math:`(H, W)` or :math:`(C, H, W)` with 1 or 3 channels;
            by default, the shape of the images after their first dimension.
        nrow: The number of images in a row.
        ax: The :class:`matplotlib.axes.Axes` to draw on (a new figure's if :py:`None`,
            ``size`` inches per image).
        transform: A map applied to the images first, e.g. from logit space to pixel
            intensities (the inverse of a :class:`~contmix.transforms.LogitTransform`).
        padding: The number of blank pixels between and around the images.
        labels: A label for each row, drawn on the left.
        size: The size of one image in a new figure, in inches.
        cmap: The colormap of single-channel images.
        vmin: The value of the colormap's first color (the images' minimum by default).
        vmax: The value of its last color (the images' maximum by default).

    Returns:
        The axes, whose image is the grid: the images in rows of ``nrow``, separated by
        ``padding`` pixels of NaN (drawn blank).

    Example:
        >>> ax = image_grid(torch.rand(10, 64), (8, 8), nrow=5)
        >>> ax.images[0].get_array().shape  # 2 rows of 5 images of 8 x 8, 1 pixel apart
        (19, 46)
    """

    import matplotlib.pyplot as plt

    images = images.detach()
    if transform is not None:
        images = transform(images)
    shape = images.shape[1:] if shape is None else tuple(shape)
    images = images.reshape(-1, *shape).float().cpu()
    if len(shape) == 3:  # (C, H, W) to (H, W, C), one channel to none
        images = images.movedim(1, -1).squeeze(-1)

    grid = tile(images, nrow, padding)

    if ax is None:
        rows, cols = math.ceil(len(images) / nrow), min(len(images), nrow)
        ax = plt.figure(figsize=(cols * size, rows * size)).add_subplot()
    ax.imshow(grid.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)

    if labels is not None:
        H = images.shape[1]
        ax.set_yticks([padding + H / 2 - 0.5 + i * (H + padding) for i in range(len(labels))])
        ax.set_yticklabels(labels)
        ax.tick_params(left=False)

    return ax


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
