r"""The E-step of diagonal Gaussian mixtures over the components that can matter.

In high dimension the responsibilities are nearly hard: with 250 components on
Fashion-MNIST, most log-joints :math:`\ell_{nk} = \log \pi_k + \log \mathcal{N}(x_n \mid
\mu_k, \Sigma_k)` of a sample lie hundreds of nats below its largest, and an EM iteration
moves the parameters little. As Elkan's bounds do for k-means, the Mahalanobis distances
:math:`s_{nk} = \|x_n - \mu^0_k\|_{\Lambda^0_k}` of a reference iteration, where
:math:`\|v\|^2_\Lambda = v^T \Lambda v`, bound those of later parameters: with the
diagonal precisions :math:`\Lambda_k = \Sigma_k^{-1}`,

.. math:: \rho^-_k \left( s_{nk} - \delta_k \right)_+^2 \leq \|x_n - \mu_k\|^2_{\Lambda_k}
    \leq \rho^+_k \left( s_{nk} + \delta_k \right)^2

by the triangle inequality, where :math:`\delta_k = \|\mu_k - \mu^0_k\|_{\Lambda^0_k}` and
:math:`\rho^\pm_k` are the largest and smallest ratios :math:`\Lambda_{k,dd} /
\Lambda^0_{k,dd}`. A component whose upper bound on :math:`\ell_{nk}` lies more than
:data:`TAIL` nats below a lower bound on the sample's largest has a responsibility below
:math:`e^{-50}` of the sample's mass: it is left out, and the log-joints of the others are
computed exactly, as the dense E-step computes them (one sampled product,
:func:`torch.sparse.sampled_addmm`). The log-likelihood is that of all components to
:math:`K e^{-50}` of itself. A component whose kept responsibilities sum to so little that
those left out could count (below :data:`NEGLIGIBLE` of it) has its sums taken over all
samples, unless the bounds show that all of its responsibilities are zero in float64
(more than :data:`UNDERFLOW` nats below), as the dense E-step computes them.

The distances are recomputed, with the dense E-step, when the bounds keep more than
:math:`1 /` :data:`REFRESH` of the pairs, and a block of samples whose bounds keep more
than :math:`1 /` :data:`~contmix.em.sums.DENSE` of its pairs is computed densely. A
reference that fails at once is retried after 1, 2, 4, ... up to :data:`WAIT` dense
iterations (soft responsibilities never give sparse ones).

The bounds are loose where the variances move: :math:`\rho^-_k` is the smallest ratio over
all features, and on Fashion-MNIST, in the first EM iterations from a k-means start, a
few pixels near the variance floor put its median at 0.4-0.7, and the bounds keep 10-50%
of the pairs (0.6% if the precisions had not moved): those iterations cost as much as
dense ones.

References:
    | Using the Triangle Inequality to Accelerate k-Means (Elkan, 2003)
    | https://cdn.aaai.org/ICML/2003/ICML03-022.pdf
"""

import math
import warnings

from typing import NamedTuple

import torch

from torch import Tensor

from .sums import DENSE, NEGLIGIBLE, pairs, sparse_sums
from ..distributed import all_reduce

ROWS = 2**22  # elements of a block of samples (B, D)
REFRESH = 16  # a new reference once the bounds keep more than 1 / REFRESH of the pairs
WAIT = 16  # the most dense iterations between two references that keep too many pairs
UNDERFLOW = 746.0  # nats below the largest from which a float64 responsibility is zero
TAIL = 50.0  # nats below a sample's largest log-joint from which a component is left out


class Reference(NamedTuple):
    r"""The parameters of the iteration whose distances bound the later ones: the centered
    means and the precisions, with shape :math:`(K, D)`, a bound on the rounding of the
    distances, with shape :math:`(K,)`, and the distances :math:`s_{nk}` of each block of
    samples, with shape :math:`(B, K)`."""

    means: Tensor
    precisions: Tensor
    slack: Tensor
    distances: list[Tensor]


class Drift(NamedTuple):
    r"""How far the parameters moved from the :class:`Reference`: :math:`\delta_k` (with
    the rounding slack), :math:`\rho^-_k` and :math:`\rho^+_k`, with shape :math:`(K,)`,
    and the constants :math:`c_k = \log \pi_k - \frac{1}{2} \log |2 \pi \Sigma_k|`."""

    shift: Tensor
    low: Tensor
    high: Tensor
    constant: Tensor

    def bounds(self, distances: Tensor, top: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns which pairs the E-step keeps, with shape :math:`(B, K)`: those whose
        upper bound is within :data:`TAIL` nats of the lower bound of the component
        ``top`` of each sample (its largest log-joint at the previous iteration); and a
        bound on the largest log-ratio :math:`\ell_{nk} - \max_j \ell_{nj}` of each
        component, with shape :math:`(K,)`."""

        own = distances.gather(-1, top.unsqueeze(-1)).squeeze(-1)
        lower = self.constant[top] - 0.5 * self.high[top] * (own + self.shift[top]).square()
        upper = (distances - self.shift).clamp_(min=0).square_().mul_(-0.5 * self.low)
        upper = upper.add_(self.constant)

        return upper >= (lower - TAIL).unsqueeze(-1), upper.amax(dim=0) - lower.amin()


def constants(logits: Tensor, precisions: Tensor) -> Tensor:
    r"""Returns :math:`c_k = \log \pi_k - \frac{1}{2} \log |2 \pi \Sigma_k|`, with shape
    :math:`(K,)`, of diagonal precisions with shape :math:`(K, D)`.
    Example:
        >>> c = constants(torch.zeros(1), torch.ones(1, 2))
        >>> bool(torch.isclose(c, torch.tensor([-math.log(2 * math.pi)])))
        True
    """

    D = precisions.shape[-1]
    log_det = precisions.log().sum(dim=-1)
    return logits.log_softmax(dim=-1) + 0.5 * (log_det - D * math.log(2 * math.pi))


def reference(
    means: Tensor, precisions: Tensor, constant: Tensor, norm: float, joints: list[Tensor]
) -> Reference:
    r"""Returns the :class:`Reference` of the log-joints :math:`\ell_{nk} = c_k - \frac{1}{2}
    s_{nk}^2` of each block, computed by the expanded quadratic form in float64 on samples of
    squared norm at most ``norm``: rounding moves :math:`s_{nk}^2` by at most
    :math:`4 (P + 5) u (\lambda^{max}_k \cdot norm + \mu_k^T \Lambda_k \mu_k + |c_k| + 1)`
    (the sum of the absolute terms of the :math:`P = 2 D + 1` products, times the bound
    :math:`\gamma_P` of a sum in any order), so :math:`s_{nk}` by its square root.

    Example:
        >>> x, means = torch.randn(5, 3).double(), torch.zeros(2, 3).double()
        >>> precisions = torch.ones(2, 3).double()
        >>> c = constants(torch.zeros(2).double(), precisions)
        >>> joint = c - 0.5 * x.square().sum(-1, keepdim=True)
        >>> ref = reference(means, precisions, c, 100.0, [joint])
        >>> torch.allclose(ref.distances[0][:, 0], x.norm(dim=-1))
        True
    """

    P = 2 * means.shape[-1] + 1
    u = torch.finfo(torch.float64).eps / 2
    terms = precisions.amax(dim=-1) * norm + (precisions * means.square()).sum(dim=-1)
    slack = (4 * (P + 5) * u * (terms + constant.abs() + 1)).sqrt()
    distances = [(2 * (constant - joint)).clamp_(min=0).sqrt_() for joint in joints]

    return Reference(means, precisions, slack, distances)


def drift(ref: Reference, means: Tensor, precisions: Tensor, constant: Tensor) -> Drift:
    r"""Returns the :class:`Drift` of the parameters from the reference.

    Example:
        >>> means, precisions = torch.zeros(1, 2).double(), torch.ones(1, 2).double()
        >>> ref = reference(means, precisions, torch.zeros(1).double(), 1.0, [])
        >>> moved = drift(ref, means + 3, 4 * precisions, torch.zeros(1).double())
        >>> round(float(moved.shift - ref.slack), 6), float(moved.low), float(moved.high)
        (4.242641, 4.0, 4.0)
    """

    ratio = precisions / ref.precisions
    shift = ((means - ref.means).square() * ref.precisions).sum(dim=-1).sqrt()

    return Drift(shift + ref.slack, ratio.amin(dim=-1), ratio.amax(dim=-1), constant)


class Bounded:
    r"""The E-step of :func:`~contmix.em.fit_gmm` for diagonal and spherical covariances,
    over the components that the bounds of a :class:`Reference` do not rule out.

    It goes through the samples in blocks of :data:`ROWS` elements and keeps the
    :math:`B \times K` distances of each block between iterations. The sums of a block are
    sparse products (:func:`~contmix.em.sums.sparse_sums`) with :math:`x \odot x` and
    :math:`x`, over the responsibilities that are not negligible
    (:func:`~contmix.em.sums.kept`).

    Arguments:
        x: The centered samples, with shape :math:`(N, D)`, in float64.
        N: The number of samples of all shards.

    Example:
        >>> from contmix.em.gmm import _natural
        >>> x = torch.cat((torch.randn(50, 2) - 9, torch.randn(50, 2) + 9)).double()
        >>> logits, means, variances = torch.zeros(10).double(), x[::10], torch.ones(10, 2)
        >>> theta = _natural(logits, means, variances.double(), "diagonal").T
        >>> e_step = Bounded(x, len(x))
        >>> stats, log_lik = e_step(logits, means, variances.double(), theta)
        >>> stats.shape, round(float(stats[:, -1].sum()), 9)  # sums of (x * x, x, 1)
        (torch.Size([10, 5]), 100.0)
    """

    def __init__(self, x: Tensor, N: int):
        self.x = x.split(max(ROWS // x.shape[-1], 1))
        self.norm = max(float(chunk.square().sum(dim=-1).max()) for chunk in self.x)
        self.N = N
        self.ref = None
        self.top = [None] * len(self.x)
        self.age = 0  # the iterations bounded by the reference so far
        self.wait = self.backoff = 0  # dense iterations to go, and after the next failure

    def __call__(
        self, logits: Tensor, means: Tensor, covariances: Tensor, theta: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""Returns the sums :math:`\sum_n r_{nk} \phi(x_n)` and the log-likelihood
        :math:`\sum_n \log p(x_n)` over all shards, for the centered means and the natural
        parameters ``theta`` of :math:`\phi(x) = (x \odot x, x, 1)`, with shape
        :math:`(2 D + 1, K)`."""

        precisions = covariances.reciprocal().expand_as(means)
        constant = constants(logits, precisions)
        moved = None if self.ref is None else drift(self.ref, means, precisions, constant)
        keeping = moved is None and self.wait == 0  # whether to keep a new reference
        stats, log_lik, count, joints, totals = 0, 0, 0, [], []
        alive = torch.zeros_like(constant, dtype=torch.bool)  # in a block left sparse

        for i, x in enumerate(self.x):
            square = x.square()
            keep = None
            if moved is not None:
                keep, reach = moved.bounds(self.ref.distances[i], self.top[i])
            size = len(x) * len(constant) if keep is None else int(keep.sum())

            if DENSE * size > len(x) * len(constant):
                joint = _joint(square, x, theta)
                self.top[i], total, resp = _softmax(joint)
                sums = _dense_sums(resp, square, x)
                if keeping:
                    joints.append(joint)
            else:
                rows, cols = keep.nonzero().T
                self.top[i], total, values = _sampled(square, x, theta, rows, cols)
                sums = _pair_sums(rows, cols, values, square, x, len(constant))
                alive = alive | (reach > -UNDERFLOW)

            stats, count = stats + sums, count + size
            log_lik = log_lik + total.sum()
            totals.append(total)

        if keeping:
            self.ref, self.age = reference(means, precisions, constant, self.norm, joints), 0
        elif moved is None:
            self.wait -= 1
        elif REFRESH * count > sum(map(len, self.x)) * len(constant):
            self._fail()
        else:
            self.age, self.backoff = self.age + 1, 0

        stats, log_lik, alive = all_reduce(stats, log_lik, alive.to(stats.dtype))

        dead = (stats[:, -1] < self.N * math.exp(-TAIL) / NEGLIGIBLE) & (alive > 0)
        if bool(dead.any()):
            stats[dead] = all_reduce(self._columns(theta, dead, totals))

        return stats, log_lik

    def _fail(self) -> None:
        r"""Drops a reference whose bounds kept too many pairs. The next iteration takes a
        new one, unless it failed at once (the responsibilities are soft, or the parameters
        still move much): then 1, 2, 4, ... up to :data:`WAIT` iterations are plain dense
        ones first."""

        if self.age == 0:
            self.backoff = min(max(2 * self.backoff, 1), WAIT)
            self.wait = self.backoff
        self.ref = None

    def _columns(self, theta: Tensor, dead: Tensor, totals: list[Tensor]) -> Tensor:
        r"""Returns the sums of the components ``dead`` over all samples."""

        sums = 0
        for x, total in zip(self.x, totals, strict=True):
            square = x.square()
            resp = (_joint(square, x, theta[:, dead]) - total.unsqueeze(-1)).exp()
            sums = sums + torch.cat((resp.T @ square, resp.T @ x, resp.sum(0)[:, None]), dim=-1)

        return sums


def _joint(square: Tensor, x: Tensor, theta: Tensor) -> Tensor:
    r"""Returns the log-joints :math:`\theta_k^T \phi(x_n)`, with shape :math:`(B, K)`."""

    D = x.shape[-1]
    return torch.addmm(theta[-1], square, theta[:D]).addmm_(x, theta[D:-1])


def _dense_sums(resp: Tensor, square: Tensor, x: Tensor) -> Tensor:
    r"""Returns :math:`\sum_n r_{nk} \phi(x_n)` of responsibilities with shape
    :math:`(B, K)`, as :func:`~contmix.em.sums.weighted_sums` does with :math:`\phi(x)`:
    over the pairs of :func:`~contmix.em.sums.pairs`, or one dense product."""

    kept_pairs = pairs(resp)
    if kept_pairs is None:
        return torch.cat((resp.T @ square, resp.T @ x, resp.sum(0)[:, None]), dim=-1)

    return _pair_sums(*kept_pairs, square, x, resp.shape[-1])


def _pair_sums(
    rows: Tensor, cols: Tensor, values: Tensor, square: Tensor, x: Tensor, K: int
) -> Tensor:
    r"""Returns :math:`\sum_n r_{nk} \phi(x_n)` of the responsibilities ``values`` of the
    pairs ``(rows, cols)``, with shape :math:`(K, 2 D + 1)`."""

    return torch.cat(
        (
            sparse_sums(rows, cols, values, square, K),
            sparse_sums(rows, cols, values, x, K),
            values.new_zeros(K).index_add_(0, cols, values)[:, None],
        ),
        dim=-1,
    )


def _softmax(joint: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns the component of the largest log-joint of each sample, the log-sum-exp
    :math:`\log p(x_n)` and the responsibilities, of log-joints with shape :math:`(B, K)`."""

    top, index = joint.max(dim=-1, keepdim=True)
    weights = (joint - top).exp()
    total = weights.sum(dim=-1, keepdim=True)

    return index.squeeze(-1), (top + total.log()).squeeze(-1), weights / total


def _sampled(
    square: Tensor, x: Tensor, theta: Tensor, rows: Tensor, cols: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns :func:`_softmax` of the log-joints of the pairs ``(rows, cols)`` only, the
    others taken as :math:`-\infty`, with the responsibilities as the values of the pairs:
    two sampled products (:func:`torch.sparse.sampled_addmm`)."""

    (B, D), K = x.shape, theta.shape[-1]
    crow = torch.zeros(B + 1, dtype=rows.dtype, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=B).cumsum(0)
    with warnings.catch_warnings():  # torch's sparse CSR layout warns that it is in beta
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        mask = torch.sparse_csr_tensor(crow, cols, theta[-1, cols], (B, K), check_invariants=False)
    joint = torch.sparse.sampled_addmm(mask, square, theta[:D])
    joint = torch.sparse.sampled_addmm(joint, x, theta[D:-1]).values()

    top = joint.new_full((B,), -math.inf).scatter_reduce_(0, rows, joint, "amax")
    weights = (joint - top[rows]).exp()
    total = joint.new_zeros(B).index_add_(0, rows, weights)

    index = torch.zeros(B, dtype=cols.dtype, device=cols.device)
    largest = joint == top[rows]
    index[rows[largest]] = cols[largest]

    return index, top + total.log(), weights / total[rows]
