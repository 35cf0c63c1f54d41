r"""The Gaussian mixture family that every contmix mixture returns.

A :class:`GaussianMixture` is a :class:`torch.distributions.MixtureSameFamily` whose
components are one of three Gaussian families, each a subclass of the torch (or zuko)
distribution it extends:

* :class:`DiagNormal`: diagonal covariance (a :class:`zuko.distributions.DiagNormal`);
* :class:`FullNormal`: full covariance (a :class:`torch.distributions.MultivariateNormal`);
* :class:`LowRankNormal`: covariance :math:`D + A A^T` (a
  :class:`torch.distributions.LowRankMultivariateNormal`);

or a batch of :class:`GaussianMixture` itself, which gives a mixture of mixtures.

Every component family evaluates all :math:`K` components at once as matrix products
when the input is shared across components (the shape a mixture passes), marginalizes
over dimensions and conditions on observed dimensions in closed form. The mixture
inherits all three operations, so mixtures nest.
"""

__all__ = [
    "DiagNormal",
    "FullNormal",
    "GaussianMixture",
    "LowRankNormal",
]

import math

from collections.abc import Iterator, Sequence

import torch
import zuko.distributions

from torch import Size, Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
)

from .utils import cholesky

Dims = Sequence[int] | Tensor

LOG_2PI = math.log(2 * math.pi)


def _index(dims: Dims, features: int) -> Tensor:
    r"""Turns a sequence of dimensions or a boolean mask into a long index tensor."""

    if isinstance(dims, Tensor) and dims.dtype == torch.bool:
        if dims.shape != (features,):
            raise ValueError(
                f"A boolean mask of dimensions must have shape ({features},), "
                f"got {tuple(dims.shape)}."
            )
        return dims.nonzero().squeeze(-1)

    index = torch.as_tensor(dims).flatten()

    if index.numel() == 0:
        raise ValueError("At least one dimension must be given.")
    if index.is_floating_point() or index.is_complex():
        raise TypeError(f"Dimensions must be integers or a boolean mask, got {index.dtype}.")

    index = index.long()

    if index.numel() > 0 and (index.min() < -features or index.max() >= features):
        raise ValueError(
            f"Dimensions must lie in [{-features}, {features}), got {index.tolist()}."
        )

    index = index % features

    if index.unique().numel() != index.numel():
        raise ValueError(f"Dimensions must not repeat, got {index.tolist()}.")

    return index


def _complement(index: Tensor, features: int) -> Tensor:
    mask = torch.ones(features, dtype=torch.bool, device=index.device)
    mask[index] = False
    return mask.nonzero().squeeze(-1)


def _check_event(x: Tensor, features: int, name: str = "x", like: Tensor | None = None) -> None:
    r"""Checks the last dimension of :math:`x` and, given ``like`` (a parameter), that
    :math:`x` is on its device and does not promote its dtype (integers and lower
    precisions are promoted, a higher precision is refused)."""

    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < 1 or x.shape[-1] != features:
        raise ValueError(
            f"{name} must have shape (*, {features}), got {tuple(x.shape)}: "
            f"its last dimension should hold the {features} features."
        )
    if like is None:
        return
    if x.device != like.device:
        raise ValueError(
            f"{name} is on {x.device} but the distribution is on {like.device}: "
            f"move one of them, e.g. {name}.to('{like.device}')."
        )
    if torch.promote_types(x.dtype, like.dtype) != like.dtype:
        raise TypeError(
            f"{name} is {x.dtype} but the distribution is {like.dtype}: "
            f"use {name}.to({like.dtype}) or convert the model."
        )


def _shared(x: Tensor, batch_shape: Size) -> bool:
    r"""Whether :math:`x` is shared by all components (a 1 in the component dimension)."""

    return len(batch_shape) > 0 and x.dim() >= 2 and x.shape[-2] == 1


def _center(loc: Tensor) -> Tensor:
    r"""A reference point subtracted from inputs and means to avoid cancellation: the
    mean of the finite means, so that a NaN mean (a NaN observed value of
    :meth:`GaussianMixture.condition`) stays in its row."""

    loc = loc.detach().reshape(-1, loc.shape[-1])

    return torch.where(torch.isfinite(loc), loc, 0).mean(dim=0)


def _shared_matmul(x: Tensor, w: Tensor) -> Tensor:
    r"""Returns :math:`x W`, with shape :math:`(*, P)`, for inputs :math:`x` with shape
    :math:`(*, 1, D)` and matrices :math:`W` with shape :math:`(*, D, P)`.

    When :math:`x` does not vary along the batch dimensions of :math:`W` (samples
    against a batch of mixtures, as in a mixture of mixtures), its leading dimensions
    become the rows of one matrix product per matrix instead of one tiny product per
    sample and matrix.
    """

    batch = w.shape[:-2]
    lead = x.shape[:-2]
    inner = lead[max(len(lead) - len(batch), 0) :]

    if len(batch) == 0 or any(s != 1 for s in inner):
        return (x @ w).squeeze(-2)

    samples = lead[: len(lead) - len(inner)]
    y = x.reshape(-1, x.shape[-1]) @ w

    return y.movedim(-2, 0).reshape(*samples, *batch, w.shape[-1])


def _diag_mahalanobis(x: Tensor, loc: Tensor, precision: Tensor) -> Tensor:
    r"""Returns :math:`\sum_i (x_i - \mu_{ki})^2 \lambda_{ki}` for every component :math:`k`.

    Arguments:
        x: Centered inputs, with shape :math:`(*, 1, D)`.
        loc: Centered means, with shape :math:`(*, K, D)`.
        precision: Diagonal precisions :math:`\lambda`, with shape :math:`(*, K, D)`.
    """

    quadratic = _shared_matmul(x * x, precision.mT) - 2 * _shared_matmul(x, (loc * precision).mT)

    return quadratic + (loc * loc * precision).sum(dim=-1)


def _project(x: Tensor, loc: Tensor, weight: Tensor) -> Tensor:
    r"""Returns :math:`(x - \mu_k)^T W_k` for every component :math:`k` with one matrix
    product of :math:`x` against all :math:`W_k` side by side.

    Arguments:
        x: Centered inputs, with shape :math:`(*, 1, D)`.
        loc: Centered means, with shape :math:`(*, K, D)`.
        weight: Projections :math:`W_k`, with shape :math:`(*, K, D, R)`.

    Returns:
        The projections, with shape :math:`(*, K, R)`.
    """

    K, R = loc.shape[-2], weight.shape[-1]
    weight = weight.expand(*loc.shape[:-1], *weight.shape[-2:])

    y = _shared_matmul(x, weight.movedim(-3, -2).flatten(-2)).unflatten(-1, (K, R))

    return y - (loc.unsqueeze(-2) @ weight).squeeze(-2)


def _take(p: Tensor, index: Tensor, event_dims: int) -> Tensor:
    r"""Selects component ``index`` of a parameter with shape :math:`(*, K, *E)`."""

    dim = -1 - event_dims
    index = index.reshape(index.shape + (1,) * (event_dims + 1))
    p = p.reshape((1,) * max(index.dim() - p.dim(), 0) + p.shape)

    return torch.take_along_dim(p, index, dim=dim).squeeze(dim)


class DiagNormal(zuko.distributions.DiagNormal):
    r"""Creates a multivariate normal distribution with diagonal covariance.

    .. math:: p(x) = \prod_i \mathcal{N}(x_i \mid \mu_i, \sigma_i^2)

    A :class:`zuko.distributions.DiagNormal` that evaluates a batch of :math:`K`
    components on a shared input, with shape :math:`(*, 1, D)`, as matrix products,
    and supports :meth:`marginal` and :meth:`condition`.

    Arguments:
        loc: The means :math:`\mu`, with shape :math:`(*, D)`.
        scale: The standard deviations :math:`\sigma`, with shape :math:`(*, D)`.

    Example:
        >>> d = DiagNormal(torch.zeros(3, 2), torch.ones(3, 2))
        >>> d.log_prob(torch.zeros(1, 2))
        tensor([-1.8379, -1.8379, -1.8379])
    """

    def log_prob(self, x: Tensor) -> Tensor:
        _check_event(x, self.event_shape[-1], like=self.base_dist.loc)

        if not _shared(x, self.batch_shape):
            # as Independent, which cannot reshape an empty batch
            return self.base_dist.log_prob(x).sum(dim=-1)

        loc, scale = self.base_dist.loc, self.base_dist.scale
        center = _center(loc)

        maha = _diag_mahalanobis(x - center, loc - center, scale.pow(-2))

        return -0.5 * (maha + loc.shape[-1] * LOG_2PI) - scale.log().sum(dim=-1)

    def marginal(self, dims: Dims) -> "DiagNormal":
        r"""Returns the marginal distribution of the dimensions ``dims``."""

        index = _index(dims, self.event_shape[-1]).to(self.mean.device)

        return DiagNormal(self.base_dist.loc[..., index], self.base_dist.scale[..., index])

    def condition(self, dims: Dims, value: Tensor) -> "DiagNormal":
        r"""Returns the distribution of the other dimensions given ``value`` at ``dims``.

        The dimensions are independent, so this is the marginal of the other
        dimensions, broadcast to the batch shape of ``value``.
        """

        features = self.event_shape[-1]
        index = _index(dims, features).to(self.mean.device)
        _check_event(value, len(index), "value")

        other = self.marginal(_complement(index, features))
        batch = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)

        return other.expand(batch)

    def take(self, index: Tensor) -> "DiagNormal":
        r"""Selects the components ``index`` along the last batch dimension."""

        return DiagNormal(
            _take(self.base_dist.loc, index, 1), _take(self.base_dist.scale, index, 1)
        )


class FullNormal(MultivariateNormal):
    r"""Creates a multivariate normal distribution with full covariance.

    .. math:: p(x) = \mathcal{N}(x \mid \mu, L L^T)

    A :class:`torch.distributions.MultivariateNormal` that evaluates a batch of
    :math:`K` components on a shared input, with shape :math:`(*, 1, D)`, as one matrix
    product with the stacked inverse Cholesky factors
    :math:`(x - \mu_k)^T L_k^{-T}`, and supports :meth:`marginal` and
    :meth:`condition`. Arguments are those of
    :class:`torch.distributions.MultivariateNormal`.

    Example:
        >>> d = FullNormal(torch.zeros(3, 2), torch.eye(2))
        >>> d.log_prob(torch.zeros(1, 2))
        tensor([-1.8379, -1.8379, -1.8379])
    """

    def log_prob(self, x: Tensor) -> Tensor:
        _check_event(x, self.event_shape[-1], like=self.loc)

        if not _shared(x, self.batch_shape):
            return super().log_prob(x)

        tril = self._unbroadcasted_scale_tril
        eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device)
        weight = torch.linalg.solve_triangular(tril, eye, upper=False).mT

        center = _center(self.loc)
        x, loc = x - center, self.loc - center

        if tril.dim() > 2 and tril.shape[-3] > 1:
            maha = _project(x, loc, weight).square().sum(dim=-1)
        else:  # one factor for all components (tied): whiten x once, not K times
            weight = weight.squeeze(-3) if tril.dim() > 2 else weight
            y, m = x @ weight, loc @ weight
            maha = (y.square().sum(dim=-1, keepdim=True) - 2 * y @ m.mT).squeeze(-2)
            maha = maha + m.square().sum(dim=-1)

        half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)

        return -0.5 * (maha + self.loc.shape[-1] * LOG_2PI) - half_log_det

    def _sub_tril(self, index: Tensor) -> Tensor:
        tril = self._unbroadcasted_scale_tril[..., index, :]
        return cholesky(tril @ tril.mT)

    def marginal(self, dims: Dims) -> "FullNormal":
        r"""Returns the marginal distribution of the dimensions ``dims``."""

        index = _index(dims, self.event_shape[-1]).to(self.loc.device)

        return FullNormal(self.loc[..., index], scale_tril=self._sub_tril(index))

    def condition(self, dims: Dims, value: Tensor) -> "FullNormal":
        r"""Returns the distribution of the other dimensions given ``value`` at ``dims``.

        With the observed dimensions :math:`o` first, the Cholesky factor of the
        permuted covariance gives the conditional in closed form:

        .. math:: \mu_{u|o} = \mu_u + L_{uo} L_{oo}^{-1} (x_o - \mu_o), \quad
            \Sigma_{u|o} = L_{uu} L_{uu}^T .
        """

        features = self.event_shape[-1]
        obs = _index(dims, features).to(self.loc.device)
        _check_event(value, len(obs), "value")

        other = _complement(obs, features)
        tril = self._sub_tril(torch.cat((obs, other)))
        O = len(obs)  # noqa: E741

        diff = (value - self.loc[..., obs]).unsqueeze(-1)
        z = torch.linalg.solve_triangular(tril[..., :O, :O], diff, upper=False)
        loc = self.loc[..., other] + (tril[..., O:, :O] @ z).squeeze(-1)

        return FullNormal(loc, scale_tril=tril[..., O:, O:])

    def take(self, index: Tensor) -> "FullNormal":
        r"""Selects the components ``index`` along the last batch dimension."""

        return FullNormal(_take(self.loc, index, 1), scale_tril=_take(self.scale_tril, index, 2))


class _Quadratic(torch.autograd.Function):
    r"""Returns :math:`q_{nk} = \sum_i \lambda_{ki} (x_{ni} - \mu_{ki})^2` and
    :math:`z_{nkr} = \sum_i W_{kri} (x_{ni} - \mu_{ki})` for inputs :math:`x` with shape
    :math:`(N, D)` shared by :math:`K` components, as matrix products over chunks of
    rows. Only the inputs are saved for the backward pass, which recomputes the
    chunks: the working memory is :math:`O(N K R)`, never :math:`O(N D)` (except
    :math:`\nabla_x` itself)."""

    @staticmethod
    def forward(ctx, x: Tensor, loc: Tensor, precision: Tensor, weight: Tensor):
        ctx.save_for_backward(x, loc, precision, weight)

        center, K, R = loc.mean(dim=0), *weight.shape[:2]
        m = loc - center
        scaled = m * precision
        offset = (weight @ m.unsqueeze(-1)).squeeze(-1).flatten()
        constant = (m * scaled).sum(dim=-1)
        # one product gives [W y - W m, -2 (lambda m) . y + lambda m . m]
        both = torch.cat((weight.flatten(0, 1), -2 * scaled)).mT
        bias = torch.cat((offset, -constant))

        q, z = [], []
        for y in _Quadratic.centered(x, center, K * R + K):
            out = torch.addmm(bias, y, both, beta=-1)
            z.append(out[:, : K * R].unflatten(-1, (K, R)))
            q.append(torch.addmm(out[:, K * R :], y.square_(), precision.mT))

        return torch.cat(q), torch.cat(z)

    @staticmethod
    def backward(ctx, grad_q: Tensor, grad_z: Tensor):
        x, loc, precision, weight = ctx.saved_tensors

        center, K, R = loc.mean(dim=0), *weight.shape[:2]
        m = loc - center
        flat = weight.flatten(0, 1)
        step = _Quadratic.step(x, K * R + K)

        moments, square, grad_x = 0, 0, []
        rows = _Quadratic.centered(x, center, K * R + K)
        for y, gq, gz in zip(rows, grad_q.split(step), grad_z.split(step), strict=True):
            moments = moments + torch.cat((gz.flatten(1), gq), dim=1).mT @ y  # one product
            if ctx.needs_input_grad[0]:
                linear = gz.flatten(1) @ flat - 2 * gq @ (m * precision)
                grad_x.append(linear + 2 * y * (gq @ precision))
            # in place, unless this backward is itself differentiated
            square = square + gq.mT @ (y.square() if torch.is_grad_enabled() else y.square_())

        sum_q, sum_z = grad_q.sum(dim=0).unsqueeze(-1), grad_z.sum(dim=0)
        moment_z, moment_q = moments[: K * R].unflatten(0, (K, R)), moments[K * R :]

        grad_precision = square - 2 * m * moment_q + m * m * sum_q
        grad_loc = (sum_z.unsqueeze(-2) @ weight).squeeze(-2)
        grad_loc = -2 * precision * (moment_q - m * sum_q) - grad_loc
        grad_weight = moment_z - sum_z.unsqueeze(-1) * m.unsqueeze(-2)

        return torch.cat(grad_x) if grad_x else None, grad_loc, grad_precision, grad_weight

    @staticmethod
    def centered(x: Tensor, center: Tensor, outputs: int) -> Iterator[Tensor]:
        r"""Yields the chunks of rows of :math:`x - c`, written into one buffer reused
        from chunk to chunk (fresh tensors when differentiated)."""

        step = _Quadratic.step(x, outputs)

        if torch.is_grad_enabled():
            yield from (rows - center for rows in x.split(step))
            return

        buffer = center.new_empty(min(step, len(x)), x.shape[-1])
        for rows in x.split(step):
            yield torch.sub(rows, center, out=buffer[: len(rows)])

    @staticmethod
    def step(x: Tensor, outputs: int) -> int:
        r"""Rows per chunk, such that a chunk is no larger than the outputs."""

        return max(32, len(x) * outputs // max(x.shape[-1], 1))


class LowRankNormal(LowRankMultivariateNormal):
    r"""Creates a multivariate normal distribution with low-rank plus diagonal covariance.

    .. math:: p(x) = \mathcal{N}(x \mid \mu, D + A A^T)

    A :class:`torch.distributions.LowRankMultivariateNormal` that evaluates a batch of
    :math:`K` components on a shared input, with shape :math:`(*, 1, D)`, by the
    Woodbury identity and the matrix determinant lemma written as matrix products.
    With :math:`C = I + A^T D^{-1} A = L_C L_C^T`,

    .. math:: (x - \mu)^T \Sigma^{-1} (x - \mu)
        = \| D^{-1/2} (x - \mu) \|^2 - \| L_C^{-1} A^T D^{-1} (x - \mu) \|^2 ,
        \quad \log |\Sigma| = \log |D| + 2 \log |L_C| ,

    which costs :math:`O(N K D R)` and never forms a :math:`D \times D` matrix. It
    supports :meth:`marginal` and :meth:`condition`, both low-rank again. Arguments are
    those of :class:`torch.distributions.LowRankMultivariateNormal`.

    Example:
        >>> d = LowRankNormal(torch.zeros(3, 2), torch.zeros(3, 2, 1), torch.ones(3, 2))
        >>> d.log_prob(torch.zeros(1, 2))
        tensor([-1.8379, -1.8379, -1.8379])
    """

    def log_prob(self, x: Tensor) -> Tensor:
        _check_event(x, self.event_shape[-1], like=self.loc)

        if not _shared(x, self.batch_shape):
            return super().log_prob(x)

        batch = self.batch_shape
        if len(batch) > 1 and all(s == 1 for s in x.shape[-1 - len(batch) : -1]):
            # samples against a batch of mixtures: one flat batch of components
            log_p = self._flat().log_prob(x.reshape(*x.shape[: -1 - len(batch)], 1, x.shape[-1]))
            return log_p.unflatten(-1, batch)

        diag, cap = self._unbroadcasted_cov_diag, self._capacitance_tril
        precision = diag.reciprocal()
        weight = self._whitener(precision)

        if self.loc.dim() == 2 and weight.shape[:-2] == diag.shape[:-1] == self.batch_shape:
            q, z = _Quadratic.apply(x.reshape(-1, x.shape[-1]), self.loc, precision, weight)
            maha = (q - z.square().sum(dim=-1)).reshape(*x.shape[:-2], len(self.loc))
        else:
            center = _center(self.loc)
            x, loc = x - center, self.loc - center
            maha = _diag_mahalanobis(x, loc, precision)
            maha = maha - _project(x, loc, weight.mT).square().sum(dim=-1)

        log_det = diag.log().sum(dim=-1) + 2 * cap.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)

        return -0.5 * (maha + log_det + self.loc.shape[-1] * LOG_2PI)

    def _capacitance_inverse(self) -> Tensor:
        r"""Returns :math:`L_C^{-1}`, with shape :math:`(*, K, R, R)`: a triangular solve
        with :math:`D` right-hand sides is much slower than this small inverse and a
        matrix product."""

        cap = self._capacitance_tril
        eye = torch.eye(cap.shape[-1], dtype=cap.dtype, device=cap.device)

        return torch.linalg.solve_triangular(cap, eye, upper=False)

    def _flat(self) -> "LowRankNormal":
        r"""The same components as one flat batch, reusing the factorization of the
        capacitance when it has the full batch shape."""

        batch, size = self.batch_shape, self.batch_shape.numel()
        cap = self._capacitance_tril
        if cap.shape[:-2] != batch or self._unbroadcasted_cov_diag.shape[:-1] != batch:
            return LowRankNormal(
                self.loc.flatten(0, -2),
                self.cov_factor.flatten(0, -3),
                self.cov_diag.flatten(0, -2),
            )

        new = self._get_checked_instance(LowRankNormal)
        new.loc = self.loc.reshape(size, -1)
        new.cov_factor = new._unbroadcasted_cov_factor = self.cov_factor.flatten(0, -3)
        new.cov_diag = new._unbroadcasted_cov_diag = self.cov_diag.flatten(0, -2)
        new._capacitance_tril = cap.flatten(0, -3)
        super(LowRankMultivariateNormal, new).__init__(
            Size((size,)), self.event_shape, validate_args=False
        )

        return new

    def _whitener(self, precision: Tensor, inverse: Tensor | None = None) -> Tensor:
        r"""Returns :math:`L_C^{-1} A^T D^{-1}`, with shape :math:`(*, K, R, D)`."""

        if inverse is None:
            inverse = self._capacitance_inverse()

        return inverse @ (self._unbroadcasted_cov_factor * precision.unsqueeze(-1)).mT

    def marginal(self, dims: Dims) -> "LowRankNormal":
        r"""Returns the marginal distribution of the dimensions ``dims``."""

        index = _index(dims, self.event_shape[-1]).to(self.loc.device)

        return LowRankNormal(
            self.loc[..., index],
            self._unbroadcasted_cov_factor[..., index, :],
            self._unbroadcasted_cov_diag[..., index],
        )

    def condition(self, dims: Dims, value: Tensor) -> "LowRankNormal":
        r"""Returns the distribution of the other dimensions given ``value`` at ``dims``.

        With :math:`C = I + A_o^T D_o^{-1} A_o = L L^T`, the conditional is low-rank
        with the same rank:

        .. math:: \mu_{u|o} = \mu_u + A_u C^{-1} A_o^T D_o^{-1} (x_o - \mu_o), \quad
            \Sigma_{u|o} = D_u + (A_u L^{-T}) (A_u L^{-T})^T .
        """

        features = self.event_shape[-1]
        obs = _index(dims, features).to(self.loc.device)
        _check_event(value, len(obs), "value")

        other = _complement(obs, features)
        seen, rest = self.marginal(obs), self.marginal(other)
        inverse = seen._capacitance_inverse()
        weight = seen._whitener(seen._unbroadcasted_cov_diag.reciprocal(), inverse)

        if _shared(value, self.batch_shape):
            center = _center(seen.loc)
            y = _project(value - center, seen.loc - center, weight.mT)
        else:
            y = (weight @ (value - seen.loc).unsqueeze(-1)).squeeze(-1)

        new_factor = rest._unbroadcasted_cov_factor @ inverse.mT
        loc = rest.loc + (new_factor @ y.unsqueeze(-1)).squeeze(-1)

        return LowRankNormal(loc, new_factor, rest._unbroadcasted_cov_diag)

    def take(self, index: Tensor) -> "LowRankNormal":
        r"""Selects the components ``index`` along the last batch dimension."""

        return LowRankNormal(
            _take(self.loc, index, 1),
            _take(self.cov_factor, index, 2),
            _take(self.cov_diag, index, 1),
        )


class GaussianMixture(MixtureSameFamily):
    r"""Creates a mixture of Gaussian distributions.

    .. math:: p(x) = \sum_{k = 1}^K \pi_k \, p_k(x), \quad
        \pi = \operatorname{softmax}(\text{logits})

    A :class:`torch.distributions.MixtureSameFamily` with zuko's surface
    (:attr:`base`, :attr:`logits`) and more: :meth:`posterior`, :meth:`predict`,
    :meth:`marginal` and :meth:`condition`, the latter two exact and returning a
    :class:`GaussianMixture` again. Its components are a batch of :class:`DiagNormal`,
    :class:`FullNormal`, :class:`LowRankNormal` or :class:`GaussianMixture`, the last
    giving a mixture of mixtures (hierarchical mixture).

    Wikipedia:
        https://wikipedia.org/wiki/Mixture_model#Gaussian_mixture_model

    Arguments:
        base: The components, with batch shape :math:`(*, K)`.
        logits: The unnormalized log-weights :math:`\log \pi_k`, with shape :math:`(*, K)`.
        validate_args: Whether to validate arguments, as in torch.

    Example:
        >>> base = FullNormal(torch.tensor([[-2.0], [2.0]]), torch.eye(1).expand(2, 1, 1))
        >>> d = GaussianMixture(base, torch.zeros(2))
        >>> d.log_prob(torch.tensor([[0.0], [2.0]]))
        tensor([-2.9189, -1.6118])
        >>> d.posterior(torch.tensor([[1.0]])).exp()
        tensor([[0.0180, 0.9820]])
    """

    def __init__(self, base: Distribution, logits: Tensor, validate_args: bool | None = None):
        if len(base.event_shape) != 1:
            raise ValueError(
                f"The components must have one event dimension, got {tuple(base.event_shape)}."
            )

        super().__init__(Categorical(logits=logits), base, validate_args=validate_args)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(base={self.base}, logits: {tuple(self.logits.shape)})"

    @property
    def base(self) -> Distribution:
        r"""The components, as in :class:`zuko.distributions.Mixture`."""

        return self.component_distribution

    @property
    def logits(self) -> Tensor:
        r"""The normalized log-weights :math:`\log \pi_k`."""

        return self.mixture_distribution.logits

    @property
    def features(self) -> int:
        return self.event_shape[-1]

    def expand(self, batch_shape: Size, _instance=None) -> "GaussianMixture":
        shape = Size(batch_shape) + (self._num_component,)
        return GaussianMixture(self.base.expand(shape), self.logits.expand(shape))

    def joint(self, x: Tensor) -> Tensor:
        r"""Returns :math:`\log \pi_k + \log p_k(x)` for every component, with shape
        :math:`(*, K)`."""

        _check_event(x, self.features, like=self.logits)

        return self.base.log_prob(x.unsqueeze(-2)) + self.logits

    def log_prob(self, x: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(x)

        if isinstance(self.base, GaussianMixture):  # of mixtures: one log-sum-exp over both
            _check_event(x, self.features, like=self.logits)
            inner = self.base
            joint = inner.base.log_prob(x[..., None, None, :]) + inner.logits
            joint = joint + self.logits.unsqueeze(-1)
            return torch.logsumexp(joint.flatten(-2), dim=-1)

        return torch.logsumexp(self.joint(x), dim=-1)

    def posterior(self, x: Tensor) -> Tensor:
        r"""Returns the log-responsibilities :math:`\log p(k \mid x)`, with shape
        :math:`(*, K)`.

        .. math:: \log p(k \mid x) = \log \pi_k + \log p_k(x) - \log p(x)
        """

        return torch.log_softmax(self.joint(x), dim=-1)

    def predict(self, x: Tensor) -> Tensor:
        r"""Returns the most probable component :math:`\arg\max_k p(k \mid x)`."""

        return self.joint(x).argmax(dim=-1)

    def sample(self, shape: Size = ()) -> Tensor:
        shape = Size(shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"The sample shape must be non-negative, got {tuple(shape)}.")
        if shape.numel() == 0:
            return self.logits.new_empty(self._extended_shape(shape))
        if not hasattr(self.base, "take"):
            return super().sample(shape)

        with torch.no_grad():
            index = self.mixture_distribution.sample(shape)
            return self.base.take(index).sample()

    def marginal(self, dims: Dims) -> "GaussianMixture":
        r"""Returns the marginal mixture of the dimensions ``dims`` (indices or a boolean
        mask): the same weights, each component marginalized.

        Example:
            >>> base = FullNormal(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))
            >>> GaussianMixture(base, torch.zeros(2)).marginal([0, 2]).event_shape
            torch.Size([2])
        """

        return GaussianMixture(self.base.marginal(dims), self.logits)

    def condition(self, dims: Dims, value: Tensor) -> "GaussianMixture":
        r"""Returns the mixture of the other dimensions given ``value`` at ``dims``.

        Each component is conditioned and the weights become the posterior of the
        components given the observed part:

        .. math:: p(x_u \mid x_o) = \sum_k \frac{\pi_k p_k(x_o)}{\sum_j \pi_j p_j(x_o)}
            p_k(x_u \mid x_o)

        Arguments:
            dims: The observed dimensions (indices or a boolean mask).
            value: The observed values, with shape :math:`(*, O)`, in the order of
                ``dims``. Its batch shape is broadcast with the mixture's.

        Example:
            >>> base = FullNormal(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))
            >>> d = GaussianMixture(base, torch.zeros(2))
            >>> d.condition([1], torch.randn(5, 1)).batch_shape
            torch.Size([5])
        """

        _check_event(value, len(_index(dims, self.features)), "value", self.logits)

        value = value.unsqueeze(-2)
        logits = self.logits + self.base.marginal(dims).log_prob(value)

        return GaussianMixture(self.base.condition(dims, value), logits)
