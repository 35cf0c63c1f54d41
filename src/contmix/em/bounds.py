r"""The E-step of diagonal Gaussian mixtures over the components that can matter.

In high dimension the responsibilities are nearly hard: with 250 components on
Fashion-MNIST, most log-joints :math:`\ell_{nk} = \log \pi_k + \log \mathcal{N}(x_n \mid
\mu_k, \Sigma_k)` of a sample lie hundreds of nats below its largest, and an EM iteration
moves the parameters little. As Elkan's bounds do for k-means, the E-step keeps, for
every pair, a lower bound :math:`l_{nk}` on the Mahalanobis distance :math:`\|x_n -
\mu_k\|_{\Lambda_k}`, where :math:`\|v\|^2_\Lambda = v^T \Lambda v` and :math:`\Lambda_k =
\Sigma_k^{-1}` are the diagonal precisions, and moves it with the parameters: from
:math:`(\mu'_k, \Lambda'_k)` to :math:`(\mu_k, \Lambda_k)`,

.. math:: \|x_n - \mu_k\|_{\Lambda_k} \geq \sqrt{\rho^-_k} \left( l_{nk} - \delta_k
    \right)_+, \qquad \|x_n - \mu_k\|_{\Lambda_k} \leq \sqrt{\rho^+_k} \left( u_n +
    \delta_k \right)

by the triangle inequality, where :math:`\delta_k = \|\mu_k - \mu'_k\|_{\Lambda'_k}`,
:math:`\rho^\pm_k` are the largest and smallest ratios :math:`\Lambda_{k,dd} /
\Lambda'_{k,dd}`, and :math:`u_n` bounds the distance of the sample's largest component
from above. A component whose upper bound on :math:`\ell_{nk}` lies more than :data:`TAIL`
nats below the lower bound of the sample's largest has a responsibility below
:math:`e^{-50}` of the sample's mass: it is left out, and the log-joints of the others
are computed exactly, as the dense E-step computes them (one sampled product,
:func:`torch.sparse.sampled_addmm`), which makes their bounds exact again (up to the
rounding of the expanded quadratic form, :func:`rounding`). The log-likelihood is that of
all components to :math:`K e^{-50}` of itself. A component whose kept responsibilities
sum to so little that those left out could count (below :data:`NEGLIGIBLE` of it) has its
sums taken over all samples, unless the bounds show that all of its responsibilities are
zero in float64 (more than :data:`UNDERFLOW` nats below), as the dense E-step computes
them. A block of samples whose bounds keep more than :math:`1 /`
:data:`~contmix.em.sums.DENSE` of its pairs is computed densely, which makes all of its
bounds exact. The sums of the samples with a single responsibility that is not negligible
are kept from one iteration to the next (:class:`Held`): only those of the samples that
change are computed.

The bounds are loose where the variances move: :math:`\rho^-_k` is the smallest ratio over
all features, and on Fashion-MNIST, in the first EM iterations from a k-means start, a
few pixels near the variance floor put its median at 0.5-0.9 from one iteration to the
next: the bounds keep more than an eighth of the pairs there, and those iterations are
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

from .sums import DENSE, NEGLIGIBLE, kept_pairs, sparse_sums, weighted_sums
from ..distributed import all_reduce

ROWS = 2**22  # elements of a block of samples (B, D)
UNDERFLOW = 746.0  # nats below the largest from which a float64 responsibility is zero
TAIL = 50.0  # nats below a sample's largest log-joint from which a component is left out


class Drift(NamedTuple):
    r"""How far the parameters moved in one iteration: :math:`\delta_k`, :math:`\sqrt{
    \rho^-_k}` and :math:`\sqrt{\rho^+_k}`, with shape :math:`(K,)`, and the constants
    :math:`c_k = \log \pi_k - \frac{1}{2} \log |2 \pi \Sigma_k|` of the new parameters."""

    shift: Tensor
    low: Tensor
    high: Tensor
    constant: Tensor

    def bounds(self, lower: Tensor, top: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        r"""Moves the lower bounds ``lower`` on the distances of a block, with shape
        :math:`(B, K)`, to the new parameters (in place), and returns which pairs the
        E-step keeps, with shape :math:`(B, K)`: those whose upper bound on the log-joint
        is within :data:`TAIL` nats of the lower bound of the component ``top`` of each
        sample (its largest at the previous iteration, whose distance was at most
        ``upper``, with shape :math:`(B,)`); and a bound on the largest log-ratio
        :math:`\ell_{nk} - \max_j \ell_{nj}` of each component, with shape :math:`(K,)`."""

        lower = lower.sub_(self.shift).clamp_(min=0).mul_(self.low)
        least = self.constant[top] - 0.5 * (self.high[top] * (upper + self.shift[top])).square()
        bound = lower.square().mul_(-0.5).add_(self.constant)

        return bound >= (least - TAIL).unsqueeze(-1), bound.amax(dim=0) - least.amin()


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


def rounding(means: Tensor, precisions: Tensor, constant: Tensor, norm: float) -> Tensor:
    r"""Returns a bound on the rounding of the distances :math:`s_{nk} = \sqrt{2 (c_k -
    \ell_{nk})}`, with shape :math:`(K,)`, of log-joints computed by the expanded quadratic
    form in float64 on samples of squared norm at most ``norm``: rounding moves
    :math:`s_{nk}^2` by at most :math:`4 (P + 5) u (\lambda^{max}_k \cdot norm + \mu_k^T
    \Lambda_k \mu_k + |c_k| + 1)` (the sum of the absolute terms of the :math:`P = 2 D +
    1` products, times the bound :math:`\gamma_P` of a sum in any order), so
    :math:`s_{nk}` by its square root.

    Example:
        >>> means, precisions = torch.zeros(2, 3).double(), torch.ones(2, 3).double()
        >>> slack = rounding(means, precisions, torch.zeros(2).double(), 100.0)
        >>> bool((slack > 0).all() and (slack < 1e-6).all())
        True
    """

    P = 2 * means.shape[-1] + 1
    u = torch.finfo(torch.float64).eps / 2
    terms = precisions.amax(dim=-1) * norm + (precisions * means.square()).sum(dim=-1)

    return (4 * (P + 5) * u * (terms + constant.abs() + 1)).sqrt()


def drift(
    previous: tuple[Tensor, Tensor], means: Tensor, precisions: Tensor, constant: Tensor
) -> Drift:
    r"""Returns the :class:`Drift` of the parameters from the ``previous`` means and
    precisions, each with shape :math:`(K, D)`.

    Example:
        >>> means, precisions = torch.zeros(1, 2).double(), torch.ones(1, 2).double()
        >>> moved = drift((means, precisions), means + 3, 4 * precisions, torch.zeros(1))
        >>> round(float(moved.shift), 6), float(moved.low), float(moved.high)
        (4.242641, 2.0, 2.0)
    """

    old_means, old_precisions = previous
    ratio = precisions / old_precisions
    shift = ((means - old_means).square() * old_precisions).sum(dim=-1).sqrt()

    return Drift(shift, ratio.amin(dim=-1).sqrt(), ratio.amax(dim=-1).sqrt(), constant)


class Held:
    r"""The sums :math:`\sum_n \phi(x_n)` of the hard samples of each component, kept
    between iterations.

    A sample is hard when a single one of its responsibilities is not negligible
    (:func:`~contmix.em.sums.kept_pairs`): that one is above :math:`1 -`
    :data:`~contmix.em.sums.NEGLIGIBLE`, and the sample's sums are those of its component
    alone, to :data:`~contmix.em.sums.NEGLIGIBLE` of its mass, as the sums leave out
    elsewhere. Near convergence most samples stay hard from one iteration to the next:
    only those that become hard, or stop being so, are added or subtracted. The sums are
    recomputed once the samples added and subtracted outnumber the hard ones, so that
    their rounding stays that of one sum, and those of a component without hard samples
    are zero.

    Arguments:
        blocks: The number of blocks of samples.

    Example:
        >>> phi = [torch.arange(6.0, dtype=torch.float64).reshape(3, 2)]  # one block
        >>> held = Held(1)
        >>> held.move(0, phi[0], torch.tensor([True, True, False]), torch.tensor([1, 0, 0]), K=2)
        >>> held.total(phi).tolist()  # the features of sample 1, of sample 0, and counts
        [[2.0, 3.0, 1.0], [0.0, 1.0, 1.0]]
        >>> held.move(0, phi[0], torch.tensor([True, False, False]), torch.tensor([1, 0, 0]), K=2)
        >>> held.total(phi).tolist()  # sample 1 is no longer hard: component 0 has none
        [[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    """

    def __init__(self, blocks: int):
        self.hard = [None] * blocks  # whether each sample of a block is hard
        self.component = [None] * blocks  # the component of each hard sample
        self.sums = None
        self.updates = 0  # the samples added or subtracted since the sums were computed

    def move(self, i: int, phi: Tensor, hard: Tensor, component: Tensor, K: int) -> None:
        r"""Takes the hard samples of block ``i``, with shape :math:`(B,)`, and their
        components, with shape :math:`(B,)`, of the features ``phi`` of the block."""

        was, before = self.hard[i], self.component[i]
        if was is None:
            was, before = torch.zeros_like(hard), component
        if self.sums is None:
            self.sums = phi.new_zeros(K, phi.shape[-1] + 1)

        stay = hard & was & (component == before)
        enter, leave = (hard & ~stay).nonzero()[:, 0], (was & ~stay).nonzero()[:, 0]
        if len(enter) + len(leave) > 0:
            rows, cols = torch.cat((enter, leave)), torch.cat((component[enter], before[leave]))
            signs = torch.cat((phi.new_ones(len(enter)), -phi.new_ones(len(leave))))
            self.sums += _pair_sums(rows, cols, signs, phi, K)
            self.updates += len(rows)

        self.hard[i], self.component[i] = hard, component

    def total(self, phi: list[Tensor]) -> Tensor:
        r"""Returns the sums of the hard samples, with shape :math:`(K, 2 D + 1)`, of the
        blocks of features ``phi``."""

        counts = self.sums[:, -1]  # integers, exact
        if self.updates > counts.sum():
            self.sums, self.updates = torch.zeros_like(self.sums), 0
            for block, hard, component in zip(phi, self.hard, self.component, strict=True):
                rows = hard.nonzero()[:, 0]
                ones = block.new_ones(len(rows))
                self.sums += _pair_sums(rows, component[rows], ones, block, len(counts))
        else:
            self.sums[counts == 0] = 0

        return self.sums


class Bounded:
    r"""The E-step of :func:`~contmix.em.fit_gmm` for diagonal and spherical covariances,
    over the components that the bounds do not rule out.

    It goes through the samples in blocks of :data:`ROWS` elements and keeps, between
    iterations, the :math:`B \times K` lower bounds on the distances of each block, and
    for each sample its largest component and an upper bound on its distance. The
    features :math:`(x \odot x, x)` of each block are kept side by side, so that a
    block's log-joints are one product and its sums one sparse product
    (:func:`~contmix.em.sums.sparse_sums`), over the responsibilities that are not
    negligible (:func:`~contmix.em.sums.kept`).

    Arguments:
        x: The samples, with shape :math:`(N, D)`.
        shift: The point :math:`r` that centers them, with shape :math:`(D,)`, in float64:
            the features are those of :math:`x - r`, in float64.
        N: The number of samples of all shards.

    Example:
        >>> from contmix.em.gmm import _natural
        >>> x = torch.cat((torch.randn(50, 2) - 9, torch.randn(50, 2) + 9)).double()
        >>> logits, means, variances = torch.zeros(10).double(), x[::10], torch.ones(10, 2)
        >>> theta = _natural(logits, means, variances.double(), "diagonal").T
        >>> e_step = Bounded(x, torch.zeros(2).double(), len(x))
        >>> stats, log_lik = e_step(logits, means, variances.double(), theta)
        >>> stats.shape, round(float(stats[:, -1].sum()), 9)  # sums of (x * x, x, 1)
        (torch.Size([10, 5]), 100.0)
    """

    def __init__(self, x: Tensor, shift: Tensor, N: int):
        D = x.shape[-1]
        self.phi = [_features(chunk.to(shift) - shift) for chunk in x.split(max(ROWS // D, 1))]
        self.norm = max(float(phi[:, :D].sum(dim=-1).max()) for phi in self.phi)
        self.N = N
        self.previous = None  # the means and precisions of the last call
        self.lower = [None] * len(self.phi)  # the lower bounds on the distances of each block
        self.top = [None] * len(self.phi)  # the largest component of each sample
        self.upper = [None] * len(self.phi)  # an upper bound on its distance
        self.held = Held(len(self.phi))  # the sums of the hard samples

    def __call__(
        self, logits: Tensor, means: Tensor, covariances: Tensor, theta: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""Returns the sums :math:`\sum_n r_{nk} \phi(x_n)` and the log-likelihood
        :math:`\sum_n \log p(x_n)` over all shards, for the centered means and the natural
        parameters ``theta`` of :math:`\phi(x) = (x \odot x, x, 1)`, with shape
        :math:`(2 D + 1, K)`."""

        precisions = covariances.reciprocal().expand_as(means)
        constant = constants(logits, precisions)
        slack = rounding(means, precisions, constant, self.norm)
        previous, moved = self.previous, None
        if previous is not None:
            moved = drift(previous, means, precisions, constant)
        stats, log_lik, totals, K = 0, 0, [], len(constant)
        alive = torch.zeros_like(constant, dtype=torch.bool)  # in a block left sparse
        columns = theta[:-1].T.contiguous().T  # a faster layout for the sampled products

        for i, phi in enumerate(self.phi):
            B = len(phi)
            keep = None
            if moved is not None:
                keep, reach = moved.bounds(self.lower[i], self.top[i], self.upper[i])

            if keep is None or DENSE * int(keep.sum()) > B * K:
                joint = _joint(phi, theta)
                top, largest, total, resp = _softmax(joint)
                sums = _dense_sums(resp, phi)
                self.lower[i] = _distances(joint, constant).sub_(slack).clamp_(min=0)
                self.held.move(i, phi, torch.zeros_like(top, dtype=torch.bool), top, K)
            else:
                rows, cols = keep.nonzero().T
                joint = _sampled(phi, theta[-1], columns, rows, cols)
                top, largest, total, values = _sparse_softmax(joint, rows, cols, B)
                sums = self._soft_sums(i, phi, rows, cols, values, K)
                exact = _distances(joint, constant[cols]).sub_(slack[cols]).clamp_(min=0)
                self.lower[i][rows, cols] = exact
                alive = alive | (reach > -UNDERFLOW)

            self.top[i] = top
            self.upper[i] = _distances(largest, constant[top]).add_(slack[top])
            stats = stats + sums
            log_lik = log_lik + total.sum()
            totals.append(total)

        self.previous = (means, precisions)
        stats = stats + self.held.total(self.phi)
        stats, log_lik, alive = all_reduce(stats, log_lik, alive.to(stats.dtype))

        dead = (stats[:, -1] < self.N * math.exp(-TAIL) / NEGLIGIBLE) & (alive > 0)
        if bool(dead.any()):
            stats[dead] = all_reduce(self._columns(theta, dead, totals))

        return stats, log_lik

    def _soft_sums(
        self, i: int, phi: Tensor, rows: Tensor, cols: Tensor, values: Tensor, K: int
    ) -> Tensor:
        r"""Returns the sums of the responsibilities ``values`` of the pairs ``(rows,
        cols)`` of block ``i`` that are not negligible (:func:`~contmix.em.sums.kept_pairs`),
        but those of the hard samples, which :class:`Held` keeps."""

        held = kept_pairs(rows, cols, values, K)
        rows, cols, values = rows[held], cols[held], values[held]
        hard = torch.bincount(rows, minlength=len(phi)) == 1
        self.held.move(i, phi, hard, cols.new_zeros(len(phi)).index_put_((rows,), cols), K)
        soft = ~hard[rows]

        return _pair_sums(rows[soft], cols[soft], values[soft], phi, K)

    def _columns(self, theta: Tensor, dead: Tensor, totals: list[Tensor]) -> Tensor:
        r"""Returns the sums of the components ``dead`` over all samples."""

        sums = 0
        for phi, total in zip(self.phi, totals, strict=True):
            resp = (_joint(phi, theta[:, dead]) - total.unsqueeze(-1)).exp()
            sums = sums + _dense_sums(resp, phi)

        return sums


def _distances(joint: Tensor, constant: Tensor) -> Tensor:
    r"""Returns the distances :math:`s = \sqrt{2 (c - \ell)}` of log-joints :math:`\ell`
    (in place)."""

    return joint.neg_().add_(constant).mul_(2).clamp_(min=0).sqrt_()


def _features(x: Tensor) -> Tensor:
    r"""Returns the features :math:`(x \odot x, x)` of a block, with shape :math:`(B, 2 D)`."""

    return torch.cat((x.square(), x), dim=-1)


def _joint(phi: Tensor, theta: Tensor) -> Tensor:
    r"""Returns the log-joints :math:`\theta_k^T \phi(x_n)`, with shape :math:`(B, K)`, of
    the features :math:`(x \odot x, x)` of a block, with shape :math:`(B, 2 D)`."""

    return torch.addmm(theta[-1], phi, theta[:-1])


def _dense_sums(resp: Tensor, phi: Tensor) -> Tensor:
    r"""Returns :math:`\sum_n r_{nk} \phi(x_n)` of responsibilities with shape
    :math:`(B, K)`, with shape :math:`(K, 2 D + 1)`: those of
    :func:`~contmix.em.sums.weighted_sums`, and the sums of the responsibilities."""

    return torch.cat((weighted_sums(resp, phi), resp.sum(dim=0)[:, None]), dim=-1)


def _pair_sums(rows: Tensor, cols: Tensor, values: Tensor, phi: Tensor, K: int) -> Tensor:
    r"""Returns :math:`\sum_n r_{nk} \phi(x_n)` of the responsibilities ``values`` of the
    pairs ``(rows, cols)``, with shape :math:`(K, 2 D + 1)`."""

    counts = values.new_zeros(K).index_add_(0, cols, values)

    return torch.cat((sparse_sums(rows, cols, values, phi, K), counts[:, None]), dim=-1)


def _softmax(joint: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Returns the component of the largest log-joint of each sample, that log-joint, the
    log-sum-exp :math:`\log p(x_n)` and the responsibilities, of log-joints with shape
    :math:`(B, K)`."""

    top, index = joint.max(dim=-1)
    weights = (joint - top.unsqueeze(-1)).exp()
    total = weights.sum(dim=-1)

    return index, top, top + total.log(), weights / total.unsqueeze(-1)


def _sampled(phi: Tensor, bias: Tensor, weight: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    r"""Returns the log-joints :math:`b_k + w_k^T \phi(x_n)` of the pairs ``(rows, cols)``
    only, sorted by row, with shape :math:`(M,)`, of the features of a block, with shape
    :math:`(B, 2 D)`, the biases with shape :math:`(K,)` and the weights with shape
    :math:`(2 D, K)`: one sampled product (:func:`torch.sparse.sampled_addmm`)."""

    B, K = len(phi), len(bias)
    crow = torch.zeros(B + 1, dtype=rows.dtype, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=B).cumsum(0)
    with warnings.catch_warnings():  # torch's sparse CSR layout warns that it is in beta
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        mask = torch.sparse_csr_tensor(crow, cols, bias[cols], (B, K), check_invariants=False)

    return torch.sparse.sampled_addmm(mask, phi, weight).values()


def _sparse_softmax(
    joint: Tensor, rows: Tensor, cols: Tensor, B: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Returns :func:`_softmax` of the log-joints of the pairs ``(rows, cols)`` of a block
    of :math:`B` samples, the others taken as :math:`-\infty`, with the responsibilities as
    the values of the pairs."""

    top = joint.new_full((B,), -math.inf).scatter_reduce_(0, rows, joint, "amax")
    weights = (joint - top[rows]).exp()
    total = joint.new_zeros(B).index_add_(0, rows, weights)

    index = torch.zeros(B, dtype=cols.dtype, device=cols.device)
    largest = joint == top[rows]
    index[rows[largest]] = cols[largest]

    return index, top, top + total.log(), weights / total[rows]
