r"""The E-step of mixtures of factor analyzers over the components that can matter.

The E-step of :func:`~contmix.em.fit_mfa` bounds the Mahalanobis distances as
:class:`~contmix.em.bounds.Bounded` does for diagonal covariances, in the metric
:math:`\Lambda_k = \Sigma_k^{-1}` of each component, :math:`\Sigma_k = D_k + A_k A_k^T`:
for every pair, a lower bound :math:`l_{nk}` on :math:`\|x_n - \mu_k\|_{\Lambda_k}`,
moved with the parameters by the triangle inequality,

.. math:: \|x_n - \mu_k\|_{\Lambda_k} \geq \lambda_k^{-1/2} \left( l_{nk} - \|\mu_k -
    \mu'_k\|_{\Lambda'_k} \right)_+ ,

where :math:`\lambda_k` bounds the largest generalized eigenvalue of :math:`(\Sigma_k,
\Sigma'_k)` from above (:func:`drift`). In the coordinates :math:`D'^{-1/2}_k`,
:math:`\Sigma'_k` is :math:`I + B' B'^T` and :math:`\Sigma_k` lies below :math:`\rho^+ I +
B B^T`, with :math:`\rho^+` the largest ratio of the new to the old diagonal; both act on
the span of :math:`(B', B)` and on its complement separately, so that :math:`\lambda_k` is
the larger of :math:`\rho^+` and the largest eigenvalue of a :math:`2R \times 2R` problem
(:func:`_largest`). The distance of each sample's largest component at the previous
iteration is computed exactly first, and a component whose bound on the log-joint lies
more than :data:`~contmix.em.bounds.TAIL` nats below it is left out: its responsibility is
below :math:`e^{-50}` of the sample's mass.

The pairs that the bounds keep get their distances exactly, from the differences
:math:`x_n - \mu_k` themselves, in float64 (:func:`_exact`): :math:`\|x - \mu\|^2_{D^{-1}}
- \|W (x - \mu)\|^2` with :math:`W = L_C^{-1} A^T D^{-1}`, whose two terms can be
:math:`10^8` where their difference is a few nats (see
:class:`~contmix.distributions.LowRankNormal`). The projections :math:`W (x - \mu)` of
these pairs also give the posterior means of the factors of the M-step, :math:`\beta
(x - \mu) = L_C^{-T} W (x - \mu)`. A block of samples whose bounds keep more than
:math:`1 /` :data:`EXACT` of its pairs, and the first E-step, are
computed densely by :class:`~contmix.distributions.LowRankNormal` in float64.

References:
    | Using the Triangle Inequality to Accelerate k-Means (Elkan, 2003)
    | https://cdn.aaai.org/ICML/2003/ICML03-022.pdf
"""

import math

from typing import NamedTuple

import torch

from torch import Tensor

from .bounds import ROWS, TAIL, Drift, _distances, _softmax, _sparse_softmax
from .factors import batch_statistics, pair_statistics
from .sums import kept_pairs
from ..distributed import all_reduce
from ..distributions import LowRankNormal
from ..distributions.normal import capacitance_tril

# a block whose bounds keep more than 1 / EXACT of its pairs is computed densely: a pair
# computed from its difference costs about 1/20 of a sample's dense log-densities (10,000
# Fashion-MNIST images, 250 components, 11 iterations from the "fa" start: 1/8 6.7 s,
# 1/16 5.3 s, 1/32 6.6 s, 1/64 8.6 s; dense 13 s)
EXACT = 16
MARGIN = 64 * torch.finfo(torch.float64).eps  # the rounding of the pencils, per condition


class Metric(NamedTuple):
    r"""The components of one iteration in float64: the means :math:`\mu`, with shape
    :math:`(K, M)`, the loadings :math:`A`, with shape :math:`(K, M, R)`, the diagonals
    :math:`D`, with shape :math:`(K, M)`, the whitener :math:`W = L_C^{-1} A^T D^{-1}`,
    with shape :math:`(K, R, M)`, :math:`L_C^{-T}`, with shape :math:`(K, R, R)`, and the
    constants :math:`c_k = \log \pi_k - \frac{1}{2} \log |2 \pi \Sigma_k|`."""

    loc: Tensor
    factor: Tensor
    diag: Tensor
    weight: Tensor
    back: Tensor
    constant: Tensor


def metric(logits: Tensor, loc: Tensor, factor: Tensor, diag: Tensor) -> Metric:
    r"""Returns the :class:`Metric` of the components, in float64.

    Example:
        >>> m = metric(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1, 2, 1), torch.ones(1, 2))
        >>> bool(torch.isclose(m.constant, torch.tensor(-math.log(2 * math.pi)).double()))
        True
    """

    logits, loc, factor, diag = (t.double() for t in (logits, loc, factor, diag))
    tril = capacitance_tril(factor, diag)
    eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device)
    inverse = torch.linalg.solve_triangular(tril, eye.expand_as(tril), upper=False)
    weight = inverse @ (factor / diag.unsqueeze(-1)).mT
    log_det = diag.log().sum(dim=-1) + 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
    constant = logits.log_softmax(dim=-1) - 0.5 * (log_det + loc.shape[-1] * math.log(2 * math.pi))

    return Metric(loc, factor, diag, weight, inverse.mT, constant)


def _largest(old: Metric, new: Metric) -> Tensor:
    r"""Returns a bound from above on the largest generalized eigenvalue of
    :math:`(\Sigma_k, \Sigma'_k)`, with shape :math:`(K,)` (see the module).

    In the basis :math:`Q` of the span of :math:`(B', B)`, with :math:`b = Q^T B` and
    :math:`b' = Q^T B'`, the :math:`2R \times 2R` pencil :math:`(\rho^+ I + b b^T, I +
    b' b'^T)` is solved without forming :math:`I + b' b'^T`, whose entries reach
    :math:`10^{12}` with the diagonals at their floor: the QR decomposition of
    :math:`(b'^T; I)` gives :math:`U^T U = I + b' b'^T`, and the eigenvalues are those of
    :math:`\rho^+ U^{-1} U^{-T} + (U^{-T} b) (U^{-T} b)^T`. The bound is raised by
    :data:`MARGIN` times the condition of :math:`I + b'^T b'`, for the rounding."""

    ratio = new.diag / old.diag
    root = old.diag.rsqrt().unsqueeze(-1)
    before, after = root * old.factor, root * new.factor  # B' and B, (K, M, R)
    basis = torch.linalg.qr(torch.cat((before, after), dim=-1)).Q  # (K, M, 2R)
    before, after = basis.mT @ before, basis.mT @ after
    eye = torch.eye(basis.shape[-1], dtype=basis.dtype, device=basis.device).expand(
        len(basis), -1, -1
    )
    upper = torch.linalg.qr(torch.cat((before.mT, eye), dim=-2)).R  # U^T U = I + b' b'^T
    inverse = torch.linalg.solve_triangular(upper.mT, eye, upper=False)  # U^-T
    whitened = torch.linalg.solve_triangular(upper.mT, after, upper=False)  # U^-T b
    high = ratio.amax(dim=-1)
    pencil = high[:, None, None] * (inverse @ inverse.mT) + whitened @ whitened.mT
    largest = torch.maximum(torch.linalg.eigvalsh(pencil)[:, -1], high)

    return largest * (1 + MARGIN * (1 + before.square().sum(dim=(-2, -1))))


def _shift(old: Metric, new: Metric) -> Tensor:
    r"""Returns :math:`\|\mu_k - \mu'_k\|_{\Lambda'_k}` bounded from above, with shape
    :math:`(K,)`: the difference of the Woodbury form's two terms, with a margin for their
    cancellation."""

    v = new.loc - old.loc
    q = (v.square() / old.diag).sum(dim=-1)
    u = (old.weight @ v.unsqueeze(-1)).squeeze(-1)
    margin = 8 * (v.shape[-1] + u.shape[-1]) * torch.finfo(torch.float64).eps * q

    return ((q - u.square().sum(dim=-1)).clamp(min=0) + margin).sqrt()


def drift(old: Metric, new: Metric) -> Drift:
    r"""Returns the :class:`~contmix.em.bounds.Drift` of the components from ``old`` to
    ``new``: the shifts of the means in the old metrics and the square roots of the
    smallest ratios of the new metrics to the old ones. The largest ratios are left
    infinite: the E-step computes the distance of each sample's largest component
    exactly instead of bounding it.

    Example:
        >>> ones = torch.ones(1, 2)
        >>> old = metric(torch.zeros(1), 0 * ones, torch.zeros(1, 2, 1), ones)
        >>> new = metric(torch.zeros(1), 3 * ones, torch.zeros(1, 2, 1), ones / 4)
        >>> moved = drift(old, new)
        >>> round(float(moved.shift), 6), round(float(moved.low), 6)
        (4.242641, 2.0)
    """

    low = _largest(old, new).rsqrt()

    return Drift(_shift(old, new), low, torch.full_like(low, math.inf), new.constant)


def rounding(m: Metric, norm: float) -> Tensor:
    r"""Returns a bound on the rounding of the distances :math:`s_{nk} = \sqrt{2 (c_k -
    \ell_{nk})}` computed in float64 from the differences of samples of squared norm at
    most ``norm``, with shape :math:`(K,)`: both terms of the squared distance are at
    most :math:`\lambda^{max}_k (\sqrt{norm} + \|\mu_k\|)^2`, with :math:`\lambda^{max}_k`
    the largest diagonal precision (:math:`W^T W \preceq D^{-1}`), and each is rounded by
    at most :math:`(M + R + 5) u` of that.

    Example:
        >>> ones = torch.ones(2, 3)
        >>> m = metric(torch.zeros(2), 0 * ones, torch.zeros(2, 3, 1), ones)
        >>> slack = rounding(m, 100.0)
        >>> bool((slack > 0).all() and (slack < 1e-6).all())
        True
    """

    M, R = m.weight.shape[-1], m.weight.shape[-2]
    u = torch.finfo(torch.float64).eps / 2
    reach = (math.sqrt(norm) + m.loc.norm(dim=-1)).square()
    terms = reach / m.diag.amin(dim=-1)

    return (8 * (M + R + 5) * u * (terms + m.constant.abs() + 1)).sqrt()


def _exact(x: Tensor, rows: Tensor, cols: Tensor, m: Metric) -> tuple[Tensor, Tensor]:
    r"""Returns the squared distances :math:`s^2_{nk}` and the projections :math:`W_k
    (x_n - \mu_k)` of the pairs ``(rows, cols)`` of a block, with shapes :math:`(P,)`
    and :math:`(P, R)`, from the differences themselves, a component at a time (gathered
    per pair instead, the loadings :math:`W_k` would be read :math:`M R` numbers per pair:
    four times the sample itself)."""

    K, R = m.weight.shape[:2]
    order = torch.argsort(cols, stable=True)
    squares, projections = x.new_empty(len(rows)), x.new_empty(len(rows), R)

    for k, index in enumerate(order.split(torch.bincount(cols, minlength=K).tolist())):
        if len(index) > 0:
            diff = x.index_select(0, rows[index]) - m.loc[k]
            u = diff @ m.weight[k].mT
            squares[index] = diff.square() @ m.diag[k].reciprocal() - u.square().sum(dim=-1)
            projections[index] = u

    return squares.clamp(min=0), projections


def weighted_joint(x: Tensor, resp: Tensor, m: Metric) -> Tensor | None:
    r"""Returns :math:`\sum_{n, k} r_{nk} \ell_{nk}` of fixed responsibilities with shape
    :math:`(B, K)`, in float64, from the log-joints of the pairs whose responsibilities
    are not zero alone (:func:`_exact`), or :py:`None` where more than :math:`1 /`
    :data:`EXACT` of them are not zero. With the assignments of k-means held fixed, one
    pair per sample instead of :math:`K`.

    Example:
        >>> x, resp = torch.randn(4, 2).double(), torch.eye(32).double()[[0, 1, 1, 0]]
        >>> zeros = torch.zeros(32, 2)
        >>> m = metric(torch.zeros(32), zeros, zeros.unsqueeze(-1), torch.ones(32, 2))
        >>> reference = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum() - 4 * math.log(32)
        >>> bool(torch.isclose(weighted_joint(x, resp, m), reference.double()))
        True
    """

    rows, cols = resp.nonzero().T
    if EXACT * len(rows) > resp.numel():
        return None

    squares, _ = _exact(x.double(), rows, cols, m)

    return (resp[rows, cols].double() * (m.constant[cols] - 0.5 * squares)).sum()


class BoundedLowRank:
    r"""The E-step of :func:`~contmix.em.fit_mfa` over the components that the bounds do
    not rule out (see the module), with the sums of its M-step.

    It goes through the samples in blocks of :data:`~contmix.em.bounds.ROWS` elements,
    kept in float64 around the reference point, and keeps, between iterations, the
    :math:`B \times K` lower bounds on the distances of each block, and for each sample
    its largest component (whose distance is computed exactly at the next call).

    Arguments:
        x: The samples, with shape :math:`(N, M)`.
        shift: The point that centers them, with shape :math:`(M,)`.

    Example:
        >>> x = torch.cat((torch.randn(50, 3) - 9, torch.randn(50, 3) + 9)).double()
        >>> logits, loc = torch.zeros(10).double(), x[::10]
        >>> factor, diag = torch.zeros(10, 3, 1).double(), torch.ones(10, 3).double()
        >>> e_step = BoundedLowRank(x, torch.zeros(3).double())
        >>> *sums, log_lik = e_step(logits, loc, factor, diag)
        >>> round(float(sums[0].sum()), 9)  # the responsibilities of the 100 samples
        100.0
    """

    def __init__(self, x: Tensor, shift: Tensor):
        M = x.shape[-1]
        self.x = [chunk.double() - shift.double() for chunk in x.split(max(ROWS // M, 1))]
        self.norm = max(float(block.square().sum(dim=-1).max()) for block in self.x)
        self.previous = None  # the metric of the last call
        self.lower = [None] * len(self.x)  # the lower bounds on the distances of each block
        self.top = [None] * len(self.x)  # the largest component of each sample

    def __call__(
        self, logits: Tensor, loc: Tensor, factor: Tensor, diag: Tensor
    ) -> tuple[Tensor, ...]:
        r"""Returns the sums of the M-step (those of
        :func:`~contmix.em.factors.statistics`) and the log-likelihood :math:`\sum_n \log
        p(x_n)`, over all shards, for the centered means."""

        m = metric(logits, loc, factor, diag)
        slack = rounding(m, self.norm)
        moved = None if self.previous is None else drift(self.previous, m)
        components = LowRankNormal(m.loc, m.factor, m.diag)
        log_weights = logits.double().log_softmax(dim=-1)
        sums, log_lik, K = None, 0, len(m.constant)

        for i, x in enumerate(self.x):
            exact = None
            if moved is not None:
                exact = self._sparse(i, x, moved, m, slack)

            if exact is None:
                joint = components.log_prob(x.unsqueeze(-2)) + log_weights
                top, _, total, resp = _softmax(joint)
                block = batch_statistics(x, resp, m.loc, m.back @ m.weight)
                self.lower[i] = _distances(joint, m.constant).sub_(slack).clamp_(min=0)
            else:
                rows, cols, squares, u = exact
                joint = m.constant[cols] - 0.5 * squares
                top, _, total, values = _sparse_softmax(joint, rows, cols, len(x))
                self.lower[i][rows, cols] = squares.sqrt_().sub_(slack[cols]).clamp_(min=0)
                held = kept_pairs(rows, cols, values, K)
                rows, cols, values = rows[held], cols[held], values[held]
                z = (m.back[cols] @ u[held].unsqueeze(-1)).squeeze(-1)  # beta (x - mu)
                block = pair_statistics(x, rows, cols, values, z, K)

            self.top[i] = top
            sums = (
                block if sums is None else tuple(a + b for a, b in zip(sums, block, strict=True))
            )
            log_lik = log_lik + total.sum()

        self.previous = m

        return all_reduce(*sums, log_lik)

    def _sparse(
        self, i: int, x: Tensor, moved: Drift, m: Metric, slack: Tensor
    ) -> tuple[Tensor, ...] | None:
        r"""Returns the pairs of block ``i`` that the bounds keep, sorted by sample, with
        their squared distances and projections (:func:`_exact`), or :py:`None` where
        they keep more than :math:`1 /` :data:`EXACT` of the pairs.

        The distance of each sample's largest component at the last iteration is
        computed first, exactly (up to ``slack``, :func:`rounding`): a component whose
        bound on the log-joint lies more than :data:`~contmix.em.bounds.TAIL` nats below
        that one's is left out. The lower bounds of the others are moved to the new
        parameters, in place."""

        lower, top = self.lower[i], self.top[i]
        first = torch.arange(len(x), device=x.device)
        squares, u = _exact(x, first, top, m)
        least = m.constant[top] - 0.5 * (squares.sqrt() + slack[top]).square()  # from below
        lower = lower.sub_(moved.shift).clamp_(min=0).mul_(moved.low)
        keep = lower.square().mul_(-0.5).add_(m.constant) >= (least - TAIL).unsqueeze(-1)
        keep[first, top] = False
        if EXACT * (int(keep.sum()) + len(x)) > keep.numel():
            return None

        rows, cols = keep.nonzero().T
        others, v = _exact(x, rows, cols, m)
        rows, cols = torch.cat((first, rows)), torch.cat((top, cols))
        order = torch.argsort(rows, stable=True)

        return (
            rows[order],
            cols[order],
            torch.cat((squares, others))[order],
            torch.cat((u, v))[order],
        )
