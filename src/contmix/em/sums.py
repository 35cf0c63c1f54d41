r"""The sparse sums of the M-step: in high dimension the responsibilities are nearly hard,
so the weighted sums :math:`\sum_n r_{nk} \phi_{nk}` of EM are a scatter of the few
largest responsibilities of each sample, plus a product for the few samples whose other
responsibilities still count."""

from typing import NamedTuple

import torch

from torch import Tensor

from .full import NEGLIGIBLE

SPARSE = 4  # the responsibilities of each sample that the sparse M-step sums keep


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


def weighted_sums(resp: Tensor, phi: Tensor) -> Tensor:
    r"""Returns the sums :math:`\sum_n r_{nk} \phi(x_n)` of the M-step, with shape
    :math:`(K, P)`, for non-negative responsibilities with shape :math:`(N, K)`.

    In high dimension the responsibilities are nearly hard (on Fashion-MNIST with 250
    components, the largest holds all but :math:`e^{-30}` of the mass for 97% of the
    samples). The sums are taken over the :data:`SPARSE` largest responsibilities of each
    sample (a scatter of :math:`N \times` :data:`SPARSE` rows instead of a product with
    all :math:`K` columns), plus, for the samples whose other responsibilities hold more
    than :data:`NEGLIGIBLE` of their mass (less than the rounding of float64 sums over
    :math:`N` samples), a product with those others. Where :func:`support` says so, the
    sums are one matrix product.

    Example:
        >>> resp = torch.eye(16, dtype=torch.float64)[torch.randint(16, (100,))]
        >>> phi = torch.randn(100, 5, dtype=torch.float64)
        >>> torch.allclose(weighted_sums(resp, phi), resp.T @ phi)
        True
    """

    s = support(resp)
    if s is None:
        return resp.T @ phi

    sums = phi.new_zeros(resp.shape[-1], phi.shape[-1])
    for j in range(SPARSE):
        sums.index_add_(0, s.index[:, j], s.top[:, j, None] * phi)

    if len(s.soft) > 0:  # the other responsibilities of the samples that have some
        sums += s.rest(resp).T @ phi[s.soft]

    return sums
