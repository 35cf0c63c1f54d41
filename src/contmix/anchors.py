r"""The anchors and groups of the means around which :mod:`contmix.ops` expands the
Mahalanobis distances: the nearest mean of each sample (:func:`anchors`), the median of
the means (:func:`center`), the groups of means near each other (:func:`groups`) and the
tables of the differences between anchors and means, in float64, rebuilt from the means
at each call (see :mod:`contmix.ops` for the expansion itself)."""

__all__ = [
    "anchors",
    "center",
    "groups",
    "known",
]

from typing import NamedTuple

import torch

from torch import Tensor

ROWS = 128  # samples searched at once


@torch.no_grad()
def center(loc: Tensor) -> Tensor:
    r"""Returns the coordinate-wise median of the finite means, with shape :math:`(D,)`:
    a centre that one far mean does not move.

    Example:
        >>> center(torch.tensor([[0.0], [1.0], [1e6]]))
        tensor([1.])
    """

    return loc.nanmedian(dim=0).values.nan_to_num()


@torch.no_grad()
def anchors(x: Tensor, loc: Tensor, origin: Tensor) -> Tensor:
    r"""Returns the index :math:`j(n)` of the mean nearest to each sample (Euclidean,
    expanded around ``origin``), with shape :math:`(N,)`.

    Example:
        >>> loc = torch.tensor([[0.0], [4.0]])
        >>> anchors(torch.tensor([[0.1], [5.0]]), loc, center(loc))
        tensor([0, 1])
    """

    means = loc - origin
    norm = means.square().sum(dim=-1).nan_to_num(float("inf"))  # a NaN mean is no anchor
    twice = 2 * means.nan_to_num(0.0)

    return torch.cat([(norm - (x_ - origin) @ twice.mT).argmin(dim=-1) for x_ in x.split(ROWS)])


def known(flag: Tensor) -> bool:
    r"""Returns whether a boolean tensor with one element is known to be true, reading
    it only where that costs nothing: on the CPU, in eager mode. Elsewhere it returns
    :py:`False` without reading it: on other devices the read would wait for the device
    (a host synchronization), under :func:`torch.compile` it would break the graph, and
    under :func:`torch.func.vmap` a batched tensor holds one value per batch element.
    Use it only where :py:`False` is always correct, for shortcuts.

    Example:
        >>> known(torch.tensor(True)), known(torch.tensor(False))
        (True, False)
        >>> torch.func.vmap(lambda t: t & known(t))(torch.tensor([True, True]))
        tensor([False, False])
    """

    if flag.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    try:
        return bool(flag)
    except RuntimeError:  # batched by torch.func.vmap: no one value to read
        return False


NEAR = 1e4  # squared distance, in a component's own metric, that makes two means one group


@torch.no_grad()
def groups(table: Tensor) -> Tensor:
    r"""Returns the group of each component, with shape :math:`(K,)`: the connected
    components of the graph that joins two means nearer than 100 standard deviations
    of either one (:math:`T_{jk} < 10^4` or :math:`T_{kj} < 10^4`), labelled by their
    smallest member, by propagating the smallest label with pointer jumping.

    Example:
        >>> table = torch.tensor([[0.0, 1.0, 1e8], [1.0, 0.0, 1e8], [1e8, 1e8, 0.0]])
        >>> groups(table)
        tensor([0, 0, 2])
    """

    K = len(table)
    near = (table < NEAR) | (table.mT < NEAR) | torch.eye(K, dtype=torch.bool, device=table.device)
    labels = torch.arange(K, device=table.device)

    for _ in range(2 * K.bit_length() + 2):
        new = torch.where(near, labels, K).amin(dim=-1)
        new = new[new]
        if known((new == labels).all()):  # stable: stop where reading it costs nothing
            break
        labels = new

    return labels


class _Groups(NamedTuple):
    r"""The groups of the means: the offset :math:`\mu_k - c_{h(k)}` of each mean from
    its group's centre, the offset :math:`c_{h(k)} - c` of that centre from the global
    centre, and the label :math:`h(k)` of each group (none when there is one group)."""

    local: Tensor
    shift: Tensor
    label: Tensor | None

    @property
    def single(self) -> bool:
        r"""Whether all the means are known to form one group (see :func:`known`)."""

        return self.label is None


@torch.no_grad()
def _groups(loc: Tensor, metric: Tensor | None, weight: Tensor, origin: Tensor) -> _Groups:
    r"""Groups the means by :func:`groups` on the squared distances between means in
    the diagonal metric of the second one (or, without one, after its projection),
    expanded around the global centre in float64: these distances only decide which
    means are near, and float64 keeps identical means at a distance far below the
    threshold even a million standard deviations from the centre."""

    wide = torch.promote_types(loc.dtype, torch.float64)
    means = (loc - origin).to(wide)
    if metric is None:
        weight = weight.to(wide)
        z = (means @ weight.flatten(0, 1).mT).unflatten(-1, weight.shape[:2])
        table = (z - (weight @ means.unsqueeze(-1)).squeeze(-1)).square().sum(dim=-1)
    else:
        metric = metric.to(wide)
        table = means.square() @ metric.mT - 2 * means @ (means * metric).mT
        table = table + (means.square() * metric).sum(dim=-1)
    label = groups(table)

    # each group's centre, around its first member (so that a group of one is its mean)
    first = loc[label]
    size = torch.zeros_like(loc[:, 0]).index_add_(0, label, torch.ones_like(loc[:, 0]))
    spread = torch.zeros_like(loc).index_add_(0, label, loc - first)
    center = first + (spread / size.unsqueeze(-1))[label]

    # where reading a value costs nothing, one group is expanded around its centre with
    # no terms between groups (elsewhere, the general form gives the same, up to rounding)
    if known((label == 0).all()):
        label = None

    return _Groups(loc - center, center - origin, label)


def _tables(
    loc: Tensor, metric: Tensor, weight: Tensor, g: _Groups, wide: bool = True
) -> tuple[Tensor, Tensor]:
    r"""Returns :math:`T_{jk} = \| a_j - \mu_k \|^2_{\lambda_k}` and
    :math:`P_{jk} = W_k (a_j - \mu_k)`, with shapes :math:`(K, K)` and
    :math:`(K, K, R)`, expanded around the centres of the groups, where the terms are
    small (exactly zero for a group of one), and around the global centre between
    groups, which are far apart; the anchors :math:`a_j` are constants. :math:`T`, whose
    error would grow with the square of a group's extent, is computed in float64 (it is
    :math:`O(K^2 D)`, little next to the samples), and :math:`P` too unless ``wide`` is
    false (the loadings of a low-rank covariance would double their memory in float64,
    and the error of :math:`P` grows only with the extent, as the samples' own)."""

    K, R = weight.shape[:2]
    dtype = loc.dtype
    f64 = torch.promote_types(dtype, torch.float64)
    cols = loc - loc.detach() + g.local  # mu_k - c_h(k), with the gradient of mu_k

    def table(rows: Tensor, cols: Tensor) -> Tensor:
        rows, cols, m = rows.to(f64), cols.to(f64), metric.to(f64)
        T = rows.square() @ m.mT - 2 * rows @ (cols * m).mT + (cols.square() * m).sum(-1)
        return T.to(dtype)

    def project(rows: Tensor, cols: Tensor) -> Tensor:
        t = f64 if wide else dtype
        rows, cols, w = rows.to(t), cols.to(t), weight.to(t)
        P = (rows @ w.flatten(0, 1).mT).unflatten(-1, (K, R))
        return (P - (w @ cols.unsqueeze(-1)).squeeze(-1)).to(dtype)

    T, P = table(g.local, cols), project(g.local, cols)

    if g.label is not None:
        apart = g.label.unsqueeze(-1) != g.label
        T = torch.where(apart, table(g.local + g.shift, cols + g.shift), T)
        P = torch.where(apart.unsqueeze(-1), project(g.local + g.shift, cols + g.shift), P)

    return T, P
