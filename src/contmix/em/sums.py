r"""The sparse sums of the M-step: in high dimension the responsibilities are nearly hard,
so the weighted sums :math:`\sum_n r_{nk} \phi_{nk}` of EM are a sparse product over the
responsibilities that are not negligible, about one per sample."""

from typing import NamedTuple

import torch

from torch import Tensor

NEGLIGIBLE = 1e-13  # the mass of a sample's responsibilities that the sums may leave out
SPARSE = 4  # the responsibilities of each sample that the sparse M-step sums keep
DENSE = 8  # sums and products over more than 1 / DENSE of the pairs are dense ones
SAMPLE = 16  # one row in SAMPLE tells whether the sums are clearly dense ones


class Support(NamedTuple):
    r"""The :data:`SPARSE` largest responsibilities of each sample, with shape
    :math:`(N, S)`, their components, and the samples whose other responsibilities hold
    more than :data:`NEGLIGIBLE` of their mass, with shape :math:`(N_s,)`."""

    top: Tensor
    index: Tensor
    soft: Tensor

    def rest(self, resp: Tensor) -> Tensor:
        r"""Returns the responsibilities of the soft samples without their largest ones,
        with shape :math:`(N_s, K)`."""

        return resp[self.soft].scatter(-1, self.index[self.soft], 0.0)


def support(resp: Tensor) -> Support | None:
    r"""Returns the :class:`Support` of non-negative responsibilities with shape
    :math:`(N, K)`, or none where the sums are better one dense product: for few
    components, on a GPU (where finding the soft samples would wait for the device), and
    when more than a quarter of the samples are soft.

    Example:
        >>> resp = torch.eye(16, dtype=torch.float64)[torch.randint(16, (100,))]
        >>> s = support(resp)
        >>> s.top.shape, len(s.soft)
        (torch.Size([100, 4]), 0)
    """

    N, K = resp.shape
    if K <= 2 * SPARSE or resp.device.type != "cpu" or not bool(resp.min() >= 0):
        return None

    top, index = resp.topk(SPARSE, dim=-1)
    total = resp.sum(dim=-1)
    soft = torch.nonzero(total - top.sum(dim=-1) > NEGLIGIBLE * total).squeeze(-1)
    if 4 * len(soft) > N:
        return None

    return Support(top, index, soft)


def kept(resp: Tensor) -> Tensor | None:
    r"""Which responsibilities the sums of the M-step keep, with shape :math:`(B, K)`,
    or :py:`None` for all of them (on a GPU, where the selection would wait for the
    device, and for negative weights).

    A responsibility is left out when it is below :data:`NEGLIGIBLE` / :math:`K` of its
    sample's total (a sample loses at most :data:`NEGLIGIBLE` of its mass, less than the
    rounding of the float64 sums over :math:`N` samples) and below :data:`NEGLIGIBLE` of
    the largest responsibility of its component in the block (a component that nearly no
    sample belongs to keeps those that it has).

    Example:
        >>> kept(torch.tensor([[1.0, 1e-20], [0.5, 0.5]], dtype=torch.float64))
        tensor([[ True, False],
                [ True,  True]])
        >>> kept(torch.tensor([[1.0, 1e-20], [1.0, 1e-40]], dtype=torch.float64))
        tensor([[ True,  True],
                [ True, False]])
    """

    if resp.device.type != "cpu" or bool(resp.min() < 0):
        return None

    K = resp.shape[-1]
    by_sample = NEGLIGIBLE / K * resp.sum(dim=-1, keepdim=True)
    by_component = NEGLIGIBLE * resp.amax(dim=0, keepdim=True)

    return (resp > by_sample) | (resp > by_component)


def kept_pairs(rows: Tensor, cols: Tensor, values: Tensor, K: int) -> Tensor:
    r"""Which responsibilities given as pairs the sums of the M-step keep, with shape
    :math:`(M,)`, as :func:`kept` for those of a block whose other responsibilities are
    zero: ``values[i]`` is that of sample ``rows[i]`` for component ``cols[i]``, and those
    of each sample sum to one.

    Example:
        >>> rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
        >>> values = torch.tensor([1.0, 1e-20, 1.0, 1e-40], dtype=torch.float64)
        >>> kept_pairs(rows, cols, values, K=2).tolist()
        [True, True, True, False]
    """

    largest = values.new_zeros(K).scatter_reduce_(0, cols, values, "amax")

    return (values > NEGLIGIBLE / K) | (values > NEGLIGIBLE * largest[cols])


def sparse_sums(rows: Tensor, cols: Tensor, values: Tensor, phi: Tensor, K: int) -> Tensor:
    r"""Returns the sums :math:`\sum_n r_{nk} \phi(x_n)`, with shape :math:`(K, P)`, of
    the responsibilities :math:`r_{nk}` given as pairs: ``values[i]`` is that of sample
    ``rows[i]`` for component ``cols[i]``, the others zero. One sparse product.

    Example:
        >>> phi = torch.randn(3, 2, dtype=torch.float64)
        >>> rows, cols = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])
        >>> sums = sparse_sums(rows, cols, torch.ones(3, dtype=torch.float64), phi, K=2)
        >>> torch.allclose(sums, torch.stack((phi[2], phi[0] + phi[1])))
        True
    """

    resp = torch.sparse_coo_tensor(
        torch.stack((cols, rows)), values, (K, len(phi)), check_invariants=False
    )

    return torch.sparse.mm(resp, phi)


def _dense(resp: Tensor) -> bool:
    r"""Whether the sums of responsibilities with shape :math:`(B, K)` are clearly better
    one dense product: where :func:`kept` keeps more than :math:`2 /` :data:`DENSE` of
    them (on a subsample of the rows, this saves the selection where few are negligible:
    with 16 overlapping components in 16-D, a fifth of each EM iteration)."""

    keep = kept(resp)

    return keep is None or DENSE * int(keep.sum()) > 2 * keep.numel()


def pairs(resp: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    r"""Returns the responsibilities that the sparse sums keep (:func:`kept`) as pairs:
    their samples, their components and their values, each with shape :math:`(M,)`; or
    :py:`None` where the sums are better one dense product: with few components, on a
    GPU, and where more than :math:`1 /` :data:`DENSE` of them are kept (one row in
    :data:`SAMPLE` is looked at first: where more than twice that are kept there, the
    others are not).

    Example:
        >>> rows, cols, values = pairs(torch.eye(16, dtype=torch.float64)[[3, 5]])
        >>> rows.tolist(), cols.tolist(), values.tolist()
        ([0, 1], [3, 5], [1.0, 1.0])
    """

    if resp.shape[-1] <= 2 * SPARSE or _dense(resp[::SAMPLE]):
        return None

    keep = kept(resp)
    if keep is None:
        return None

    rows, cols = keep.nonzero().T
    if DENSE * len(rows) > keep.numel():
        return None

    return rows, cols, resp[keep]


def weighted_sums(resp: Tensor, phi: Tensor) -> Tensor:
    r"""Returns the sums :math:`\sum_n r_{nk} \phi(x_n)` of the M-step, with shape
    :math:`(K, P)`, for non-negative responsibilities with shape :math:`(N, K)`.

    In high dimension the responsibilities are nearly hard (on Fashion-MNIST with 250
    components, the largest holds all but :math:`e^{-30}` of the mass for 97% of the
    samples). The sums are then one sparse product (:func:`sparse_sums`) over the
    responsibilities that are not negligible (:func:`kept`: about one per sample instead
    of :math:`K`), and one dense product where more than :math:`1 /` :data:`DENSE` of
    them are kept, with few components, and on a GPU.

    Example:
        >>> resp = torch.eye(16, dtype=torch.float64)[torch.randint(16, (100,))]
        >>> phi = torch.randn(100, 5, dtype=torch.float64)
        >>> torch.allclose(weighted_sums(resp, phi), resp.T @ phi)
        True
    """

    kept_pairs = pairs(resp)
    if kept_pairs is None:
        return resp.T @ phi

    return sparse_sums(*kept_pairs, phi, resp.shape[-1])
