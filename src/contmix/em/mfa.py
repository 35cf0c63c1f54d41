r"""Expectation-maximization for mixtures of factor analyzers.

The parameters of a mixture of factor analyzers are kept here in their natural form:
log-weights :math:`\log \pi` with shape :math:`(K,)`, means :math:`\mu` with shape
:math:`(K, M)`, loadings :math:`A` with shape :math:`(K, M, R)` and diagonals :math:`D`
with shape :math:`(K, M)`, the covariance of component :math:`k` being :math:`D_k + A_k
A_k^T`. :func:`fit_mfa` and :func:`mfa_log_likelihood` take the samples as a tensor or
as an iterable of batches (:data:`~contmix.distributed.Data`).
"""

__all__ = [
    "MFAFit",
    "fit_mfa",
    "mfa_log_likelihood",
]

from collections.abc import Callable
from typing import NamedTuple

import torch

from torch import Tensor

from .base import check_em, check_reg, degenerate, dtype_of, iterate
from .factors import batch_statistics
from .gmm import bounded
from .lowrank import BoundedLowRank, metric, weighted_joint
from ..cluster import reference
from ..distributed import Data, accumulate, check_batches, samples
from ..distributions import GaussianMixture, LowRankNormal
from ..report import check_progress


class MFAFit(NamedTuple):
    r"""The result of :func:`fit_mfa`."""

    logits: Tensor
    loc: Tensor
    factor: Tensor
    diag: Tensor
    history: Tensor
    converged: bool


def _floor(x: Tensor, reg: float) -> Tensor:
    r"""Returns the smallest diagonal allowed, ``reg`` for every feature, with shape
    :math:`(D,)`: an absolute variance, as the ``reg`` of :class:`~contmix.GMM`, that
    no sample moves (a floor relative to the variance of each feature would be
    inflated by a single outlier, and with it the variances of every component)."""

    return x.new_full(x.shape[-1:], reg)


def _posterior(factor: Tensor, diag: Tensor) -> tuple[Tensor, Tensor]:
    r"""Returns the posterior covariance of the factors :math:`G = (I + A^T D^{-1}
    A)^{-1}`, with shape :math:`(K, R, R)`, and the gain :math:`\beta = G A^T D^{-1}`,
    with shape :math:`(K, R, M)`.

    With :math:`D` at its floor, the capacitance :math:`I + A^T D^{-1} A` has entries
    up to :math:`10^{12}` and, formed in float32, is not positive definite: neither
    inverted nor factored. Instead, the QR decomposition :math:`(D^{-1/2} A; I) = (Q_1;
    Q_2) U`, backward stable, gives :math:`U^T U = I + A^T D^{-1} A` and :math:`Q_2 =
    U^{-1}`, so that :math:`G = Q_2 Q_2^T` and :math:`\beta = Q_2 Q_1^T D^{-1/2}`,
    without forming the capacitance and without a solve (:math:`U` has singular values
    of at least one)."""

    M, R = factor.shape[-2:]
    eye = torch.eye(R, dtype=factor.dtype, device=factor.device)
    root = diag.rsqrt()
    stacked = torch.cat((root.unsqueeze(-1) * factor, eye.expand(len(factor), R, R)), dim=-2)
    q = torch.linalg.qr(stacked).Q
    top, bottom = q[..., :M, :], q[..., M:, :]

    return bottom @ bottom.mT, (bottom @ top.mT) * root.unsqueeze(-2)


def _cholesky(moments: Tensor) -> tuple[Tensor, Tensor]:
    r"""Returns the Cholesky factors of small symmetric matrices, with shape :math:`(K, S,
    S)`, and whether each is positive definite, with shape :math:`(K,)`: the
    Cholesky-Banachiewicz recurrence, one column at a time for all :math:`K` matrices at
    once. :func:`torch.linalg.cholesky_ex` factors a batch one matrix at a time; with
    :math:`K = 250` matrices of size 5 on two threads of a loaded machine, its parallel
    regions took seconds where this takes a millisecond."""

    S = moments.shape[-1]
    tril = torch.zeros_like(moments)
    positive = torch.ones_like(moments[:, 0, 0], dtype=torch.bool)

    for j in range(S):
        row = tril[:, j, :j]
        pivot = moments[:, j, j] - row.square().sum(dim=-1)
        positive = positive & (pivot > 0)  # false for NaN as well
        root = pivot.clamp(min=torch.finfo(moments.dtype).tiny).sqrt()
        tril[:, j, j] = root
        below = moments[:, j + 1 :, j] - (tril[:, j + 1 :, :j] @ row.unsqueeze(-1)).squeeze(-1)
        tril[:, j + 1 :, j] = below / root.unsqueeze(-1)

    return tril, positive


def _solve(moments: Tensor, cross: Tensor) -> Tensor:
    r"""Returns :math:`\text{cross} \cdot \text{moments}^{-1}` for symmetric positive
    semi-definite moments, with shapes :math:`(K, R + 1, R + 1)` and :math:`(K, M, R +
    1)`, in float64, by a Cholesky decomposition and two triangular solves
    (:func:`_cholesky`, :func:`torch.cholesky_solve`). A matrix that is not positive definite
    in the rounding of its sums gets the smallest jitter of :math:`10^{-12}, 10^{-10},
    \dots, 10^{-4}` times its mean diagonal that makes it so (a ridge that hardly moves
    the solution); non-finite sums raise a :class:`ValueError` that names the
    components."""

    finite = torch.isfinite(moments).flatten(1).all(dim=-1)
    finite = finite & torch.isfinite(cross).flatten(1).all(dim=-1)

    if not finite.all():
        raise degenerate("sufficient statistics", finite, finite, "")

    moments = moments.double()
    tril, positive = _cholesky(moments)
    scale = moments.diagonal(dim1=-2, dim2=-1).mean(dim=-1)
    eye = torch.eye(moments.shape[-1], dtype=moments.dtype, device=moments.device)

    for power in range(-12, -3, 2):
        failed = ~positive
        if not failed.any():
            break
        tril_, positive_ = _cholesky(moments + (10.0**power * scale)[:, None, None] * eye)
        tril = torch.where(failed[:, None, None], tril_, tril)
        positive = torch.where(failed, positive_, positive)

    return torch.cholesky_solve(cross.double().mT, tril).mT


def _m_step(
    sums: tuple[Tensor, ...],
    posterior: Tensor,
    loc: Tensor,
    factor: Tensor,
    diag: Tensor,
    floor: Tensor,
    N: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""One M-step of EM for MFA on centered samples, from the sums of
    :func:`~contmix.em.factors.statistics` over all batches and shards.

    The factors have the Gaussian posterior :math:`z \mid x, k \sim \mathcal{N}(\beta_k
    (x - \mu_k), G_k)` with :math:`G_k = (I + A_k^T D_k^{-1} A_k)^{-1}` and
    :math:`\beta_k = G_k A_k^T D_k^{-1}`. With :math:`\tilde{z} = (z, 1)`, the
    loadings and means solve one :math:`(R + 1) \times (R + 1)` system per component,
    and the diagonal needs only the diagonal of the second moments: no :math:`M \times
    M` matrix is formed. Made safe in float32 where the diagonals are at their floor:
    :math:`G_k` and :math:`\beta_k` come from a QR decomposition (:func:`_posterior`), the
    sums are accumulated in float64 (:func:`~contmix.em.factors.statistics`) and the
    systems are solved by Cholesky decompositions in float64 with a guard (:func:`_solve`).
    The posterior means :math:`z_{nk} = \beta_k (x_n - \mu_k)` are one float32 product
    (around the reference point of the samples, :func:`~contmix.em.factors.latent`; of the
    pairs of the sparse sums, from the differences themselves,
    :func:`~contmix.em.factors.projections`); their rounding does not bias the diagonals,
    which are the residuals of the regression of :math:`x` on these very :math:`\tilde{z}`,
    exact in float64 (formed from float32 sums, the diagonals at the floor came out 10
    times too large). Components without samples keep their parameters. :math:`N` is the
    number of samples of all batches and shards.
    """

    R, dtype = factor.shape[-1], factor.dtype
    nk, sz, szz, sxz, sx, sxx = sums
    szz = szz + nk[:, None, None] * posterior.double()

    empty = nk <= 10 * torch.finfo(dtype).eps * N
    moments = torch.cat(
        (
            torch.cat((szz, sz.unsqueeze(-1)), dim=-1),
            torch.cat((sz, nk.unsqueeze(-1)), dim=-1).unsqueeze(-2),
        ),
        dim=-2,
    )
    moments = moments + empty[:, None, None] * torch.eye(R + 1, dtype=nk.dtype, device=nk.device)
    cross = torch.cat((sxz, sx.unsqueeze(-1)), dim=-1)  # (K, M, R + 1)
    augmented = _solve(moments, cross)

    new_diag = (sxx - (augmented * cross).sum(dim=-1)) / nk.clamp(min=1e-300).unsqueeze(-1)
    new_diag = torch.maximum(new_diag.to(dtype), floor)
    augmented = augmented.to(dtype)

    keep = empty.unsqueeze(-1)
    factor = torch.where(keep.unsqueeze(-1), factor, augmented[..., :R])
    loc = torch.where(keep, loc, augmented[..., R])
    diag = torch.where(keep, diag, new_diag)
    logits = (nk / N).clamp(min=torch.finfo(dtype).tiny).log().to(dtype)

    return logits, loc, factor, diag


def _check_diagonals(diag: Tensor) -> None:
    r"""Raises a :class:`ValueError` that names the components whose diagonals are not
    positive and finite."""

    finite, positive = torch.isfinite(diag).all(dim=-1), (diag > 0).all(dim=-1)

    if not (finite & positive).all():
        fix = "reg (the smallest variance of a feature in a component, e.g. reg=1e-6)"
        raise degenerate("diagonal", finite, positive, fix)


@torch.no_grad()
def fit_mfa(
    x: Data,
    logits: Tensor,
    loc: Tensor,
    factor: Tensor,
    diag: Tensor,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg: float = 1e-6,
    resp: Tensor | Callable[[Tensor], Tensor] | None = None,
    progress: bool | None = None,
) -> MFAFit:
    r"""Fits a mixture of factor analyzers by expectation-maximization.

    The model is :math:`p(x) = \sum_k \pi_k \mathcal{N}(x \mid \mu_k, D_k + A_k
    A_k^T)`. The E-step computes the responsibilities :math:`r_{nk} = p(k \mid x_n)`
    (by the Woodbury identity) and the posterior of the factors, :math:`\mathbb{E}[z
    \mid x_n, k] = \beta_k (x_n - \mu_k)` and :math:`\mathbb{E}[z z^T \mid x_n, k] =
    G_k + \mathbb{E}[z] \mathbb{E}[z]^T`. With :math:`\tilde{A}_k = (A_k, \mu_k)` and
    :math:`\tilde{z} = (z, 1)`, the M-step is

    .. math:: \tilde{A}_k = \Big( \sum_n r_{nk} x_n \mathbb{E}[\tilde{z}]^T \Big)
        \Big( \sum_n r_{nk} \mathbb{E}[\tilde{z} \tilde{z}^T] \Big)^{-1} , \quad
        D_k = \frac{1}{N_k} \operatorname{diag} \Big( \sum_n r_{nk} x_n x_n^T -
        \tilde{A}_k \sum_n r_{nk} \mathbb{E}[\tilde{z}] x_n^T \Big)

    at a cost of :math:`O(N K M R)` per iteration, never forming an :math:`M \times M`
    matrix. Where :func:`~contmix.em.gmm.bounded` (from 128 features on, samples in a
    tensor on the CPU), the E-step computes only the log-densities that bounds carried from
    the previous iteration do not rule out, exactly
    (:class:`~contmix.em.lowrank.BoundedLowRank`: the others hold less than :math:`e^{-50}`
    of their sample's mass; in 784-D about 1.4 components per sample instead of :math:`K`
    near convergence), and with fixed responsibilities only those of the pairs whose
    responsibilities are not zero (:func:`~contmix.em.lowrank.weighted_joint`). The
    diagonal is floored at ``reg``, an absolute variance as the ``reg`` of
    :class:`~contmix.GMM` (which adds it to the covariances), so that degenerate clusters
    (duplicated samples, constant features) stay finite; the floor depends on no sample, so
    that an outlier does not move it. Components without samples keep their parameters. The
    posterior of the factors and the systems of the M-step are solved by QR and guarded
    Cholesky decompositions and the sums accumulated in float64 (see :func:`_m_step`),
    stable in float32 with diagonals at the floor; a fit that cannot continue (a zero
    variance with ``reg=0``, an overflow) raises a :class:`ValueError` that names the
    components. The samples are taken around their median
    (:func:`~contmix.cluster.reference`), which an outlier does not move as it moves their
    mean. It stops when the mean log-likelihood changes by less than ``tol``, as
    :class:`sklearn.mixture.GaussianMixture` does. EM never lowers the likelihood. A fit
    that stops at ``max_iter`` without converging warns with a
    :class:`~contmix.report.ConvergenceWarning`; a progress bar counts the iterations, the
    mean log-likelihood in its postfix (:func:`~contmix.report.progress_bar`).

    Within :func:`~contmix.distributed.sharded`, :math:`x` (and ``resp``) is this
    process's shard: the reference point, the sums of the M-step and the log-likelihood
    are over all shards, and every process returns the fit of the whole data.

    Of an iterable of batches (:data:`~contmix.distributed.Data`), each iteration is one
    pass through the batches, in which the E-step and the sums of the M-step of a batch
    are computed and dropped (three more passes come first: two for the reference
    point, one for :math:`N`): the fit of their concatenation, up to the rounding of
    the float64 sums, holding a batch at a time.

    References:
        | The EM Algorithm for Mixtures of Factor Analyzers (Ghahramani et al., 1996)
        | http://mlg.eng.cam.ac.uk/zoubin/papers/tr-96-1.pdf

    Arguments:
        x: The samples, with shape :math:`(N, M)`, or an iterable of batches.
        logits: The initial log-weights, with shape :math:`(K,)`.
        loc: The initial means, with shape :math:`(K, M)`.
        factor: The initial loadings, with shape :math:`(K, M, R)`.
        diag: The initial diagonals, with shape :math:`(K, M)`.
        tol: The tolerance on the mean log-likelihood.
        max_iter: The maximum number of iterations.
        reg: The floor of the diagonals, a variance in the units of :math:`x^2`.
        resp: Fixed responsibilities, with shape :math:`(N, K)`, or a function that
            returns those of a batch (for an iterable of batches). If given, only the
            factor analyzers are fitted (to the weighted samples of each component), and
            the history is the mean of :math:`\sum_k r_{nk} \log \pi_k p_k(x_n)`, a
            lower bound of the mean log-likelihood.
        progress: Whether to show a progress bar (:py:`None`: only in a terminal).

    Returns:
        A :class:`MFAFit` with the fitted parameters, the mean log-likelihood at each
        E-step and whether it converged within ``max_iter`` iterations.

    Example:
        >>> x = torch.randn(500, 1) * torch.tensor([3.0, 2.0, 1.0]) + 0.1 * torch.randn(500, 3)
        >>> ones = torch.ones(1, 3)
        >>> fit = fit_mfa(x, torch.zeros(1), torch.zeros(1, 3), ones.unsqueeze(-1), ones)
        >>> fit.converged, bool(fit.history.diff().min() > -1e-5)
        (True, True)
        >>> direction = fit.factor[0, :, 0] / fit.factor[0, :, 0].norm()
        >>> bool(direction.abs().allclose(torch.tensor([3.0, 2.0, 1.0]) / 14**0.5, atol=1e-2))
        True
    """

    check_reg(reg)
    check_em(tol, max_iter)
    check_progress(progress)
    check_batches(x)
    _check_diagonals(diag)
    if resp is not None and not callable(resp) and not isinstance(x, Tensor):
        raise TypeError(
            "For an iterable of batches, resp must be a function of a batch that returns "
            f"its responsibilities, with shape (B, K), got {type(resp).__name__}."
        )

    shift, N = reference(x), samples(x)
    fixed = resp if resp is None or callable(resp) else lambda batch: resp
    floor = _floor(shift, reg)
    params = (logits, loc - shift, factor, diag)
    pairs = bounded(x, logits.shape[-1])  # the E-step over the pairs that matter
    expectation = BoundedLowRank(x, shift) if pairs and resp is None else None

    def step() -> float:
        nonlocal params
        logits, loc, factor, diag = params
        mixture = GaussianMixture(LowRankNormal(loc, factor, diag), logits)
        posterior, beta = _posterior(factor, diag)  # (K, R, R), (K, R, M)
        # with fixed responsibilities, the log-joints of their pairs alone
        assigned = metric(logits, loc, factor, diag) if pairs and fixed is not None else None

        def block(batch: Tensor) -> tuple[Tensor, ...]:
            centered = batch - shift
            if fixed is None:
                joint = mixture.joint(centered)
                log_p = torch.logsumexp(joint, dim=-1, keepdim=True)
                r, bound = (joint - log_p).exp(), log_p.sum(dtype=torch.float64)
            else:
                r = fixed(batch)
                bound = None if assigned is None else weighted_joint(centered, r, assigned)
                if bound is None:
                    bound = (r * mixture.joint(centered)).sum(dtype=torch.float64)
            return (*batch_statistics(centered, r, loc, beta), bound)

        if expectation is None:
            *sums, bound = accumulate(block, x)
        else:
            *sums, bound = expectation(logits, loc, factor, diag)
        params = _m_step(sums, posterior, loc, factor, diag, floor, N)
        _check_diagonals(params[-1])
        return float(bound / N)  # the one host transfer of the iteration

    what = "EM" if resp is None else "EM of the factor analyzers"
    history, converged = iterate(step, tol, max_iter, what, progress)
    logits, loc, factor, diag = params
    history = torch.tensor(history, dtype=dtype_of(x), device=shift.device)

    return MFAFit(logits, loc + shift, factor, diag, history, converged)


@torch.no_grad()
def mfa_log_likelihood(
    x: Data, logits: Tensor, loc: Tensor, factor: Tensor, diag: Tensor
) -> Tensor:
    r"""Returns the mean log-likelihood of a mixture of factor analyzers,

    .. math:: \frac{1}{N} \sum_n \log \sum_k \pi_k \mathcal{N}(x_n \mid \mu_k, D_k +
        A_k A_k^T) ,

    evaluated around :func:`~contmix.cluster.reference` as :func:`fit_mfa` does, over
    all shards within :func:`~contmix.distributed.sharded`; of an iterable of batches,
    over the batches (four passes).

    Example:
        >>> x = torch.randn(100, 3)
        >>> ones = torch.ones(1, 3)
        >>> ll = mfa_log_likelihood(x, torch.zeros(1), 0 * ones, 0 * ones.unsqueeze(-1), ones)
        >>> reference = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=-1).mean()
        >>> bool(torch.isclose(ll, reference, atol=1e-5))
        True
    """

    check_batches(x)
    shift, N = reference(x), samples(x)
    mixture = GaussianMixture(LowRankNormal(loc - shift, factor, diag), logits)
    (total,) = accumulate(lambda b: (mixture.log_prob(b - shift).sum(dtype=torch.float64),), x)

    return (total / N).to(dtype_of(x))
