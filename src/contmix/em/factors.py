r"""The sums of the M-step of mixtures of factor analyzers: the weighted sums of the
samples, of the posterior means of the factors and of their products, in float64, dense
where the responsibilities are soft and over the pairs that are not negligible where they
are nearly hard (in 784-D, about one per sample)."""

import torch

from torch import Tensor

from .base import BLOCK
from .sums import support


def statistics(x: Tensor, resp: Tensor, z: Tensor) -> tuple[Tensor, ...]:
    r"""Returns the weighted sums of the M-step, :math:`N_k = \sum_n r_{nk}`,
    :math:`\sum_n r_{nk} z_{nk}`, :math:`\sum_n r_{nk} z_{nk} z_{nk}^T`,
    :math:`\sum_n r_{nk} x_n z_{nk}^T`, :math:`\sum_n r_{nk} x_n` and :math:`\sum_n
    r_{nk} x_n^2`, of this batch, accumulated in float64 block by block whatever the
    dtype of :math:`x`: the diagonal :math:`D_k` is their difference, which cancels in float32
    where :math:`D_k` is small (a variance at its floor comes out 10 times too large)."""

    K, R = z.shape[-2:]
    step = max(1, BLOCK // (x.shape[-1] + K * R + K))  # the elements of a block
    sums = None

    for x_, r_, z_ in zip(x.split(step), resp.split(step), z.split(step), strict=True):
        x_, r_, z_ = x_.double(), r_.double(), z_.double()
        rz = r_.unsqueeze(-1) * z_
        block = (
            r_.sum(dim=0),
            rz.sum(dim=0),
            torch.einsum("nkr,nks->krs", rz, z_),
            (x_.mT @ rz.flatten(1)).unflatten(-1, (K, R)).movedim(0, 1),
            r_.mT @ x_,
            r_.mT @ x_.square(),
        )
        sums = block if sums is None else tuple(a + b for a, b in zip(sums, block, strict=True))

    return sums


def latent(x: Tensor, loc: Tensor, beta: Tensor) -> Tensor:
    r"""The posterior means of the factors :math:`z_{nk} = \beta_k (x_n - \mu_k)`, with
    shape :math:`(N, K, R)`, as one product."""

    z = (x @ beta.flatten(0, 1).mT).unflatten(-1, beta.shape[:2])

    return z - (beta @ loc.unsqueeze(-1)).squeeze(-1)


def projections(x: Tensor, loc: Tensor, beta: Tensor, rows: Tensor, comps: Tensor) -> Tensor:
    r"""Returns the posterior means of the factors :math:`z = \beta_k (x_n - \mu_k)` of the
    pairs :math:`(n, k)` = ``(rows, comps)``, with shape :math:`(P, R)`, formed from the
    differences themselves, block by block of pairs."""

    R, M = beta.shape[-2:]
    z = x.new_empty(len(rows), R)
    for n, k, z_ in zip(
        *(t.split(max(1, BLOCK // (R * M))) for t in (rows, comps, z)), strict=True
    ):
        diff = x.index_select(0, n) - loc.index_select(0, k)
        z_.copy_((diff.unsqueeze(-2) @ beta.index_select(0, k).mT).squeeze(-2))

    return z


def pair_statistics(
    x: Tensor, rows: Tensor, cols: Tensor, w: Tensor, z: Tensor, K: int
) -> tuple[Tensor, ...]:
    r"""Returns the sums of the M-step of :func:`~contmix.em.fit_mfa` of the pairs ``(rows,
    cols)``, sorted by sample, with responsibilities ``w`` and posterior means of the
    factors ``z``, with shape :math:`(P, R)`, in float64: :math:`N_k`, :math:`\sum_n r_{nk}
    z_{nk}`, :math:`\sum_n r_{nk} z_{nk} z_{nk}^T`, :math:`\sum_n r_{nk} x_n z_{nk}^T`,
    :math:`\sum_n r_{nk} x_n` and :math:`\sum_n r_{nk} x_n^2`. The sums over the samples
    are two products of sparse :math:`K \times B` and :math:`K R \times B` matrices of the
    pairs' weights with the samples (never an :math:`M \times R` outer product per pair),
    block by block of samples.

    Example:
        >>> x = torch.randn(3, 2, dtype=torch.float64)
        >>> rows, cols, w = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0]), torch.ones(3)
        >>> nk, sz, szz, sxz, sx, sxx = pair_statistics(x, rows, cols, w, torch.ones(3, 1), 2)
        >>> nk.tolist(), torch.allclose(sxz[1, :, 0], x[0] + x[1])
        ([1.0, 2.0], True)
    """

    R, M = z.shape[-1], x.shape[-1]
    z, w = z.double(), w.double().unsqueeze(-1)
    wz = w * z
    nk = w.new_zeros(K).index_add_(0, cols, w.squeeze(-1))
    sz = w.new_zeros(K, R).index_add_(0, cols, wz)
    szz = w.new_zeros(K, R * R).index_add_(
        0, cols, (wz.unsqueeze(-1) * z.unsqueeze(-2)).flatten(1)
    )

    moments, sxz = w.new_zeros(K, 2 * M), w.new_zeros(K * R, M)
    step = max(1, BLOCK // (2 * M))  # samples of a block, converted to float64 at once
    bounds = torch.searchsorted(rows, torch.arange(0, len(x) + step, step, device=x.device))
    for start, (lo, hi) in zip(
        range(0, len(x), step), bounds.unfold(0, 2, 1).tolist(), strict=True
    ):
        block, n, k = x[start : start + step].double(), rows[lo:hi] - start, cols[lo:hi]
        moments += _sparse(n, k, w[lo:hi, 0], K, len(block)) @ torch.cat(
            (block, block.square()), dim=-1
        )
        pairs = (k.unsqueeze(-1) * R + torch.arange(R, device=k.device)).flatten()
        sxz += (
            _sparse(n.repeat_interleave(R), pairs, wz[lo:hi].flatten(), K * R, len(block)) @ block
        )

    sx, sxx = moments.split(M, dim=-1)

    return nk, sz, szz.unflatten(-1, (R, R)), sxz.unflatten(0, (K, R)).mT, sx, sxx


def _sparse(rows: Tensor, cols: Tensor, values: Tensor, K: int, B: int) -> Tensor:
    r"""Returns the sparse :math:`K \times B` matrix of the values of the pairs."""

    index = torch.stack((cols, rows))
    return torch.sparse_coo_tensor(index, values, (K, B), check_invariants=False)


def batch_statistics(x: Tensor, resp: Tensor, loc: Tensor, beta: Tensor) -> tuple[Tensor, ...]:
    r"""Returns the sums of :func:`statistics` of a batch. Where the responsibilities
    are nearly hard (:func:`~contmix.em.sums.support`), they are the sums of the pairs
    of each sample with its :data:`~contmix.em.sums.SPARSE` largest responsibilities,
    those that are not zero (:func:`projections`, :func:`pair_statistics`: in 784-D,
    about one pair per sample instead of :math:`K`), plus the sums of the other
    responsibilities of the few samples that have some; elsewhere, the sums over all
    components (:func:`statistics`)."""

    s = support(resp)
    if s is None:
        return statistics(x, resp, latent(x, loc, beta))

    top, index = s.top.flatten(), s.index.flatten()
    keep = (top > 0).nonzero().squeeze(-1)
    rows = torch.arange(len(x), device=x.device).repeat_interleave(s.top.shape[-1])
    rows, comps, w = rows[keep], index[keep], top[keep]
    sums = pair_statistics(x, rows, comps, w, projections(x, loc, beta, rows, comps), len(loc))

    if len(s.soft) > 0:
        soft = x[s.soft]
        rest = statistics(soft, s.rest(resp), latent(soft, loc, beta))
        sums = tuple(a + b for a, b in zip(sums, rest, strict=True))

    return sums
