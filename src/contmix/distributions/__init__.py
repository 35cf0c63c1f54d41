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
when the input is shared across components (the shape a mixture passes), each sample
expanded around its nearest mean so that float32 densities stay as accurate as torch's
own (:mod:`contmix.ops`), marginalizes
over dimensions and conditions on observed dimensions in closed form. The mixture
inherits all three operations, so mixtures nest.
"""

__all__ = [
    "DiagNormal",
    "FullNormal",
    "GaussianMixture",
    "LowRankNormal",
    "capacitance_tril",
]

import math

from collections.abc import Sequence

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

from ..ops import diag_mahalanobis, logsumexp, project, tied_mahalanobis
from ..utils import cholesky

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


def _check_batch(x: Tensor, batch_shape: Size, name: str = "x") -> None:
    r"""Raises a :class:`ValueError` unless the batch shape of :math:`x` broadcasts with
    the batch shape of a mixture (for a conditional model, the shape of its context
    :math:`c` but the last dimension)."""

    try:
        torch.broadcast_shapes(x.shape[:-1], batch_shape)
    except RuntimeError:
        dims = ", ".join(map(str, batch_shape))
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, whose batch shape {tuple(x.shape[:-1])} does "
            f"not broadcast with the distribution's {tuple(batch_shape)}, that of the context "
            f"c it was built from (c with shape ({dims}, C)): give one row of {name} per "
            f"context, with shape ({dims}, {x.shape[-1]}), or build it with another c."
        ) from None


def _is_empty(x: Tensor, batch_shape: Size) -> bool:
    r"""Whether :math:`x` and the batch broadcast to no sample at all (torch's
    multivariate normals divide by the batch size then)."""

    return torch.broadcast_shapes(x.shape[:-1], batch_shape).numel() == 0


def _empty(x: Tensor, batch_shape: Size, like: Tensor) -> Tensor:
    r"""The empty densities, part of the graph of ``like``, so that the loss of an empty
    batch backpropagates (to zero gradients)."""

    shape = torch.broadcast_shapes(x.shape[:-1], batch_shape)
    return x.new_zeros(shape) + 0 * like.sum()


def _shared(x: Tensor, batch_shape: Size) -> bool:
    r"""Whether :math:`x` is shared by all components (a 1 in the component dimension)."""

    return len(batch_shape) > 0 and x.dim() >= 2 and x.shape[-2] == 1


def _rows(x: Tensor, batch_shape: Size) -> Tensor | None:
    r"""For an input :math:`x` with shape :math:`(*, 1, D)` shared by all components,
    returns it as rows with shape :math:`(S, D)` when it does not vary along the batch
    dimensions of the mixture (samples against one mixture, or against a batch of
    mixtures as in a mixture of mixtures), so that all components of all mixtures are
    one flat batch; returns none when each sample has mixtures of its own (a
    conditional model), whose differences are then formed directly."""

    lead, inner = x.shape[:-2], batch_shape[:-1]
    if any(s != 1 for s in lead[max(len(lead) - len(inner), 0) :]):
        return None

    return x.reshape(-1, x.shape[-1])


def _unflat(values: Tensor, x: Tensor, batch_shape: Size) -> Tensor:
    r"""Reshapes values with shape :math:`(S, \prod B, *)` computed on :func:`_rows` to
    the broadcast shape of :math:`x` and the mixture's batch :math:`B`."""

    lead, inner = x.shape[:-2], batch_shape[:-1]
    samples = lead[: max(len(lead) - len(inner), 0)]

    return values.reshape(*samples, *batch_shape, *values.shape[2:])


def _flatten(p: Tensor, batch_shape: Size, event_dims: int) -> Tensor:
    r"""The parameter ``p``, expanded to the batch shape, as one flat batch."""

    return p.expand(*batch_shape, *p.shape[p.dim() - event_dims :]).reshape(
        -1, *p.shape[p.dim() - event_dims :]
    )


def _take(p: Tensor, index: Tensor, event_dims: int) -> Tensor:
    r"""Selects component ``index`` of a parameter with shape :math:`(*, K, *E)`."""

    dim = -1 - event_dims
    index = index.reshape(index.shape + (1,) * (event_dims + 1))
    p = p.reshape((1,) * max(index.dim() - p.dim(), 0) + p.shape)

    return torch.take_along_dim(p, index, dim=dim).squeeze(dim)


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
        _check_batch(x, self.batch_shape)

        return self.base.log_prob(x.unsqueeze(-2)) + self.logits

    def log_prob(self, x: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(x)

        if isinstance(self.base, GaussianMixture):  # of mixtures: one log-sum-exp over both
            _check_event(x, self.features, like=self.logits)
            _check_batch(x, self.batch_shape)
            inner = self.base
            joint = inner.base.log_prob(x[..., None, None, :]) + inner.logits
            joint = joint + self.logits.unsqueeze(-1)
            return logsumexp(joint.flatten(-2))

        return logsumexp(self.joint(x))

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
        _check_batch(value, self.batch_shape, "value")

        value = value.unsqueeze(-2)
        logits = self.logits + self.base.marginal(dims).log_prob(value)

        return GaussianMixture(self.base.condition(dims, value), logits)
