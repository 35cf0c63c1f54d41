r"""Expectation-maximization for Gaussian mixtures: :func:`fit_gmm`, :func:`gmm_m_step`
and :func:`gmm_log_likelihood` (see :mod:`contmix.em`)."""

from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

import torch

from torch import Tensor

from . import full
from .base import BLOCK, CACHE, check_em, check_reg, degenerate, dtype_of, iterate
from .bounds import Bounded
from .full import REG
from .full import factor as _factor
from .sums import SPARSE, weighted_sums
from ..distributed import Data, accumulate, all_reduce, batches, check_batches, mean, samples
from ..distributions import LOG_2PI, DiagNormal, FullNormal, GaussianMixture
from ..report import check_progress

CovarianceType = Literal["full", "diagonal", "spherical"]
COVARIANCE_TYPES = ("full", "diagonal", "spherical")

# the dimension from which full covariances take the covariance form (K=10, N=20,000, one
# iteration: 20-D 11 ms by the statistics vs 23 ms; 24-D 38 vs 28 ms; 128-D 1.66 vs 0.27 s)
COVARIANCE_FORM = 24

# the dimension from which the diagonal E-step is bounded (K=32, N=50,000, 20 iterations,
# separated / overlapping blobs, bounded against dense: 16-D 0.89x / 0.49x, 64-D 1.66x /
# 0.90x, 256-D 1.62x / 1.35x; 784-D Fashion-MNIST, 250 components: 7x per late iteration)
BOUNDED = 128


class GMMFit(NamedTuple):
    r"""The result of :func:`fit_gmm`."""

    logits: Tensor
    means: Tensor
    covariances: Tensor
    history: Tensor
    converged: bool


def _check_variances(covariances: Tensor) -> None:
    r"""Raises a :class:`ValueError` that names the components whose (diagonal or
    spherical) variances are not positive and finite."""

    finite = torch.isfinite(covariances).all(dim=-1)
    positive = (covariances > 0).all(dim=-1)

    if not (finite & positive).all():
        raise degenerate("variance", finite, positive, REG)


def gaussian_mixture(
    logits: Tensor, means: Tensor, covariances: Tensor, covariance_type: CovarianceType
) -> GaussianMixture:
    r"""Builds the :class:`GaussianMixture` of natural parameters.

    Example:
        >>> d = gaussian_mixture(torch.zeros(2), torch.randn(2, 3), torch.ones(2, 3), "diagonal")
        >>> d.event_shape
        torch.Size([3])
    """

    if covariance_type == "full":
        base = FullNormal(means, scale_tril=_factor(covariances))
    else:
        _check_variances(covariances)
        base = DiagNormal(means, covariances.sqrt())

    return GaussianMixture(base, logits)


def _rows(size: int) -> int:
    r"""The number of samples of a block of statistics of ``size`` elements each: as many
    as :data:`BLOCK` elements hold, and at least 64 (a product of fewer rows with the
    :math:`P \times K` parameters reads them for little work: with full covariances in
    784 dimensions, 3 rows made an EM iteration 40 times slower) while they stay under
    :data:`CACHE` elements."""

    return max(BLOCK // size, min(64, CACHE // size), 1)


def _split(
    x: Tensor, resp: Tensor, covariance_type: CovarianceType
) -> Iterable[tuple[Tensor, Tensor]]:
    r"""Splits the samples and their responsibilities into blocks of at most
    :data:`BLOCK` sufficient statistics."""

    step = _rows(_size(x.shape[-1], covariance_type))
    return zip(x.split(step), resp.split(step), strict=True)


def _triangle(D: int, device: torch.device) -> tuple[Tensor, Tensor]:
    r"""Returns the row and column indices of the lower triangle of a :math:`D \times D`
    matrix, diagonal included."""

    return tuple(torch.tril_indices(D, D, device=device))


def _features(x: Tensor, covariance_type: CovarianceType) -> Tensor:
    r"""Returns the sufficient statistics :math:`\phi(x) = (q(x), x, 1)` of each sample,
    where :math:`q(x)` is the lower triangle of :math:`x x^T` for full covariances and
    :math:`x \odot x` otherwise, with shape :math:`(N, P)`."""

    if covariance_type == "full":
        rows, cols = _triangle(x.shape[-1], x.device)
        outer = x.unsqueeze(-1) * x.unsqueeze(-2)
        quadratic = outer.flatten(-2).index_select(-1, rows * x.shape[-1] + cols)
    else:
        quadratic = x.square()

    return torch.cat((quadratic, x, torch.ones_like(x[:, :1])), dim=-1)


def _size(D: int, covariance_type: CovarianceType) -> int:
    r"""The number :math:`P` of sufficient statistics of a sample."""

    return D * (D + 1) // 2 + D + 1 if covariance_type == "full" else 2 * D + 1


def _blocks(x: Tensor, covariance_type: CovarianceType) -> Callable[[], Iterable[Tensor]]:
    r"""Returns a function that yields :func:`_features` of :math:`x` block by block,
    each block small enough to stay in cache. The blocks are computed once and kept
    when they fit in :data:`CACHE` elements, and recomputed at each call otherwise."""

    size = _size(x.shape[-1], covariance_type)
    chunks = x.split(_rows(size))

    if len(x) * size <= CACHE:
        blocks = [_features(chunk, covariance_type) for chunk in chunks]
        return lambda: blocks

    return lambda: (_features(chunk, covariance_type) for chunk in chunks)


def _stream(x: Data, shift: Tensor, covariance_type: CovarianceType) -> Iterable[Tensor]:
    r"""Yields :func:`_features` of the batches of :math:`x`, in float64 around
    ``shift``, block by block (one pass, nothing kept)."""

    size = _size(shift.shape[-1], covariance_type)

    for batch in batches(x):
        for chunk in batch.split(_rows(size)):
            yield _features(chunk.double() - shift, covariance_type)


def _sources(x: Data, covariance_type: CovarianceType) -> tuple[Tensor, int, Callable]:
    r"""Returns the data mean (float64), the number of samples of all shards and a
    function that yields the sufficient statistics around that mean block by block:
    kept in memory for a tensor (:func:`_blocks`), one pass through the batches of an
    iterable at each call (:func:`_stream`)."""

    if isinstance(x, Tensor):
        x = x.double()
        shift = mean(x)
        return shift, samples(x), _blocks(x - shift, covariance_type)

    shift = mean(x)

    return shift, samples(x), lambda: _stream(x, shift, covariance_type)


def _natural(
    logits: Tensor, means: Tensor, covariances: Tensor, covariance_type: CovarianceType
) -> Tensor:
    r"""Returns the coefficients :math:`\theta_k` such that
    :math:`\theta_k^T \phi(x) = \log \pi_k + \log \mathcal{N}(x \mid \mu_k, \Sigma_k)`,
    with shape :math:`(K, P)`, for centered means :math:`\mu_k`.

    .. math:: \theta_k = \left( -\tfrac{1}{2} \Lambda_k, \; \Lambda_k \mu_k, \;
        \log \pi_k - \tfrac{1}{2} \mu_k^T \Lambda_k \mu_k
        - \tfrac{1}{2} \log |2 \pi \Sigma_k| \right), \quad \Lambda_k = \Sigma_k^{-1}

    where the off-diagonal entries of :math:`\Lambda_k` count twice in the lower triangle.
    """

    K, D = means.shape

    if covariance_type == "full":
        tril = _factor(covariances)
        eye = torch.eye(D, dtype=tril.dtype, device=tril.device)
        inverse = torch.linalg.solve_triangular(tril, eye, upper=False)
        precision = inverse.mT @ inverse
        linear = (precision @ means.unsqueeze(-1)).squeeze(-1)
        rows, cols = _triangle(D, means.device)
        quadratic = -precision[:, rows, cols] * torch.where(rows == cols, 0.5, 1.0).to(means)
        log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
    else:
        _check_variances(covariances)
        precision = covariances.reciprocal().expand(-1, D)
        linear = precision * means
        quadratic = -0.5 * precision
        log_det = -precision.log().sum(dim=-1)

    constant = logits.log_softmax(dim=-1) - 0.5 * (
        (linear * means).sum(dim=-1) + log_det + D * LOG_2PI
    )

    return torch.cat((quadratic.expand(K, -1), linear, constant.unsqueeze(-1)), dim=-1)


def _maximization(
    stats: Tensor,
    shift: Tensor,
    covariance_type: CovarianceType,
    tied: bool,
    reg: float,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns the parameters that maximize the expected log-likelihood given the
    weighted sums :math:`\sum_n r_{nk} \phi(x_n - s)`, with shape :math:`(K, P)`."""

    K, D = stats.shape[0], shift.shape[0]
    eps = 10 * torch.finfo(stats.dtype).eps
    nk = stats[:, -1] + eps
    centered = stats[:, -1 - D : -1] / nk[:, None]

    if covariance_type == "full":
        rows, cols = _triangle(D, stats.device)
        second = stats.new_zeros(K, D, D)
        second[:, rows, cols] = stats[:, : -1 - D]
        second[:, cols, rows] = stats[:, : -1 - D]
        covariances = second / nk[:, None, None] - centered[:, :, None] * centered[:, None, :]
    else:
        covariances = stats[:, :D] / nk[:, None] - centered.square()

    if tied:
        weights = (nk / nk.sum()).reshape(-1, *([1] * (covariances.dim() - 1)))
        covariances = (weights * covariances).sum(dim=0, keepdim=True)

    if covariance_type == "full":
        covariances = covariances + reg * torch.eye(D, dtype=stats.dtype, device=stats.device)
    else:
        covariances = covariances.clamp(min=0) + reg
        if covariance_type == "spherical":
            covariances = covariances.mean(dim=-1, keepdim=True)

    return (nk / nk.sum()).log(), centered + shift, covariances


@torch.no_grad()
def gmm_m_step(
    x: Data,
    resp: Tensor | Callable[[Tensor], Tensor],
    covariance_type: CovarianceType = "full",
    tied: bool = False,
    reg: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns the parameters that maximize the expected log-likelihood given the
    responsibilities :math:`r_{nk}`:

    .. math:: N_k = \sum_n r_{nk}, \quad \pi_k = \frac{N_k}{N}, \quad
        \mu_k = \frac{1}{N_k} \sum_n r_{nk} x_n, \quad
        \Sigma_k = \frac{1}{N_k} \sum_n r_{nk} (x_n - \mu_k)(x_n - \mu_k)^T + \lambda I

    A tied covariance is :math:`\sum_k N_k \Sigma_k / N`; a diagonal covariance keeps
    the diagonal, a spherical one its mean. The sums
    :math:`\sum_n r_{nk} (1, x_n, x_n x_n^T)` are one matrix product of the
    responsibilities with the sufficient statistics of the samples, taken around the
    data mean, in blocks of bounded memory, in float64 whatever the dtype of :math:`x`.
    Within :func:`~contmix.distributed.sharded`, :math:`x` and the responsibilities are
    this process's shard and the sums (and the data mean) are over all shards. Of an
    iterable of batches, the sums are over the batches, in two passes (one for the mean).

    Arguments:
        x: The samples, with shape :math:`(N, D)`, or an iterable of batches.
        resp: The responsibilities, with shape :math:`(N, K)`, or a function that
            returns those of a batch, with shape :math:`(B, K)` (for an iterable).
        covariance_type: ``"full"``, ``"diagonal"`` or ``"spherical"``.
        tied: Whether the components share one covariance.
        reg: The regularization :math:`\lambda` added to the variances.

    Example:
        >>> x = torch.randn(100, 2)
        >>> logits, means, covs = gmm_m_step(x, torch.ones(100, 1))
        >>> torch.allclose(covs[0], torch.cov(x.T, correction=0), atol=1e-4)
        True
        >>> same = gmm_m_step(x.split(30), lambda b: torch.ones(len(b), 1))
        >>> torch.allclose(same[2], covs, atol=1e-6)
        True
    """

    check_reg(reg)
    check_batches(x)

    if covariance_type == "full" and _covariance_form(x):
        return full.m_step(x, resp, tied, reg)

    if isinstance(x, Tensor):
        if callable(resp):
            resp = resp(x)
        dtype, x, resp = x.dtype, x.double(), resp.double()
        shift = mean(x)
        pairs = _split(x - shift, resp, covariance_type)
        stats = all_reduce(
            sum(weighted_sums(r, _features(x_, covariance_type)) for x_, r in pairs)
        )
    else:
        if not callable(resp):
            raise TypeError(
                "For an iterable of batches, resp must be a function of a batch that returns "
                f"its responsibilities, with shape (B, K), got {type(resp).__name__}."
            )
        dtype, shift = dtype_of(x), mean(x)

        def block(batch: Tensor) -> tuple[Tensor]:
            pairs = _split(batch.double() - shift, resp(batch).double(), covariance_type)
            return (sum(weighted_sums(r, _features(x_, covariance_type)) for x_, r in pairs),)

        (stats,) = accumulate(block, x)

    return tuple(p.to(dtype) for p in _maximization(stats, shift, covariance_type, tied, reg))


@torch.no_grad()
def fit_gmm(
    x: Data,
    logits: Tensor,
    means: Tensor,
    covariances: Tensor,
    covariance_type: CovarianceType = "full",
    tied: bool = False,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg: float = 1e-6,
    progress: bool | None = None,
) -> GMMFit:
    r"""Fits a Gaussian mixture by expectation-maximization from the given parameters.

    Each iteration computes the responsibilities :math:`r_{nk} = p(k \mid x_n)`
    (E-step) and then the M-step of :func:`gmm_m_step`. It stops when the mean
    log-likelihood of the E-step changes by less than ``tol``, as
    :class:`sklearn.mixture.GaussianMixture` does. EM never lowers the likelihood.

    Both steps are matrix products with the sufficient statistics
    :math:`\phi(x) = (x x^T, x, 1)` of the samples (the lower triangle of
    :math:`x x^T` for full covariances, its diagonal otherwise), computed once:
    the E-step is :math:`\log \pi_k + \log \mathcal{N}(x \mid \mu_k, \Sigma_k) =
    \theta_k^T \phi(x)` with the natural parameters :math:`\theta_k`, the M-step
    reads the parameters from :math:`\sum_n r_{nk} \phi(x_n)`. Both go through the
    samples block by block, so that a block stays in cache between the two. As in
    scikit-learn, the statistics are accumulated in float64 whatever the dtype of
    :math:`x` (the expanded quadratic form loses too much in float32); the fitted
    parameters come back in the dtype of :math:`x`.

    With diagonal or spherical covariances, 128 features or more, more than 8 components
    and the samples in a tensor on the CPU, the E-step computes only the log-joints that
    bounds from an earlier iteration do not rule out (:class:`~contmix.em.bounds.Bounded`,
    as Elkan's bounds do for k-means): those more than 50 nats below a sample's largest,
    whose responsibilities are below :math:`e^{-50}`, are left out, and the others are
    those of the dense E-step. The fit is the dense one's to the rounding of float64; in 784-D,
    with 250 components, an iteration computes about one log-joint per sample instead of
    250.

    Within :func:`~contmix.distributed.sharded`, :math:`x` is this process's shard: the
    sums of the M-step and of the log-likelihood are over all shards, in one
    :func:`torch.distributed.all_reduce` per iteration, and every process returns the
    fit of the whole data.

    Of an iterable of batches (:data:`~contmix.distributed.Data`), each iteration is one
    pass through the batches (and two more passes come first, for the data mean and
    :math:`N`): the statistics of a block are computed, used and dropped, holding a
    batch, a block and the :math:`K \times P` sums at a time, and the sums are those of
    the tensor up to their rounding in float64. The parameters come back in the dtype
    of the batches.

    A fit that stops at ``max_iter`` iterations without converging warns with a
    :class:`~contmix.report.ConvergenceWarning` (and is returned all the same). A
    progress bar counts the iterations, the mean log-likelihood in its postfix
    (:func:`~contmix.report.progress_bar`); its one host transfer per iteration is the
    one the convergence test needs.

    References:
        | Maximum Likelihood from Incomplete Data via the EM Algorithm (Dempster et al., 1977)
        | https://doi.org/10.1111/j.2517-6161.1977.tb01600.x

    Arguments:
        x: The samples, with shape :math:`(N, D)`, or an iterable of batches.
        logits: The initial log-weights, with shape :math:`(K,)`.
        means: The initial means, with shape :math:`(K, D)`.
        covariances: The initial covariances (see :mod:`contmix.em`).
        covariance_type: ``"full"``, ``"diagonal"`` or ``"spherical"``.
        tied: Whether the components share one covariance.
        tol: The tolerance on the mean log-likelihood.
        max_iter: The maximum number of iterations.
        reg: The regularization :math:`\lambda` added to the variances.
        progress: Whether to show a progress bar (:py:`None`: only in a terminal).

    Returns:
        A :class:`GMMFit` with the fitted parameters, the mean log-likelihood at each
        E-step and whether it converged within ``max_iter`` iterations.

    Example:
        >>> x = torch.cat((torch.randn(100, 2) - 5, torch.randn(100, 2) + 5))
        >>> fit = fit_gmm(x, torch.zeros(2), x[[0, -1]], torch.ones(2, 2), "diagonal")
        >>> fit.converged, fit.means.round().abs().tolist()
        (True, [[5.0, 5.0], [5.0, 5.0]])
        >>> same = fit_gmm(x.split(64), torch.zeros(2), x[[0, -1]], torch.ones(2, 2), "diagonal")
        >>> torch.allclose(same.means, fit.means), len(same.history) == len(fit.history)
        (True, True)
    """

    check_reg(reg)
    check_em(tol, max_iter)
    check_progress(progress)
    check_batches(x)
    params = tuple(t.double() for t in (logits, means, covariances))
    dtype = dtype_of(x)

    if covariance_type == "full" and _covariance_form(x):
        params, history, converged = full.fit(x, params, tied, tol, max_iter, reg, progress)
        return GMMFit(*(t.to(dtype) for t in params), history.to(dtype), converged)

    if _bounded(x, logits, covariance_type):
        shift, N = mean(x.double()), samples(x)  # then the features of a block at a time
        expectation = Bounded(x, shift, N)
    else:
        shift, N, blocks = _sources(x, covariance_type)
        expectation = lambda logits, means, covariances, theta: _expectation(blocks(), theta)

    def step() -> float:
        nonlocal params
        logits, means, covariances = params
        theta = _natural(logits, means - shift, covariances, covariance_type).T
        stats, log_lik = expectation(logits, means - shift, covariances, theta)
        params = _maximization(stats, shift, covariance_type, tied, reg)
        return float(log_lik / N)  # the one host transfer of the iteration

    history, converged = iterate(step, tol, max_iter, "EM", progress)
    history = torch.tensor(history, dtype=torch.float64, device=shift.device)

    return GMMFit(*(t.to(dtype) for t in params), history.to(dtype), converged)


def _bounded(x: Data, logits: Tensor, covariance_type: CovarianceType) -> bool:
    r"""Whether the E-step of :func:`fit_gmm` is that of :class:`~contmix.em.bounds.Bounded`:
    for diagonal and spherical covariances, where :func:`bounded`."""

    return covariance_type != "full" and bounded(x, logits.shape[-1])


def bounded(x: Data, K: int) -> bool:
    r"""Whether EM's E-step over :math:`K` components goes over the pairs that bounds do not
    rule out (:mod:`~contmix.em.bounds`, :mod:`~contmix.em.lowrank`): from :data:`BOUNDED`
    features on, more than :math:`2 \times` :data:`~contmix.em.sums.SPARSE` components,
    and samples in a tensor on the CPU (on a GPU, the selection of the pairs would wait for
    the device) whose :math:`N K` distances fit in :data:`CACHE` elements.

    Example:
        >>> bounded(torch.randn(100, 784), 250), bounded(torch.randn(100, 16), 250)
        (True, False)
    """

    return (
        isinstance(x, Tensor)
        and x.device.type == "cpu"
        and x.shape[-1] >= BOUNDED
        and K > 2 * SPARSE
        and len(x) * K <= CACHE
    )


def _expectation(blocks: Iterable[Tensor], theta: Tensor) -> tuple[Tensor, Tensor]:
    r"""The E-step of :func:`fit_gmm`: the sums :math:`\sum_n r_{nk} \phi(x_n)` and the
    log-likelihood :math:`\sum_n \log p(x_n)`, over all shards."""

    def block(phi: Tensor) -> tuple[Tensor, Tensor]:
        joint = phi @ theta
        top = joint.amax(dim=-1, keepdim=True)
        weights = (joint - top).exp()  # one exp: the softmax and its log-sum-exp at once
        total = weights.sum(dim=-1, keepdim=True)
        return weighted_sums(weights / total, phi), (top + total.log()).sum()

    return accumulate(block, blocks)


@torch.no_grad()
def gmm_log_likelihood(
    x: Data,
    logits: Tensor,
    means: Tensor,
    covariances: Tensor,
    covariance_type: CovarianceType = "full",
) -> Tensor:
    r"""Returns the mean log-likelihood of a Gaussian mixture of natural parameters,

    .. math:: \frac{1}{N} \sum_n \log \sum_k \pi_k \mathcal{N}(x_n \mid \mu_k, \Sigma_k) ,

    computed as the E-step of :func:`fit_gmm` computes it (in float64, around the data
    mean, over all shards within :func:`~contmix.distributed.sharded`), in the dtype of
    :math:`x`. It is the value :func:`fit_gmm` records for these parameters. Of an
    iterable of batches, three passes, in the dtype of the batches.

    Example:
        >>> x = torch.randn(100, 2, dtype=torch.float64)
        >>> logits, means, covs = torch.zeros(1), torch.zeros(1, 2), torch.eye(2).unsqueeze(0)
        >>> ll = gmm_log_likelihood(x, logits, means, covs)
        >>> reference = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> bool(torch.isclose(ll, reference.log_prob(x.float()).mean().double(), atol=1e-5))
        True
    """

    check_batches(x)
    dtype = dtype_of(x)
    logits, means, covariances = (t.double() for t in (logits, means, covariances))

    if covariance_type == "full" and _covariance_form(x):
        shift, N, each = full.sources(x)
        total = full.log_likelihood(each, logits, means - shift, _factor(covariances))
        return (total / N).to(dtype)

    shift, N, blocks = _sources(x, covariance_type)
    theta = _natural(logits, means - shift, covariances, covariance_type).T
    (total,) = accumulate(lambda phi: (torch.logsumexp(phi @ theta, dim=-1).sum(),), blocks())

    return (total / N).to(dtype)


def _covariance_form(x: Data) -> bool:
    r"""Whether full covariances take the covariance form of :mod:`contmix.em.full`: from
    :data:`COVARIANCE_FORM` dimensions on (below, the :math:`P = D (D + 3) / 2 + 1`
    sufficient statistics of a sample are few and their products are faster)."""

    for batch in batches(x):
        return batch.shape[-1] >= COVARIANCE_FORM

    return False
