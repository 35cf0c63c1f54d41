r"""The record of a fit, its warning and its progress bar.

Every ``initialize`` and ``em`` of the models returns a :class:`FitReport` and keeps it as
the model's ``fit_report``, as scikit-learn's estimators keep ``converged_``, ``n_iter_``
and ``lower_bound_``. An iterative fit (EM, k-means) that stops at its maximum number of
iterations without converging warns with a :class:`ConvergenceWarning`. Fits show a
:mod:`tqdm` progress bar (:func:`progress_bar`), off with ``progress=False``.
"""

__all__ = [
    "ConvergenceWarning",
    "FitReport",
    "best_of",
    "check_progress",
    "progress_bar",
    "warn_convergence",
]

import math
import warnings

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from torch import Tensor
from tqdm.auto import tqdm

T = TypeVar("T")

DELAY = 1.0  # seconds before a bar of progress=None appears: short fits stay silent


class ConvergenceWarning(UserWarning):
    r"""Warns that an iterative fit (EM, k-means) stopped at its maximum number of
    iterations without converging, as :class:`sklearn.exceptions.ConvergenceWarning`
    does. The fit is kept: raise the maximum number of iterations (``max_iter``) or the
    tolerance (``tol``) to let it converge.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", ConvergenceWarning)  # silence it
        ...     warn_convergence("EM", "max_iter", 1, "tol (now 0.001)")
        >>> issubclass(ConvergenceWarning, UserWarning)
        True
    """


def warn_convergence(what: str, name: str, limit: int, fix: str = "") -> None:
    r"""Warns with a :class:`ConvergenceWarning` that ``what`` stopped at ``name=limit``
    iterations without converging, and what to raise.

    Arguments:
        what: The fit, e.g. ``"EM"``.
        name: The argument of the maximum number of iterations, e.g. ``"max_iter"``.
        limit: Its value.
        fix: Another argument to raise, e.g. ``"tol (now 0.001)"``, if any.

    Example:
        >>> import pytest
        >>> with pytest.warns(ConvergenceWarning, match="raise max_iter"):
        ...     warn_convergence("EM", "max_iter", 10, "tol (now 0.001)")
    """

    also = f", or {fix}" if fix else ""
    warnings.warn(
        f"{what} did not converge in {limit} iteration{'s' * (limit != 1)} ({name}={limit}): "
        f"raise {name}{also}.",
        ConvergenceWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class FitReport:
    r"""The record of a fit, returned by the ``initialize`` and ``em`` methods of the
    models and kept as their ``fit_report``.

    The lower bound is the mean log-likelihood :math:`\frac{1}{N} \sum_n \log p(x_n)`
    of the samples, which EM raises at every iteration, as scikit-learn's
    ``lower_bound_``; with fixed responsibilities :math:`r_{nk}` (MFA's ``"fa"``), it is
    the mean of :math:`\sum_k r_{nk} \log \pi_k p_k(x_n)`, a lower bound of it.

    Attributes:
        strategy: The strategy of the fit, e.g. ``"em"`` (also that of ``em()``).
        converged: Whether EM converged within ``max_iter`` iterations (scikit-learn's
            ``converged_``); :py:`True` for a strategy that runs no EM.
        iterations: The number of EM iterations (scikit-learn's ``n_iter_``), 0 for a
            strategy that runs no EM.
        lower_bounds: The lower bound at each E-step, :py:`()` without EM.
        lower_bound: The mean log-likelihood of the kept fit: that of the last E-step
            after EM (scikit-learn's ``lower_bound_``), of the fitted mixture otherwise.
        restart: The index of the kept restart, in :math:`[0, n_{init})`.
        n_init: The number of restarts.
        context_history: For a conditional model given contexts :math:`c_n`
            (``initialize(x, c=c)``), the mean conditional log-likelihood
            :math:`\frac{1}{N} \sum_n \log p(x_n \mid c_n)` before each Adam step of
            the fit of the context network and after the last, the start (the
            unconditional mixture) first (see :mod:`contmix.mixtures.conditional`); :py:`()`
            without contexts.
        context_log_likelihood: The mean conditional log-likelihood of the kept
            context network, the highest of ``context_history``; :py:`None` without
            contexts. The other attributes are those of the unconditional fit.

    Example:
        >>> import torch
        >>> report = FitReport.of("em", -1.5, torch.tensor([-2.0, -1.5]), True)
        >>> report.iterations, report.lower_bounds, report.converged
        (2, (-2.0, -1.5), True)
    """

    strategy: str
    converged: bool
    iterations: int
    lower_bounds: tuple[float, ...]
    lower_bound: float
    restart: int = 0
    n_init: int = 1
    context_history: tuple[float, ...] = ()
    context_log_likelihood: float | None = None

    @classmethod
    def of(
        cls,
        strategy: str,
        lower_bound: float | Tensor,
        history: Sequence[float] | Tensor = (),
        converged: bool = True,
    ) -> "FitReport":
        r"""Returns the report of one fit (one host transfer for a tensor ``history``).

        Arguments:
            strategy: The strategy of the fit.
            lower_bound: The mean log-likelihood of the kept fit.
            history: The lower bound at each E-step, if EM ran.
            converged: Whether EM converged.

        Example:
            >>> import torch
            >>> FitReport.of("kmeans", torch.tensor(-3.0))
            FitReport(strategy='kmeans', converged=True, iterations=0, lower_bounds=(), ...)
        """

        if isinstance(history, Tensor):
            history = history.tolist()

        return cls(strategy, bool(converged), len(history), tuple(history), float(lower_bound))


def best_of(
    fit: Callable[[], tuple[T, FitReport]], n_init: int, progress: bool | None = None
) -> tuple[T, FitReport]:
    r"""Runs ``fit`` ``n_init`` times and returns the result of the highest lower bound
    with its report, which records the restart that won (the first of equal bounds), as
    scikit-learn's ``n_init`` does. A restart whose bound is NaN never wins over a
    finite one.

    Arguments:
        fit: A function that returns a result and its :class:`FitReport`.
        n_init: The number of restarts.
        progress: Whether to show a progress bar over the restarts (see
            :func:`progress_bar`); none is shown for one restart.

    Example:
        >>> bounds = iter([-2.0, -1.0, -3.0])
        >>> def fit():
        ...     bound = next(bounds)
        ...     return bound, FitReport.of("kmeans", bound)
        >>> result, report = best_of(fit, 3)
        >>> result, report.restart, report.n_init
        (-1.0, 1, 3)
    """

    bar = progress_bar(n_init, "restarts", progress if n_init > 1 else False)
    best, kept = None, None

    with bar:
        for restart in range(n_init):
            result, report = fit()
            if kept is None or _better(report.lower_bound, kept.lower_bound):
                best, kept = result, replace(report, restart=restart, n_init=n_init)
            bar.set_postfix(lower_bound=f"{kept.lower_bound:.6g}", refresh=False)
            bar.update()

    return best, kept


def _better(value: float, than: float) -> bool:
    r"""Whether a lower bound beats another one (a NaN never does; any value beats NaN)."""

    return value > than or (math.isnan(than) and not math.isnan(value))


def check_progress(progress: bool | None) -> None:
    r"""Raises a :class:`TypeError` unless ``progress`` is :py:`True`, :py:`False` or
    :py:`None`.

    Example:
        >>> check_progress(None)
        >>> check_progress("yes")
        Traceback (most recent call last):
            ...
        TypeError: progress must be True, False or None (only in a terminal), got 'yes'.
    """

    if progress is not None and not isinstance(progress, bool):
        raise TypeError(
            f"progress must be True, False or None (only in a terminal), got {progress!r}."
        )


def progress_bar(total: int, desc: str, progress: bool | None = None, initial: int = 0) -> tqdm:
    r"""Returns a :mod:`tqdm` progress bar of ``total`` steps, ``initial`` of them done
    (e.g. by a run resumed from a checkpoint), which clears itself when closed.

    With ``progress=None``, tqdm's own ``disable=None``: the bar is shown only when
    standard error is a terminal (or in a notebook), and only once the fit has lasted
    a second, so that short fits stay silent. :py:`True` shows it from the start
    wherever the output goes, :py:`False` never.

    Arguments:
        total: The number of steps, e.g. ``max_iter``.
        desc: What the bar counts, e.g. ``"EM"``.
        progress: Whether to show the bar (:py:`None`: only in a terminal).
        initial: The number of steps already done.

    Example:
        >>> with progress_bar(3, "EM", progress=False) as bar:
        ...     for _ in range(3):
        ...         bar.update()
        >>> bar.disable
        True
    """

    check_progress(progress)
    disable = None if progress is None else not progress
    delay = DELAY if progress is None else 0.0

    return tqdm(total=total, initial=initial, desc=desc, disable=disable, delay=delay, leave=False)
