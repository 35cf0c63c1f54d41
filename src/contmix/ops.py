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
formed directly instead (:func:`pairwise`). The anchors and the groups are in
:mod:`contmix.anchors`. What it costs next to one expanded form
around one centre: the search for the anchors (one product with :math:`K` columns),
two gathers per sample, and the tables; see ``docs/benchmarks/mfa.md``.
"""

__all__ = [
    "diag_mahalanobis",
    "logsumexp",
    "pairwise",
    "project",
    "tied_mahalanobis",
]


import torch

from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .anchors import _groups, _tables, anchors, center

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
    maha = row - y @ (2 * local).mT  # scaling the K rows, not the N, and exactly

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
