r"""The starting point of the context network of a conditional model.

A conditional model (``context > 0``) computes the parameters of its mixture from the
context :math:`c` with a hypernetwork, a :class:`zuko.nn.MLP`. Its ``initialize(x)``
fits the unconditional mixture :math:`p(x)` and writes it as the bias of the
hypernetwork's last layer: the network starts out producing that mixture whatever the
context. Given the contexts of the samples, ``initialize(x, c=c)`` then fits the
network to :math:`p(x \mid c)` (:func:`fit_context`): from the fitted bias, with the
weights of the last layer at zero, a few Adam steps of the mean conditional
log-likelihood

.. math:: \ell(\theta) = \frac{1}{N} \sum_{n = 1}^N \log p_\theta(x_n \mid c_n),

of which the parameters of the highest :math:`\ell` are kept. The start is exactly the
unconditional mixture, so the kept parameters are never worse than it on
:math:`(x, c)`. The steps take no random numbers: given the same start, the same
parameters.

References:
    | Adam: A Method for Stochastic Optimization (Kingma et al., 2015)
    | https://arxiv.org/abs/1412.6980
"""

__all__ = [
    "check_contexts",
    "check_steps",
    "fit_context",
    "initialize_context",
    "restore_on_error",
]

import math

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn as nn

from torch import Tensor

from ..report import FitReport, _better, progress_bar
from ..utils import check_context, check_sizes

STEPS = 100  # Adam steps of the context fit, by default
LR = 1e-2  # their learning rate, by default


def check_contexts(model: nn.Module, x: object, c: Tensor | None) -> None:
    r"""Raises an error unless ``c`` is :py:`None` or the contexts of the samples
    :math:`x` for ``model``: a finite matrix with shape :math:`(N, C)`, one row per
    sample, with the dtype and device of the model
    (:func:`~contmix.utils.check_context`). An unconditional model takes no ``c``, and
    contexts need :math:`x` as a tensor (not an iterable of batches).

    Arguments:
        model: A model with ``context`` context features.
        x: The samples, with shape :math:`(N, D)`, already checked.
        c: The contexts, with shape :math:`(N, C)`, or :py:`None`.

    Example:
        >>> from contmix import GMM
        >>> gmm, x = GMM(features=2, context=3), torch.randn(10, 2)
        >>> check_contexts(gmm, x, torch.randn(10, 3))
        >>> check_contexts(gmm, x, torch.randn(9, 3))
        Traceback (most recent call last):
            ...
        ValueError: The contexts c must have one row per sample of x (10), got 9 rows.
    """

    if c is None:
        return
    if model.context == 0:
        raise ValueError(
            f"This {type(model).__name__} has no context (context=0) but contexts c were "
            f"given: initialize it without c, or build it with context={_width(c)}."
        )
    if not isinstance(x, Tensor):
        raise TypeError(
            "Contexts c need the samples x as a tensor with shape (N, D), got "
            f"{type(x).__name__}: pass x and c as tensors, or fit the batches without c."
        )

    check_context(c, model.context, next(model.parameters()))

    if c.dim() != 2:
        raise ValueError(
            f"The contexts c must have shape (N, {model.context}), one row per sample, "
            f"got {tuple(c.shape)}."
        )
    if len(c) != len(x):
        raise ValueError(
            f"The contexts c must have one row per sample of x ({len(x)}), got {len(c)} rows."
        )
    if not torch.isfinite(c).all():
        raise ValueError("The contexts c contain NaN or Inf: remove or impute them first.")


def _width(c: object) -> str:
    r"""The number of columns of ``c`` if it is a tensor with some, else ``C``."""

    return str(c.shape[-1]) if isinstance(c, Tensor) and c.dim() > 0 else "C"


def check_steps(steps: int, lr: float) -> None:
    r"""Raises a :class:`ValueError` unless ``steps`` is a non-negative integer and
    ``lr`` a positive finite number.

    Example:
        >>> check_steps(100, 1e-2)
        >>> check_steps(100, 0.0)
        Traceback (most recent call last):
            ...
        ValueError: lr must be a positive finite number, got 0.0.
    """

    check_sizes(0, steps=steps)

    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}.")


@contextmanager
def restore_on_error(module: nn.Module) -> Iterator[None]:
    r"""Restores the state of ``module`` if the block raises (an interruption too), so
    that a failed fit leaves the parameters as they were.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> before = layer.weight.clone()
        >>> try:
        ...     with restore_on_error(layer), torch.no_grad():
        ...         _ = layer.weight.zero_()
        ...         raise RuntimeError("interrupted")
        ... except RuntimeError:
        ...     pass
        >>> torch.equal(layer.weight, before)
        True
    """

    state = {name: value.clone() for name, value in module.state_dict().items()}

    try:
        yield
    except BaseException:
        module.load_state_dict(state)
        raise


def fit_context(
    model: nn.Module,
    x: Tensor,
    c: Tensor,
    parameters: Iterable[nn.Parameter],
    steps: int = STEPS,
    lr: float = LR,
    progress: bool | None = None,
) -> tuple[float, tuple[float, ...]]:
    r"""Raises the mean conditional log-likelihood :math:`\frac{1}{N} \sum_n \log
    p(x_n \mid c_n)` of ``model`` by ``steps`` full-batch Adam steps on ``parameters``
    and keeps, of the start and of the parameters after each step, those of the
    highest (a NaN never wins), so that it never ends below its start. Parameters that
    do not require gradients are left alone.

    The gradients are taken with :func:`torch.autograd.grad`: the ``grad`` of the
    model's parameters are left as they were.

    Arguments:
        model: A conditional model, whose ``model(c).log_prob(x)`` has shape :math:`(N,)`.
        x: The samples, with shape :math:`(N, D)`.
        c: Their contexts, with shape :math:`(N, C)`.
        parameters: The parameters to fit, e.g. those of the hypernetwork.
        steps: The number of Adam steps.
        lr: The learning rate of Adam.
        progress: Whether to show a progress bar (:py:`None`: only in a terminal).

    Returns:
        The mean conditional log-likelihood of the kept parameters, and that before
        each step and after the last (:math:`\text{steps} + 1` values, the start first).

    Example:
        >>> from contmix import GMM
        >>> c = torch.randn(200, 1)
        >>> x = 3 * c + 0.1 * torch.randn(200, 1)  # the mean depends on the context
        >>> gmm = GMM(features=1, context=1, components=1)
        >>> best, history = fit_context(gmm, x, c, gmm.hyper.parameters(), steps=50)
        >>> len(history), best == max(history), best > history[0]
        (51, True, True)
    """

    parameters = [p for p in parameters if p.requires_grad]
    steps = steps if parameters else 0  # all frozen: nothing to fit
    optimizer = torch.optim.Adam(parameters, lr=lr) if parameters else None
    grads = [p.grad for p in parameters]
    kept, best, history = None, -math.inf, []

    with torch.enable_grad(), progress_bar(steps, "context", progress) as bar:
        for step in range(steps + 1):
            loss = -model(c).log_prob(x).mean()
            value = -float(loss.detach())
            history.append(value)
            if kept is None or _better(value, best):
                kept, best = [p.detach().clone() for p in parameters], value
            if step == steps:
                break
            _step(optimizer, loss, parameters)
            bar.set_postfix(log_likelihood=f"{best:.6g}", refresh=False)
            bar.update()

    with torch.no_grad():
        for p, value, grad in zip(parameters, kept, grads, strict=True):
            p.copy_(value)
            p.grad = grad

    return best, tuple(history)


def _step(optimizer: torch.optim.Optimizer, loss: Tensor, parameters: list[Tensor]) -> None:
    r"""One step of ``optimizer`` down ``loss``, its gradients from
    :func:`torch.autograd.grad` (those of the other parameters of the model untouched)."""

    for p, grad in zip(parameters, torch.autograd.grad(loss, parameters), strict=True):
        p.grad = grad
    optimizer.step()


def initialize_context(
    model: nn.Module,
    x: Tensor,
    c: Tensor | None,
    report: FitReport,
    parameters: Iterable[nn.Parameter] | None = None,
    steps: int = STEPS,
    lr: float = LR,
    progress: bool | None = None,
) -> FitReport:
    r"""Fits the hypernetwork ``model.hyper`` of a model whose unconditional mixture is
    fitted (written as the bias of its last layer) to :math:`p(x \mid c)`: sets the
    weights of the last layer to zero, so that the network produces exactly the fitted
    mixture, then runs :func:`fit_context` on ``parameters`` (those of the
    hypernetwork if :py:`None`). Returns ``report`` with the mean conditional
    log-likelihoods of the context fit as ``context_history`` and that of the kept
    parameters as ``context_log_likelihood``. Without contexts (``c=None``), changes
    nothing and returns ``report`` as it is: the network keeps producing the
    unconditional mixture whatever the context.

    Arguments:
        model: A conditional model, its unconditional mixture fitted.
        x: The samples, with shape :math:`(N, D)`.
        c: Their contexts, with shape :math:`(N, C)`, checked by :func:`check_contexts`,
            or :py:`None`.
        report: The report of the unconditional fit.
        parameters: The parameters to fit (default: those of ``model.hyper``).
        steps: The number of Adam steps.
        lr: The learning rate of Adam.
        progress: Whether to show a progress bar (:py:`None`: only in a terminal).

    Example:
        >>> from contmix import GMM
        >>> c = torch.randn(200, 1)
        >>> x = 3 * c + 0.1 * torch.randn(200, 1)
        >>> gmm = GMM(features=1, context=1, components=1)
        >>> report = gmm.initialize(x)  # the unconditional mixture, whatever the context
        >>> report = initialize_context(gmm, x, c, report, steps=50)
        >>> report.context_log_likelihood > report.context_history[0]
        True
    """

    if c is None:
        return report

    with torch.no_grad():
        model.hyper[-1].weight.zero_()

    parameters = model.hyper.parameters() if parameters is None else parameters
    best, history = fit_context(model, x, c, parameters, steps, lr, progress)

    return replace(report, context_history=history, context_log_likelihood=best)
