r"""Mixtures of factor analyzers."""

__all__ = [
    "MFA",
    "MFAFit",
    "fit_mfa",
]

from math import prod
from typing import Literal, NamedTuple

import torch
import torch.nn as nn

from torch import Size, Tensor
from zuko.lazy import LazyDistribution
from zuko.nn import MLP
from zuko.utils import unpack

from .distributed import all_reduce, is_sharded, mean, samples
from .distributions import GaussianMixture, LowRankNormal
from .gmm import hard_responsibilities, initial_centers
from .utils import check_context, check_samples, check_scale, check_sizes, set_parameters

STRATEGIES = ("random", "kmeans", "kmeans++", "fa", "em")


class MFAFit(NamedTuple):
    r"""The result of :func:`fit_mfa`."""

    logits: Tensor
    loc: Tensor
    factor: Tensor
    diag: Tensor
    history: Tensor
    converged: bool


def _floor(x: Tensor, reg: float) -> Tensor:
    r"""Returns the smallest diagonal allowed, :math:`\lambda` times the variance of
    each feature (the mean variance for constant features), with shape :math:`(D,)`,
    over all shards within :func:`~contmix.distributed.sharded`."""

    if is_sharded():
        var = all_reduce((x - mean(x)).square().sum(dim=0)) / samples(x)
    else:
        var = x.var(dim=0, correction=0)

    scale = var.mean()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))

    return reg * torch.where(var > 0, var, scale)


def _m_step(
    x: Tensor,
    square: Tensor,
    resp: Tensor,
    loc: Tensor,
    factor: Tensor,
    diag: Tensor,
    floor: Tensor,
    N: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""One M-step of EM for MFA on centered samples :math:`x` and their squares.

    The factors have the Gaussian posterior :math:`z \mid x, k \sim \mathcal{N}(\beta_k
    (x - \mu_k), G_k)` with :math:`G_k = (I + A_k^T D_k^{-1} A_k)^{-1}` and
    :math:`\beta_k = G_k A_k^T D_k^{-1}`. With :math:`\tilde{z} = (z, 1)`, the
    loadings and means solve one :math:`(R + 1) \times (R + 1)` system per component,
    and the diagonal needs only the diagonal of the second moments: no :math:`M \times
    M` matrix is formed. Components without samples keep their parameters. Within
    :func:`~contmix.distributed.sharded`, the sums are over all shards and :math:`N` is
    the number of samples of all shards.
    """

    N, R = len(x) if N is None else N, factor.shape[-1]
    eye = torch.eye(R, dtype=x.dtype, device=x.device)

    scaled = factor / diag.unsqueeze(-1)
    posterior = torch.linalg.inv(eye + factor.mT @ scaled)  # G, (K, R, R)
    beta = posterior @ scaled.mT  # (K, R, M)

    z = (x @ beta.flatten(0, 1).mT).unflatten(-1, beta.shape[:2]) - (
        beta @ loc.unsqueeze(-1)
    ).squeeze(-1)
    rz = resp.unsqueeze(-1) * z  # (N, K, R)

    nk = resp.sum(dim=0)
    sz = rz.sum(dim=0)
    szz = torch.einsum("nkr,nks->krs", rz, z) + nk[:, None, None] * posterior
    sxz = (x.mT @ rz.flatten(1)).unflatten(-1, sz.shape).movedim(0, 1)  # (K, M, R)
    sx = resp.mT @ x
    sxx = resp.mT @ square
    nk, sz, szz, sxz, sx, sxx = all_reduce(nk, sz, szz, sxz, sx, sxx)

    empty = nk <= 10 * torch.finfo(x.dtype).eps * N
    moments = torch.cat(
        (
            torch.cat((szz, sz.unsqueeze(-1)), dim=-1),
            torch.cat((sz, nk.unsqueeze(-1)), dim=-1).unsqueeze(-2),
        ),
        dim=-2,
    )
    moments = moments + empty[:, None, None] * torch.eye(R + 1, dtype=x.dtype, device=x.device)
    cross = torch.cat((sxz, sx.unsqueeze(-1)), dim=-1)  # (K, M, R + 1)
    augmented = cross @ torch.linalg.inv(moments)

    new_diag = (sxx - (augmented * cross).sum(dim=-1)) / nk.clamp(min=1e-30).unsqueeze(-1)
    new_diag = torch.maximum(new_diag, floor)

    keep = empty.unsqueeze(-1)
    factor = torch.where(keep.unsqueeze(-1), factor, augmented[..., :R])
    loc = torch.where(keep, loc, augmented[..., R])
    diag = torch.where(keep, diag, new_diag)
    logits = (nk / N).clamp(min=torch.finfo(x.dtype).tiny).log()

    return logits, loc, factor, diag


def _average(values: Tensor, N: int) -> Tensor:
    r"""Returns the mean of per-sample values over the :math:`N` samples of all shards."""

    if is_sharded():
        return all_reduce(values.sum()) / N

    return values.mean()


def fit_mfa(
    x: Tensor,
    logits: Tensor,
    loc: Tensor,
    factor: Tensor,
    diag: Tensor,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg: float = 1e-6,
    resp: Tensor | None = None,
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
    matrix. The diagonal is floored at ``reg`` times the variance of each feature, so
    that degenerate clusters (duplicated samples, constant features) stay finite, and
    components without samples keep their parameters. It stops when the mean
    log-likelihood changes by less than ``tol``, as
    :class:`sklearn.mixture.GaussianMixture` does. EM never lowers the likelihood.

    Within :func:`~contmix.distributed.sharded`, :math:`x` (and ``resp``) is this
    process's shard: the mean, the floor, the sums of the M-step and the log-likelihood
    are over all shards, and every process returns the fit of the whole data.

    References:
        | The EM Algorithm for Mixtures of Factor Analyzers (Ghahramani et al., 1996)
        | http://mlg.eng.cam.ac.uk/zoubin/papers/tr-96-1.pdf

    Arguments:
        x: The samples, with shape :math:`(N, M)`.
        logits: The initial log-weights, with shape :math:`(K,)`.
        loc: The initial means, with shape :math:`(K, M)`.
        factor: The initial loadings, with shape :math:`(K, M, R)`.
        diag: The initial diagonals, with shape :math:`(K, M)`.
        tol: The tolerance on the mean log-likelihood.
        max_iter: The maximum number of iterations.
        reg: The floor of the diagonals, relative to the variance of each feature.
        resp: Fixed responsibilities, with shape :math:`(N, K)`. If given, only the
            factor analyzers are fitted (to the weighted samples of each component).

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

    shift, N = mean(x), samples(x)
    centered = x - shift
    square = centered.square()
    floor = _floor(x, reg)
    loc = loc - shift

    history = []
    converged = False

    for _ in range(max_iter):
        joint = GaussianMixture(LowRankNormal(loc, factor, diag), logits).joint(centered)
        log_p = torch.logsumexp(joint, dim=-1, keepdim=True)

        if resp is None:
            r = (joint - log_p).exp()
            history.append(_average(log_p, N))
        else:
            r = resp
            history.append(_average((resp * joint).sum(dim=-1), N))

        logits, loc, factor, diag = _m_step(centered, square, r, loc, factor, diag, floor, N)

        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break

    return MFAFit(logits, loc + shift, factor, diag, torch.stack(history), converged)


def mfa_shapes(components: int, features: int, rank: int) -> list[Size]:
    r"""The shapes of the parameters: logits, means, loadings and log-diagonals."""

    return [
        Size((components,)),
        Size((components, features)),
        Size((components, features, rank)),
        Size((components, features)),
    ]


class MFA(LazyDistribution):
    r"""Creates a mixture of factor analyzers (MFA).

    .. math:: p(X \mid c) = \sum_{k = 1}^K \pi_k(c) \,
        \mathcal{N}(X \mid \mu_k(c), D_k(c) + A_k(c) A_k(c)^T)

    where :math:`A_k` is a :math:`M \times R` loading matrix of rank :math:`R \ll M`
    and :math:`D_k = \operatorname{diag}(\exp(\phi_k) + \epsilon)`. The components are
    a batch of :class:`~contmix.distributions.LowRankNormal`, evaluated in
    :math:`O(N K M R)`.

    References:
        | The EM Algorithm for Mixtures of Factor Analyzers (Ghahramani et al., 1996)
        | http://mlg.eng.cam.ac.uk/zoubin/papers/tr-96-1.pdf

        | On GANs and GMMs (Richardson et al., 2018)
        | https://arxiv.org/abs/1805.12462

    Arguments:
        features: The number of features :math:`M`.
        context: The number of context features.
        components: The number of components :math:`K`.
        rank: The rank :math:`R` of the loadings.
        epsilon: A numerical stability term added to the diagonal.
        kwargs: Keyword arguments passed to :class:`zuko.nn.MLP`.

    Example:
        >>> mfa = MFA(features=5, components=3, rank=2)
        >>> mfa().log_prob(torch.randn(10, 5)).shape
        torch.Size([10])
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        components: int = 2,
        rank: int = 1,
        epsilon: float = 1e-6,
        **kwargs,
    ) -> None:
        super().__init__()

        check_sizes(features=features, components=components, rank=rank)
        check_sizes(0, context=context)

        self.features = features
        self.context = context
        self.components = components
        self.rank = rank
        self.epsilon = epsilon

        self.shapes = mfa_shapes(components, features, rank)
        self.total = sum(prod(s) for s in self.shapes)

        if context > 0:
            self.hyper = MLP(context, self.total, **kwargs)
        else:
            self.phi = nn.ParameterList(
                [
                    nn.Parameter(torch.zeros(components)),
                    nn.Parameter(torch.randn(components, features)),
                    nn.Parameter(torch.randn(components, features, rank) / rank**0.5),
                    nn.Parameter(torch.zeros(components, features)),
                ]
            )

    def forward(self, c: Tensor | None = None) -> GaussianMixture:
        check_context(c, self.context, next(self.parameters()))

        if c is None:
            logits, loc, factor, log_diag = self.phi
        else:
            logits, loc, factor, log_diag = unpack(self.hyper(c), self.shapes)

        base = LowRankNormal(loc, factor, log_diag.exp() + self.epsilon)

        return GaussianMixture(base, logits)

    def _layout(self, logits: Tensor, loc: Tensor, factor: Tensor, diag: Tensor) -> list[Tensor]:
        r"""Turns natural parameters into the layout of :attr:`shapes`."""

        tiny = torch.finfo(diag.dtype).tiny
        log_diag = (diag - self.epsilon).clamp(min=tiny).log()

        return [logits, loc, factor, log_diag]

    @torch.no_grad()
    def initialize(
        self,
        x: Tensor,
        strategy: Literal["random", "kmeans", "kmeans++", "fa", "em"] = "fa",
        tol: float = 1e-3,
        max_iter: int = 100,
        reg: float = 1e-6,
    ) -> None:
        r"""Initializes the mixture from data.

        ``"random"``, ``"kmeans"`` and ``"kmeans++"`` pick centres (random samples, the
        k-means solution or k-means++ seeds) and assign each sample to its nearest
        centre. Each component gets the weight, mean and variances of its cluster as
        :math:`\pi_k`, :math:`\mu_k` and :math:`D_k`, and small random loadings
        :math:`A_k` (zero loadings would be a saddle point of the likelihood).
        ``"fa"`` then fits a factor analyzer to each k-means cluster, all at once, by
        :func:`fit_mfa` with the assignments held fixed, as Richardson et al. (2018) do
        before gradient training. ``"em"`` runs EM for the whole mixture from there
        until the mean log-likelihood changes by less than ``tol``. For a conditional
        model, the hypernetwork starts out producing the fitted mixture whatever the
        context.

        Nothing changes if an error is raised.

        Arguments:
            x: The samples, with shape :math:`(N, M)` and :math:`N > K`.
            strategy: ``"random"``, ``"kmeans"``, ``"kmeans++"``, ``"fa"`` or ``"em"``.
            tol: The tolerance of EM on the mean log-likelihood.
            max_iter: The maximum number of EM iterations.
            reg: The floor of the diagonals, relative to the variance of each feature.

        Example:
            >>> mfa = MFA(features=4, components=2, rank=1)
            >>> x = torch.cat((torch.randn(100, 4) - 3, torch.randn(100, 4) + 3))
            >>> mfa.initialize(x, strategy="em")
            >>> mfa().logits.exp().round(decimals=1)
            tensor([0.5000, 0.5000], grad_fn=<RoundBackward1>)
        """

        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy '{strategy}': choose one of {STRATEGIES}.")

        reference = next(self.parameters())
        check_samples(x, self.features, self.components + 1, reference)
        check_scale(x, self.epsilon, "epsilon")

        params = self._fit(x, strategy, tol, max_iter, reg)
        params = self._layout(*params)

        set_parameters(self, params)

    def _fit(
        self, x: Tensor, strategy: str, tol: float, max_iter: int, reg: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Returns the natural parameters fitted by ``strategy``."""

        K, R = self.components, self.rank
        centers = initial_centers(x, K, "kmeans" if strategy in ("fa", "em") else strategy)
        resp = hard_responsibilities(x, centers)

        shift, N = mean(x), samples(x)
        nk, sx, sxx, sq = all_reduce(
            resp.sum(dim=0),
            resp.mT @ x,
            resp.mT @ (x - shift).square(),
            (x - shift).square().sum(dim=0),
        )
        filled = (nk > 0).unsqueeze(-1)
        loc = torch.where(filled, sx / nk.clamp(min=1).unsqueeze(-1), centers)
        var = sxx / nk.clamp(min=1).unsqueeze(-1) - (loc - shift).square()
        var = torch.where(filled, var, sq / N)
        diag = torch.maximum(var, _floor(x, reg))
        factor = 0.1 * diag.sqrt().unsqueeze(-1) * x.new_empty(K, x.shape[-1], R).normal_()
        factor = factor / R**0.5
        logits = (nk / N).clamp(min=torch.finfo(x.dtype).tiny).log()

        if strategy in ("fa", "em"):
            logits, loc, factor, diag, *_ = fit_mfa(
                x, logits, loc, factor, diag, tol, max_iter, reg, resp=resp
            )
        if strategy == "em":
            logits, loc, factor, diag, *_ = fit_mfa(
                x, logits, loc, factor, diag, tol, max_iter, reg
            )

        return logits, loc, factor, diag
