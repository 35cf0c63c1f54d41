r"""The three Gaussian component families: :class:`DiagNormal`, :class:`FullNormal`
and :class:`LowRankNormal` (see :mod:`contmix.distributions`)."""

import math

import torch
import zuko.distributions

from torch import Size, Tensor
from torch.distributions import (
    LowRankMultivariateNormal,
    MultivariateNormal,
)

from .shapes import (
    Dims,
    _check_event,
    _complement,
    _empty,
    _flatten,
    _index,
    _is_empty,
    _rows,
    _shared,
    _take,
    _unflat,
)
from ..ops import diag_mahalanobis, project, tied_mahalanobis
from ..utils import cholesky

LOG_2PI = math.log(2 * math.pi)


def capacitance_tril(factor: Tensor, diag: Tensor) -> Tensor:
    r"""Returns the lower Cholesky factor :math:`L_C` of the capacitance
    :math:`C = I + A^T D^{-1} A` of a low-rank covariance :math:`D + A A^T`, with shape
    :math:`(*, R, R)`.

    :math:`C` is positive definite with eigenvalues of at least one, but formed in
    float32 with a diagonal :math:`D` at its floor its entries reach :math:`10^{12}`
    and a Cholesky decomposition fails. Instead, :math:`C = M^T M` with
    :math:`M = (D^{-1/2} A; I)`, and the triangular factor of the QR decomposition of
    :math:`M`, which is backward stable, gives :math:`L_C` without forming :math:`C`.

    Example:
        >>> factor, diag = torch.tensor([[[1e4], [0.0]]]), torch.tensor([[1e-6, 1.0]])
        >>> capacitance_tril(factor, diag)  # sqrt(1 + 1e8 / 1e-6)
        tensor([[[9999999.]]])
    """

    R = factor.shape[-1]
    eye = torch.eye(R, dtype=factor.dtype, device=factor.device)
    scaled = factor * diag.rsqrt().unsqueeze(-1)
    stacked = torch.cat((scaled, eye.expand(*scaled.shape[:-2], R, R)), dim=-2)
    upper = torch.linalg.qr(stacked).R
    sign = torch.where(upper.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(upper)

    return (sign.unsqueeze(-1) * upper).mT


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

        rows = _rows(x, self.batch_shape) if _shared(x, self.batch_shape) else None
        if rows is None:
            # as Independent, which cannot reshape an empty batch
            return self.base_dist.log_prob(x).sum(dim=-1)

        batch = self.batch_shape
        loc, scale = self.base_dist.loc, self.base_dist.scale
        loc, scale = _flatten(loc, batch, 1), _flatten(scale, batch, 1)
        maha, _ = diag_mahalanobis(rows, loc, scale.pow(-2))
        log_p = -0.5 * (maha + loc.shape[-1] * LOG_2PI) - scale.log().sum(dim=-1)

        return _unflat(log_p, x, batch)

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

        rows = _rows(x, self.batch_shape) if _shared(x, self.batch_shape) else None
        if rows is None:
            if _is_empty(x, self.batch_shape):
                return _empty(x, self.batch_shape, self.loc)
            return super().log_prob(x)

        batch, tril = self.batch_shape, self._unbroadcasted_scale_tril
        eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device)
        weight = torch.linalg.solve_triangular(tril, eye, upper=False)  # L^-1
        loc = _flatten(self.loc, batch, 1)

        if tril.shape[:-2].numel() > 1:
            weight = _flatten(weight, batch, 2)
            maha = project(rows, loc, weight).square().sum(dim=-1)
        else:  # one factor for all components (tied): whiten x once, not K times
            maha = tied_mahalanobis(rows, loc, weight.reshape(weight.shape[-2:]))

        half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        log_p = -0.5 * (maha + loc.shape[-1] * LOG_2PI) - _flatten(half_log_det, batch, 0)

        return _unflat(log_p, x, batch)

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

    The two terms of the distance can be far larger than their difference: a sample
    that the loadings explain, with diagonals near the floor, has terms of
    :math:`10^8` whose difference is a few nats (Fashion-MNIST's MFA fitted by EM).
    In float32 they would lose the difference entirely (tens to hundreds of nats off,
    as :class:`torch.distributions.LowRankMultivariateNormal` is, where its Cholesky
    decomposition of :math:`C` does not fail), so the density of parameters in a lower
    precision is computed in float64 and returned in their dtype.

    Example:
        >>> d = LowRankNormal(torch.zeros(3, 2), torch.zeros(3, 2, 1), torch.ones(3, 2))
        >>> d.log_prob(torch.zeros(1, 2))
        tensor([-1.8379, -1.8379, -1.8379])
    """

    def __init__(
        self,
        loc: Tensor,
        cov_factor: Tensor,
        cov_diag: Tensor,
        validate_args: bool | None = None,
    ):
        # torch's constructor factors I + A^T D^-1 A by a Cholesky decomposition, which
        # fails in float32 when D is at its floor: that matrix is formed here otherwise
        if loc.dim() < 1:
            raise ValueError("loc must be at least one-dimensional.")
        if cov_factor.dim() < 2 or cov_factor.shape[-2:-1] != loc.shape[-1:]:
            raise ValueError(
                f"cov_factor must have shape (*, {loc.shape[-1]}, R), "
                f"got {tuple(cov_factor.shape)}."
            )
        if cov_diag.shape[-1:] != loc.shape[-1:]:
            raise ValueError(
                f"cov_diag must have shape (*, {loc.shape[-1]}), got {tuple(cov_diag.shape)}."
            )

        try:
            loc_, factor_, diag_ = torch.broadcast_tensors(
                loc.unsqueeze(-1), cov_factor, cov_diag.unsqueeze(-1)
            )
        except RuntimeError as e:
            raise ValueError(
                f"Incompatible batch shapes: loc {tuple(loc.shape)}, cov_factor "
                f"{tuple(cov_factor.shape)}, cov_diag {tuple(cov_diag.shape)}."
            ) from e

        self.loc, self.cov_factor, self.cov_diag = loc_[..., 0], factor_, diag_[..., 0]
        self._unbroadcasted_cov_factor = cov_factor
        self._unbroadcasted_cov_diag = cov_diag
        self._capacitance_tril = capacitance_tril(cov_factor, cov_diag)

        super(LowRankMultivariateNormal, self).__init__(
            self.loc.shape[:-1], loc.shape[-1:], validate_args=validate_args
        )

    def expand(self, batch_shape: Size, _instance=None) -> "LowRankNormal":
        new = self._get_checked_instance(LowRankNormal, _instance)
        shape = Size(batch_shape) + self.event_shape

        new.loc, new.cov_diag = self.loc.expand(shape), self.cov_diag.expand(shape)
        new.cov_factor = self.cov_factor.expand(shape + self.cov_factor.shape[-1:])
        new._unbroadcasted_cov_factor = self._unbroadcasted_cov_factor
        new._unbroadcasted_cov_diag = self._unbroadcasted_cov_diag
        new._capacitance_tril = self._capacitance_tril
        super(LowRankMultivariateNormal, new).__init__(
            Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args

        return new

    def log_prob(self, x: Tensor) -> Tensor:
        _check_event(x, self.event_shape[-1], like=self.loc)

        if self.loc.dtype != torch.float64:  # the Woodbury difference, see the class
            wide = LowRankNormal(
                self.loc.double(), self.cov_factor.double(), self.cov_diag.double()
            )
            return wide.log_prob(x.double()).to(self.loc.dtype)

        rows = _rows(x, self.batch_shape) if _shared(x, self.batch_shape) else None
        if rows is None:
            if _is_empty(x, self.batch_shape):
                return _empty(x, self.batch_shape, self.loc)
            return super().log_prob(x)

        batch = self.batch_shape
        flat = self._flat() if len(batch) > 1 else self
        diag, cap = flat._unbroadcasted_cov_diag, flat._capacitance_tril
        precision = diag.reciprocal()
        weight = flat._whitener(precision)

        loc = _flatten(flat.loc, flat.batch_shape, 1)
        precision = _flatten(precision, flat.batch_shape, 1)
        weight = _flatten(weight, flat.batch_shape, 2)

        q, z = diag_mahalanobis(rows, loc, precision, weight)
        maha = q - z.square().sum(dim=-1)
        log_det = diag.log().sum(dim=-1) + 2 * cap.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        log_p = -0.5 * (maha + _flatten(log_det, flat.batch_shape, 0) + loc.shape[-1] * LOG_2PI)

        return _unflat(log_p, x, batch)

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

        rows = _rows(value, self.batch_shape) if _shared(value, self.batch_shape) else None
        if rows is not None:
            loc = _flatten(seen.loc, self.batch_shape, 1)
            flat = _flatten(weight, self.batch_shape, 2)
            y = _unflat(project(rows, loc, flat), value, self.batch_shape)
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
