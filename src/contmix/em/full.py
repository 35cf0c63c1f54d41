r"""The covariance form of full-covariance EM (:func:`~contmix.em.fit_gmm`,
:func:`~contmix.em.gmm_m_step` and :func:`~contmix.em.gmm_log_likelihood` in high
dimension).

The sufficient statistics :math:`\phi(x) = (x x^T, x, 1)` hold
:math:`P \approx D^2 / 2` numbers per sample (308,505 in 784-D): the products with them
read :math:`N P` numbers for :math:`N P K` flops, and are bound by memory. The covariance
form does the same work by products of :math:`D \times D` matrices, bound by the flops:

* E-step: :math:`\log \mathcal{N}(x \mid \mu_k, \Sigma_k) = -\frac{1}{2} \|y\|^2 -
  \sum_i \log L_{k,ii} - \frac{D}{2} \log 2 \pi` with :math:`L_k y = x - \mu_k`, a
  triangular solve with the Cholesky factor :math:`L_k` of :math:`\Sigma_k`, per component.
* M-step: the sums :math:`\sum_n r_{nk} (1, x_n - c_k, (x_n - c_k)(x_n - c_k)^T)` around a
  centre :math:`c_k` near the new mean (the means of the E-step in :func:`fit_gmm`, the new
  means themselves in :func:`gmm_m_step`), one :math:`(D, N_k) \times (N_k, D)` product per
  component over the samples whose responsibility is not negligible (:func:`scatter`).

Both go through the samples in blocks of :data:`ROWS` elements, in float64.
"""

from collections.abc import Callable, Iterable

import torch

from torch import Tensor

from .base import degenerate, dtype_of, iterate
from .sums import kept as _kept
from ..distributed import Data, accumulate, batches, mean, samples
from ..distributions import LOG_2PI
from ..utils import cholesky

ROWS = 2**21  # elements of a block of samples (B, D)
REG = "reg (the variance added to the covariances, e.g. reg=1e-3)"


def factor(covariances: Tensor) -> Tensor:
    r"""Returns the Cholesky factors of full covariances (:func:`~contmix.utils.cholesky`),
    or raises a :class:`ValueError` that names the components that have none."""

    try:
        return cholesky(covariances)
    except ValueError:
        pass

    finite = torch.isfinite(covariances).flatten(1).all(dim=-1)
    scale = covariances.diagonal(dim1=-2, dim2=-1).mean(dim=-1)
    safe = torch.where(finite[:, None, None], covariances, 0)
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    jittered = safe + 0.1 * torch.where(finite, scale, 1).clamp(min=0)[:, None, None] * eye
    positive = (torch.linalg.cholesky_ex(jittered).info == 0) & (scale > 0)

    raise degenerate("covariance", finite, positive, REG) from None


def rows(D: int) -> int:
    r"""The number of samples of a block: :data:`ROWS` elements, and at least 64."""

    return max(ROWS // D, 64)


def blocks(x: Data, shift: Tensor) -> Callable[[], Iterable[Tensor]]:
    r"""Returns a function that yields the samples of :math:`x` in float64 around
    ``shift``, block by block (of a tensor or of each batch of an iterable; nothing kept)."""

    step = rows(shift.shape[-1])

    def each() -> Iterable[Tensor]:
        for batch in batches(x):
            for chunk in batch.split(step):
                yield chunk.double() - shift

    return each


def log_joint(x: Tensor, logits: Tensor, means: Tensor, tril: Tensor) -> Tensor:
    r"""Returns :math:`\log \pi_k + \log \mathcal{N}(x_n \mid \mu_k, L_k L_k^T)`, with
    shape :math:`(B, K)`, by a triangular solve of :math:`x_n - \mu_k` per component
    (``tril`` has :math:`L = 1` factor when the covariances are tied).

    Example:
        >>> x, mu = torch.randn(5, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
        >>> eye = torch.eye(3, dtype=torch.float64)[None]
        >>> ref = torch.distributions.MultivariateNormal(mu[0], eye[0]).log_prob(x)
        >>> torch.allclose(log_joint(x, torch.zeros(1), mu, eye)[:, 0], ref)
        True
    """

    K, D = means.shape
    out = x.new_empty(len(x), K)

    for k in range(K):
        factor = tril[k % len(tril)]
        y = torch.linalg.solve_triangular(factor.mT, x - means[k], upper=True, left=False)
        out[:, k] = y.square().sum(dim=-1)

    log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
    constant = logits.log_softmax(dim=-1) - log_det - 0.5 * D * LOG_2PI

    return constant - 0.5 * out


def scatter(x: Tensor, resp: Tensor, centers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns the weighted sums around the centres :math:`c_k` of the M-step,

    .. math:: \sum_n r_{nk}, \quad \sum_n r_{nk} (x_n - c_k), \quad
        \sum_n r_{nk} (x_n - c_k)(x_n - c_k)^T ,

    with shapes :math:`(K,)`, :math:`(K, D)` and :math:`(K, D, D)`: one
    :math:`(D, N_k) \times (N_k, D)` product per component, over the samples whose
    responsibility is not negligible (:func:`~contmix.em.sums.kept`; with nearly hard
    responsibilities in high dimension, about :math:`N` samples in all instead of
    :math:`N K`).

    Example:
        >>> x = torch.randn(100, 3, dtype=torch.float64)
        >>> n, first, second = scatter(x, torch.ones(100, 1, dtype=torch.float64), x[:1])
        >>> torch.allclose(second[0], (x - x[0]).T @ (x - x[0]))
        True
    """

    K, D = centers.shape
    kept = _kept(resp)
    counts = x.new_zeros(K)
    first = x.new_zeros(K, D)
    second = x.new_zeros(K, D, D)

    for k in range(K):
        r, samples = resp[:, k], x
        if kept is not None and not bool(kept[:, k].all()):
            index = kept[:, k].nonzero().squeeze(-1)
            r, samples = r[index], x[index]
        diff = samples - centers[k]
        counts[k] = r.sum()
        first[k] = r @ diff
        second[k] = diff.mT @ (r[:, None] * diff)

    return counts, first, second


def maximization(
    sums: tuple[Tensor, Tensor, Tensor], centers: Tensor, shift: Tensor, tied: bool, reg: float
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns the parameters that maximize the expected log-likelihood given the sums of
    :func:`scatter` around the centres :math:`c_k` (around ``shift``):

    .. math:: \mu_k = s + \frac{\sum_n r_{nk} (x_n - s)}{N_k + \epsilon}, \quad
        \Sigma_k = \frac{\sum_n r_{nk} (x_n - c_k)(x_n - c_k)^T}{N_k + \epsilon}
        - d_k d_k^T + \lambda I, \quad d_k = \frac{\sum_n r_{nk} (x_n - c_k)}{N_k + \epsilon}

    (the :math:`\epsilon` of the sufficient-statistics form: a component without
    responsibility gets the data mean and :math:`\lambda I`). The cancellation in
    :math:`\Sigma_k` is that of :math:`\|d_k\|^2`, the square of the step of the mean.
    """

    counts, first, second = sums
    D = centers.shape[-1]
    nk = counts + 10 * torch.finfo(counts.dtype).eps
    step = first / nk[:, None]
    covariances = second / nk[:, None, None] - step[:, :, None] * step[:, None, :]
    means = (first + counts[:, None] * centers) / nk[:, None] + shift

    if tied:
        weights = (nk / nk.sum())[:, None, None]
        covariances = (weights * covariances).sum(dim=0, keepdim=True)

    covariances = covariances + reg * torch.eye(D, dtype=nk.dtype, device=nk.device)

    return (nk / nk.sum()).log(), means, covariances


def expectation(
    each: Callable[[], Iterable[Tensor]], logits: Tensor, means: Tensor, tril: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""One EM iteration's pass through the blocks (centred means): the sums of
    :func:`scatter` around the means and the log-likelihood, over all shards."""

    def block(x: Tensor) -> tuple[Tensor, ...]:
        joint = log_joint(x, logits, means, tril)
        top = joint.amax(dim=-1, keepdim=True)
        weights = (joint - top).exp()  # one exp: the softmax and its log-sum-exp at once
        total = weights.sum(dim=-1, keepdim=True)
        return *scatter(x, weights / total, means), (top + total.log()).sum()

    return accumulate(block, each())


def log_likelihood(
    each: Callable[[], Iterable[Tensor]], logits: Tensor, means: Tensor, tril: Tensor
) -> Tensor:
    r"""The sum of :math:`\log p(x_n)` over the blocks (centred means) and the shards."""

    def block(x: Tensor) -> tuple[Tensor]:
        return (torch.logsumexp(log_joint(x, logits, means, tril), dim=-1).sum(),)

    return accumulate(block, each())[0]


def sources(x: Data) -> tuple[Tensor, int, Callable[[], Iterable[Tensor]]]:
    r"""The data mean (float64, summed block by block), the number of samples of all
    shards and a function that yields the blocks of the covariance form around that mean."""

    if isinstance(x, Tensor):
        shift = mean(x.split(rows(x.shape[-1])))
    else:
        shift = mean(x)

    return shift, samples(x), blocks(x, shift)


def m_step(
    x: Data, resp: Tensor | Callable[[Tensor], Tensor], tied: bool, reg: float
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The M-step of :func:`~contmix.em.gmm_m_step` in the covariance form, in two
    passes: the data mean and the component means, then the sums around the component
    means (:func:`scatter`). Of an iterable, ``resp`` is called twice per batch."""

    if isinstance(x, Tensor):
        if callable(resp):
            resp = resp(x)
        step = rows(x.shape[-1])
        pairs = list(zip(x.split(step), resp.split(step), strict=True))
    else:
        if not callable(resp):
            raise TypeError(
                "For an iterable of batches, resp must be a function of a batch that returns "
                f"its responsibilities, with shape (B, K), got {type(resp).__name__}."
            )
        pairs = ((batch, resp(batch)) for batch in x)

    def moments(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        b, r = pair[0].double(), pair[1].double()
        return b.sum(dim=0), b.new_tensor(len(b)), r.sum(dim=0), r.T @ b

    total, n, counts, sums = accumulate(moments, pairs)
    shift = total / n
    nk = counts + 10 * torch.finfo(counts.dtype).eps
    centers = (sums - counts[:, None] * shift) / nk[:, None]

    if not isinstance(x, Tensor):
        pairs = ((batch, resp(batch)) for batch in x)

    def block(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        b, r = pair[0].double() - shift, pair[1].double()
        step = rows(b.shape[-1])
        parts = zip(b.split(step), r.split(step), strict=True)
        return tuple(map(sum, zip(*(scatter(*c, centers) for c in parts), strict=True)))

    sums = accumulate(block, pairs)
    params = maximization(sums, centers, shift, tied, reg)

    return tuple(p.to(dtype_of(x)) for p in params)


def fit(
    x: Data,
    params: tuple[Tensor, Tensor, Tensor],
    tied: bool,
    tol: float,
    max_iter: int,
    reg: float,
    progress: bool | None,
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor, bool]:
    r"""The iterations of :func:`~contmix.em.fit_gmm` in the covariance form, from float64
    parameters: one pass through the blocks each (:func:`expectation`, around the means of
    the E-step). Returns the float64 parameters, the history and whether it converged."""

    shift, N, each = sources(x)

    def step() -> float:
        nonlocal params
        logits, means, covariances = params
        centred = means - shift
        *sums, log_lik = expectation(each, logits, centred, factor(covariances))
        params = maximization(sums, centred, shift, tied, reg)
        return float(log_lik / N)  # the one host transfer of the iteration

    history, converged = iterate(step, tol, max_iter, "EM", progress)

    return params, torch.tensor(history, dtype=torch.float64, device=shift.device), converged
