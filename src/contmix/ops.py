r"""Mahalanobis distances of samples to many Gaussian components, exact in float32.

Every component family needs, for samples :math:`x_n` and components :math:`k`, the
squared distance :math:`q_{nk} = \sum_i \lambda_{ki} (x_{ni} - \mu_{ki})^2` under a
diagonal precision :math:`\lambda_k`, and the projections
:math:`z_{nk} = W_k (x_n - \mu_k)` by matrices :math:`W_k` of :math:`R` rows (the
whitened loadings of a low-rank covariance, or the inverse Cholesky factor of a full
one). Expanded as :math:`\sum_i \lambda_{ki} x_{ni}^2 - 2 \lambda_{ki} x_{ni} \mu_{ki} +
\lambda_{ki} \mu_{ki}^2`, they are matrix products, but in floating point the three
terms cancel: the error is :math:`\epsilon \, \| x_n - c \|^2_{\lambda_k}` for the point
:math:`c` around which the form is expanded, so that a sample that sits on a narrow
component far from :math:`c` (a far outlier, a variance at its floor, data offset by
:math:`10^4`) gets a density off by thousands of nats in float32.

Here each sample is expanded around its own *anchor*, the mean :math:`a_n = \mu_{j(n)}`
nearest to it, with :math:`u_n = x_n - a_n` formed exactly. With
:math:`\Delta_{jk} = \mu_j - \mu_k`,

.. math:: x_n - \mu_k = u_n + \Delta_{j(n) k}, \quad
    q_{nk} = \| u_n \|^2_{\lambda_k} + 2 \, u_n^T \Lambda_k \Delta_{j(n) k}
        + \| \Delta_{j(n) k} \|^2_{\lambda_k}, \quad
    z_{nk} = W_k u_n + W_k \Delta_{j(n) k} .

The first terms are matrix products of the small :math:`u_n` with all components at
once, over chunks of samples (:class:`_Rows`, which recomputes the chunks in its
backward pass). The tables :math:`T_{jk} = \| \Delta_{jk} \|^2_{\lambda_k}` and
:math:`P_{jk} = W_k \Delta_{jk}` are computed once per call, in float64
(:math:`O(K^2 D R)`, like :math:`K` more samples).

The cross term :math:`u_n^T \Lambda_k \Delta_{j(n) k}` cannot be one product with a
matrix that depends on the anchor, so it is expanded around centres, with an error of
:math:`\epsilon \, \| u_n \|_{\lambda_k} \| \mu - c \|_{\lambda_k}`: small because
:math:`u_n` is, as long as the centre :math:`c` is near the means involved. The means
are therefore split into *groups* (:func:`groups`): the connected components of the
graph joining two means nearer than 100 standard deviations. Within a group, the terms
are expanded around the group's centre (a group of one mean is its own centre, so a
sample on a narrow isolated component is evaluated exactly, as torch would with
:math:`x_n - \mu_k` formed directly); between groups, which are far apart, around the
median of the means, where a relative error of :math:`\epsilon` is harmless.

The anchor is a constant of the expansion: :math:`q` and :math:`z` do not depend on it,
so it carries no gradient. With fewer samples than components, the differences are
formed directly instead (:func:`pairwise`). What it costs next to one expanded form
around one centre: the search for the anchors (one product with :math:`K` columns),
two gathers per sample, and the tables; see ``docs/benchmarks/mfa.md``.
"""

__all__ = [
    "anchors",
    "center",
    "diag_mahalanobis",
    "groups",
    "known",
    "logsumexp",
    "pairwise",
    "project",
    "tied_mahalanobis",
]

from typing import NamedTuple

import torch

from torch import Tensor
from torch.utils.checkpoint import checkpoint

CHUNK = 2**22  # elements of the differences formed at once
ROWS = 128  # samples expanded at once


def _pairwise(rows: Tensor, loc: Tensor, precision: Tensor, weight: Tensor):
    diff = rows.unsqueeze(-2) - loc  # (J, K, D), exact when rows and means are close
    q = torch.einsum("jkd,kd->jk", diff.square(), precision)
    z = torch.einsum("jkd,krd->jkr", diff, weight)
    return q, z


def pairwise(
    rows: Tensor, loc: Tensor, precision: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Returns :math:`q_{jk} = \sum_i \lambda_{ki} (r_{ji} - \mu_{ki})^2` and
    :math:`z_{jk} = W_k (r_j - \mu_k)` from differences formed directly, in chunks of
    rows whose differences are recomputed in the backward pass, so that memory stays
    bounded.

    Arguments:
        rows: The points :math:`r_j`, with shape :math:`(J, D)`.
        loc: The means :math:`\mu_k`, with shape :math:`(K, D)`.
        precision: The diagonal precisions :math:`\lambda_k`, with shape :math:`(K, D)`.
        weight: The matrices :math:`W_k`, with shape :math:`(K, R, D)`, or none.

    Returns:
        :math:`q`, with shape :math:`(J, K)`, and :math:`z`, with shape :math:`(J, K, R)`.

    Example:
        >>> q, z = pairwise(torch.zeros(1, 2), torch.ones(3, 2), torch.ones(3, 2))
        >>> q
        tensor([[2., 2., 2.]])
    """

    K, D = loc.shape
    if weight is None:
        weight = loc.new_zeros(K, 0, D)

    step = max(1, CHUNK // max(K * D, 1))
    parts = []
    for chunk in rows.split(step):
        if torch.is_grad_enabled() and len(rows) > step:
            parts.append(checkpoint(_pairwise, chunk, loc, precision, weight, use_reentrant=False))
        else:
            parts.append(_pairwise(chunk, loc, precision, weight))

    if not parts:
        return rows.new_zeros(0, K), rows.new_zeros(0, K, weight.shape[-2])

    q, z = zip(*parts, strict=True)
    return torch.cat(q), torch.cat(z)


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


class _Rows(torch.autograd.Function):
    r"""Returns, for the offsets :math:`u_n = x_n - a_{j(n)}` of samples from their
    anchors, the products :math:`u_n M^T`, with shape :math:`(N, P)`,
    :math:`((u_n + t_{j(n)}) \odot u_n) \lambda^T` and, given shifts :math:`s`,
    :math:`(s_{j(n)} \odot u_n) \lambda^T`, with shape :math:`(S, N, K)`, as matrix
    products over chunks of samples, each chunk kept in cache through its element-wise
    steps. Only the inputs are saved: the backward pass recomputes the offsets, so the
    working memory is that of the outputs, never :math:`O(N D)` (except
    :math:`\nabla_x`). Its rules for :func:`torch.func.vmap` are generated from the
    forward and backward passes, which are made of torch operations."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor,
        matrix: Tensor,
        metric: Tensor,
        index: Tensor,
        means: Tensor,
        local: Tensor,
        shift: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        out, products = [], []
        for u, v, w in _Rows.chunks(x, index, means, local, shift):
            out.append(u @ matrix.mT)
            rows = v.mul_(u) if w is None else torch.cat((v.mul_(u), w.mul_(u)))
            products.append((rows @ metric.mT).unflatten(0, (-1, len(u))))

        return torch.cat(out), torch.cat(products, dim=1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.shifted = inputs[-1] is not None
        ctx.save_for_backward(*inputs[:-1], *inputs[-1:] if ctx.shifted else ())

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_products: Tensor):
        x, matrix, metric, index, means, local, *shift = ctx.saved_tensors
        shift = shift[0] if ctx.shifted else None

        grad_matrix, grad_metric, grad_x, start = 0, 0, [], 0
        for u, v, w in _Rows.chunks(x, index, means, local, shift):
            go = grad_out[start : start + len(u)]
            gp = grad_products[:, start : start + len(u)]
            start = start + len(u)

            rows = (v * u) if w is None else torch.cat((v * u, w * u))
            grad_matrix = grad_matrix + go.mT @ u
            grad_metric = grad_metric + gp.flatten(0, 1).mT @ rows
            if ctx.needs_input_grad[0]:  # d/du of (u + t) u is 2 u + t, of s u is s
                back = gp @ metric
                dx = go @ matrix + back[0] * (v + u)
                grad_x.append(dx if w is None else dx + back[1] * w)

        grad_x = torch.cat(grad_x) if grad_x else None

        return grad_x, grad_matrix, grad_metric, None, None, None, None

    @staticmethod
    def chunks(x: Tensor, index: Tensor, means: Tensor, local: Tensor, shift: Tensor | None):
        r"""Yields, chunk by chunk, the offsets :math:`u`, :math:`u + t_{j(n)}` and
        :math:`s_{j(n)}` (or none)."""

        for x_, i_ in zip(x.split(ROWS), index.split(ROWS), strict=True):
            u = x_ - means.index_select(0, i_)
            v = local.index_select(0, i_).add_(u)
            w = None if shift is None else shift.index_select(0, i_)
            yield u, v, w


def diag_mahalanobis(
    x: Tensor, loc: Tensor, precision: Tensor | None, weight: Tensor | None = None
) -> tuple[Tensor | None, Tensor]:
    r"""Returns :math:`q_{nk} = \sum_i \lambda_{ki} (x_{ni} - \mu_{ki})^2`, with shape
    :math:`(N, K)`, and :math:`z_{nk} = W_k (x_n - \mu_k)`, with shape
    :math:`(N, K, R)`, for samples shared by all components, each sample expanded
    around its nearest mean (see the module).

    Arguments:
        x: The samples, with shape :math:`(N, D)`.
        loc: The means :math:`\mu_k`, with shape :math:`(K, D)`.
        precision: The diagonal precisions :math:`\lambda_k`, with shape :math:`(K, D)`,
            or none, for :math:`z` alone.
        weight: The matrices :math:`W_k`, with shape :math:`(K, R, D)`, or none.

    Example:
        >>> loc, precision = torch.tensor([[1e6], [0.0]]), torch.ones(2, 1)
        >>> q, _ = diag_mahalanobis(torch.tensor([[1e6 + 1], [1.0], [2.0]]), loc, precision)
        >>> q
        tensor([[1.0000e+00, 1.0000e+12],
                [1.0000e+12, 1.0000e+00],
                [1.0000e+12, 4.0000e+00]])
    """

    (N, D), K = x.shape, len(loc)
    if weight is None:
        weight = loc.new_zeros(K, 0, D)
    metric = torch.zeros_like(loc) if precision is None else precision
    if N <= K:
        q, z = pairwise(x, loc, metric, weight)
        return (None if precision is None else q), z

    origin = center(loc)
    g = _groups(
        loc.detach(), None if precision is None else metric.detach(), weight.detach(), origin
    )
    R = weight.shape[-2]
    table, offset = _tables(loc, metric, weight, g, wide=precision is None)
    means = loc.detach()
    index = anchors(x, means, origin)

    if precision is None:  # the projections alone
        u = x - means.index_select(0, index)
        z = (u @ weight.flatten(0, 1).mT).unflatten(-1, (K, R))
        return None, z + offset.index_select(0, index)

    # one product for z and the cross terms: (u + 2 (a - c_g)) u and, between groups,
    # s_g u against the diagonal metric
    cols = loc - means + g.local  # mu_k - c_h(k), with the gradient of mu_k
    both = [weight.flatten(0, 1), cols * metric] + ([] if g.single else [g.shift * metric])
    shift = None if g.single else g.shift
    out, products = _Rows.apply(x, torch.cat(both), metric, index, means, 2 * g.local, shift)

    z = out[:, : K * R].unflatten(-1, (K, R)) + offset.index_select(0, index)
    q = products[0] - 2 * out[:, K * R : K * R + K] + table.index_select(0, index)
    if not g.single:  # between groups far apart, around the global centre
        between = products[1] - out[:, K * R + K :]
        apart = g.label.index_select(0, index).unsqueeze(-1) != g.label
        q = torch.where(apart, q + 2 * between, q)

    return q, z


def project(x: Tensor, loc: Tensor, weight: Tensor) -> Tensor:
    r"""Returns :math:`z_{nk} = W_k (x_n - \mu_k)`, with shape :math:`(N, K, R)`, for
    samples shared by all components, each expanded around its nearest mean.

    Arguments:
        x: The samples, with shape :math:`(N, D)`.
        loc: The means :math:`\mu_k`, with shape :math:`(K, D)`.
        weight: The matrices :math:`W_k`, with shape :math:`(K, R, D)`.

    Example:
        >>> project(torch.tensor([[1e6 + 1], [3.0]]), torch.tensor([[1e6]]), torch.ones(1, 1, 1))
        tensor([[[ 1.0000e+00]],
        <BLANKLINE>
                [[-1.0000e+06]]])
    """

    return diag_mahalanobis(x, loc, None, weight)[1]


def tied_mahalanobis(x: Tensor, loc: Tensor, weight: Tensor) -> Tensor:
    r"""Returns :math:`\| W (x_n - \mu_k) \|^2`, with shape :math:`(N, K)`, for one
    matrix :math:`W` with shape :math:`(D, D)` shared by the components (a tied
    covariance :math:`\Sigma = (W^T W)^{-1}`), each sample expanded around its nearest
    mean: with :math:`y_n = W u_n`,

    .. math:: \| W (x_n - \mu_k) \|^2 = \| y_n \|^2
        + 2 y_n^T W (a_n - \mu_k) + \| W \Delta_{j(n) k} \|^2 .

    Example:
        >>> x, loc = torch.tensor([[1e6 + 1], [1.0], [2.0]]), torch.tensor([[1e6], [0.0]])
        >>> tied_mahalanobis(x, loc, torch.eye(1))
        tensor([[1.0000e+00, 1.0000e+12],
                [1.0000e+12, 1.0000e+00],
                [1.0000e+12, 4.0000e+00]])
    """

    (N, D), K = x.shape, len(loc)
    stack = weight.expand(K, D, D)
    zero = torch.zeros_like(loc)
    if N <= K:
        return pairwise(x, loc, zero, stack)[1].square().sum(dim=-1)

    origin = center(loc)
    g = _groups(loc.detach(), None, stack.detach(), origin)
    offset = _tables(loc, zero, stack, g)[1]
    table = offset.square().sum(dim=-1)
    means = loc.detach()
    index = anchors(x, means, origin)

    y = (x - means.index_select(0, index)) @ weight.mT
    local = (loc - means + g.local) @ weight.mT  # W (mu_k - c_h(k))
    anchor_local = g.local.index_select(0, index) @ weight.mT  # W (a_n - c_g(n))
    row = (y * (y + 2 * anchor_local)).sum(dim=-1, keepdim=True)
    maha = row - 2 * y @ local.mT

    if not g.single:  # between groups far apart, around the global centre
        shift = g.shift @ weight.mT
        between = (y * shift.index_select(0, index)).sum(dim=-1, keepdim=True) - y @ shift.mT
        apart = g.label.index_select(0, index).unsqueeze(-1) != g.label
        maha = torch.where(apart, maha + 2 * between, maha)

    return maha + table.index_select(0, index)


class _LogSumExp(torch.autograd.Function):
    r"""The log-sum-exp over the last dimension, whose gradient, the softmax, is set to
    zero below the smallest normal number: far components would otherwise fill the
    gradients with subnormal numbers, on which the matrix products of the backward
    pass run up to 20 times slower on x86 CPUs."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.logsumexp(x, dim=-1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, output = ctx.saved_tensors
        p = (x - output.unsqueeze(-1)).exp()
        p = torch.where(p < torch.finfo(p.dtype).tiny, 0, p)
        return grad.unsqueeze(-1) * p


def logsumexp(x: Tensor) -> Tensor:
    r"""Returns :math:`\log \sum_k \exp x_k` over the last dimension, as
    :func:`torch.logsumexp`, with a gradient free of subnormal numbers.

    Example:
        >>> logsumexp(torch.zeros(2, 4))
        tensor([1.3863, 1.3863])
    """

    return _LogSumExp.apply(x)
