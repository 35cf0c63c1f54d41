r"""Input checks and numerical helpers shared by the models."""

__all__ = [
    "check_context",
    "check_samples",
    "check_scale",
    "check_sizes",
    "cholesky",
]

import torch

from torch import Tensor

from .anchors import known


def check_samples(x: Tensor, features: int, minimum: int = 1, reference: Tensor | None = None):
    r"""Raises a :class:`ValueError` unless :math:`x` is a finite floating point matrix
    with shape :math:`(N, D)`, :math:`N \geq` ``minimum``, on the device of ``reference``.

    Example:
        >>> check_samples(torch.randn(10, 2), features=2, minimum=3)
        >>> check_samples(torch.randn(10, 3), features=2)
        Traceback (most recent call last):
            ...
        ValueError: x must have shape (N, 2), got (10, 3): one row per sample, 2 features.
    """

    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 2 or x.shape[-1] != features:
        raise ValueError(
            f"x must have shape (N, {features}), got {tuple(x.shape)}: "
            f"one row per sample, {features} features."
        )
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"x must be float32 or float64, got {x.dtype}: use x.float() or x.double()."
        )
    if x.shape[0] < minimum:
        raise ValueError(
            f"x has {x.shape[0]} samples but at least {minimum} are needed "
            "(more samples than components): pass more data or use fewer components."
        )
    if reference is not None and x.device != reference.device:
        raise ValueError(
            f"x is on {x.device} but the model is on {reference.device}: "
            f"move one of them, e.g. x.to('{reference.device}')."
        )
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=-1).nonzero().squeeze(-1)
        raise ValueError(
            f"x contains NaN or Inf in {len(bad)} rows (first: {bad[:5].tolist()}): "
            "remove or impute them first."
        )


def check_context(
    c: Tensor | None, context: int, reference: Tensor | None = None, ignore: bool = False
) -> Tensor | None:
    r"""Raises a :class:`ValueError` (or a :class:`TypeError` for a wrong type) unless
    ``c`` matches a model with ``context`` context features, with the floating point
    type and the device of ``reference``, and returns it.

    A model without context (``context=0``) takes ``c=None``. With ``ignore``, it takes
    any ``c`` and ignores it, returning :py:`None`, as zuko's unconditional lazy
    distributions (:class:`zuko.lazy.UnconditionalDistribution`) do: the models'
    :meth:`forward` does so, so that an unconditional model is the base of a
    conditional :class:`zuko.lazy.Flow`, which passes its context to its base.
    Without ``ignore`` (where a context cannot be meant, as for :meth:`extract`), a
    given ``c`` is an error.

    The values of ``c`` must be finite: a NaN or an infinity would make its densities NaN
    and, in a CPMM, whose ODE is solved for the whole batch at once, stop the solver.
    They are checked where reading them costs nothing, on the CPU in eager mode
    (:func:`contmix.anchors.known`). On other devices the check would make every forward
    pass wait for the device (a host synchronization), under :func:`torch.compile` it
    would break the graph and under :func:`torch.func.vmap` it cannot be read, so it is
    not done there: every context is mapped by the networks on its own, so a
    non-finite row of ``c`` makes the densities of its own row NaN, and so the loss,
    without changing those of the other rows; the ODE solve of a CPMM, for the whole
    batch at once, raises a :class:`contmix.SolverError` instead. A context on the GPU
    that may hold NaN is best checked once, where the data is loaded, with
    :py:`torch.isfinite(c).all()`.

    Arguments:
        c: The context, with shape :math:`(*, C)`, or :py:`None`.
        context: The number :math:`C` of context features of the model.
        reference: A parameter of the model, whose dtype and device ``c`` must have.
        ignore: Whether a model without context ignores a given ``c``.

    Returns:
        ``c``, or :py:`None` when the model has no context.

    Example:
        >>> c = check_context(torch.randn(5, 3), context=3)
        >>> check_context(torch.randn(5, 3), context=0, ignore=True) is None
        True
        >>> check_context(torch.ones(5, 3, dtype=torch.long), context=3)
        Traceback (most recent call last):
            ...
        TypeError: The context c must be a floating point tensor, got torch.int64: use c.float().
    """

    if context == 0:
        if c is not None and not ignore:
            raise ValueError(
                "This model has no context (context=0) but a context c was given: "
                "call it as model() or build it with context=c.shape[-1]."
            )
        return None
    elif c is None:
        raise ValueError(f"This model needs a context c with shape (*, {context}).")
    elif not isinstance(c, Tensor):
        raise TypeError(f"The context c must be a torch.Tensor, got {type(c).__name__}.")
    elif c.shape[-1:] != (context,):
        raise ValueError(f"The context c must have shape (*, {context}), got {tuple(c.shape)}.")

    if not c.is_floating_point():
        raise TypeError(
            f"The context c must be a floating point tensor, got {c.dtype}: use c.float()."
        )
    if reference is not None and c.dtype != reference.dtype:
        raise TypeError(
            f"The context c is {c.dtype} but the model is {reference.dtype}: "
            f"use c.to({reference.dtype})."
        )
    if reference is not None and c.device != reference.device:
        raise ValueError(
            f"The context c is on {c.device} but the model is on {reference.device}: "
            f"move one of them, e.g. c.to('{reference.device}')."
        )
    if known(~torch.isfinite(c).all()):
        raise ValueError("The context c contains NaN or Inf: remove or impute them first.")

    return c


def check_scale(x: Tensor, floor: float, fix: str) -> None:
    r"""Raises a :class:`ValueError` unless some feature of :math:`x` has a variance
    above ``floor``, the smallest variance the model can represent: below it, the
    model would silently fit every component at the floor. Constant features are fine
    as long as another feature varies.

    Arguments:
        x: The samples, with shape :math:`(N, D)`.
        floor: The smallest variance of a component.
        fix: What to lower to represent smaller variances, e.g. ``"epsilon and reg"``.

    Example:
        >>> check_scale(torch.randn(10, 2), floor=1e-6, fix="epsilon")
        >>> check_scale(1e-8 * torch.randn(10, 2), floor=1e-6, fix="epsilon")
        Traceback (most recent call last):
            ...
        ValueError: The variance of x is at most ... below 1e-06, the smallest ...
    """

    var = x.var(dim=0, correction=0).max()

    if not var > floor:
        raise ValueError(
            f"The variance of x is at most {float(var):.3g} per feature, below {floor:.3g}, "
            "the smallest variance the model can represent: standardize x, e.g. "
            f"(x - x.mean(0)) / x.std(0), or lower {fix}."
        )


def check_sizes(minimum: int = 1, **sizes: int) -> None:
    r"""Raises a :class:`ValueError` unless every size is an integer of at least
    ``minimum``.

    Example:
        >>> check_sizes(features=2, components=3)
        >>> check_sizes(components=0)
        Traceback (most recent call last):
            ...
        ValueError: components must be an integer of at least 1, got 0.
    """

    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}.")


def cholesky(cov: Tensor, attempts: int = 6) -> Tensor:
    r"""Returns the Cholesky factor :math:`L` of a batch of covariance matrices,
    adding the smallest jitter :math:`\epsilon \bar{\sigma}^2 I`, with
    :math:`\epsilon \in \{0, 10^{-6}, 10^{-5}, \dots\}` relative to the mean variance
    :math:`\bar{\sigma}^2`, that makes each matrix positive definite.

    Example:
        >>> cov = torch.ones(2, 2, dtype=torch.float64)  # singular
        >>> cholesky(cov)  # the jitter of 1e-6 makes it positive definite
        tensor([[1.0000, 0.0000],
                [1.0000, 0.0014]], dtype=torch.float64)
    """

    L, info = torch.linalg.cholesky_ex(cov)
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(dim=-1)

    if not (torch.isfinite(cov).all() and (scale > 0).all()):
        raise ValueError(
            "A covariance matrix has a zero, negative or non-finite variance: the data is "
            "constant or contains NaN/Inf."
        )
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)

    for i in range(attempts):
        failed = info > 0
        if not failed.any():
            return L
        jitter = (10.0 ** (i - 6) * scale)[..., None, None] * eye
        L_, info_ = torch.linalg.cholesky_ex(cov + jitter)
        L = torch.where(failed[..., None, None], L_, L)
        info = torch.where(failed, info_, info)

    raise ValueError(
        "A covariance matrix is not positive definite even with a jitter of 10% of its "
        "variance: the data is degenerate (NaN, constant or duplicated)."
    )
