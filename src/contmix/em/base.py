r"""The skeleton that every EM of contmix shares: the checks of its settings, the
iteration to convergence and the error of degenerate components."""

from collections.abc import Callable

import torch

from torch import Tensor

from ..distributed import Data, batches
from ..report import progress_bar, warn_convergence
from ..utils import check_sizes

BLOCK = 2**20  # elements of the sufficient statistics processed at once
CACHE = 2**25  # elements of the sufficient statistics kept between EM iterations


def check_reg(reg: float) -> None:
    r"""Raises a :class:`ValueError` unless the regularization ``reg`` is a finite
    non-negative number.

    Example:
        >>> check_reg(1e-6)
        >>> check_reg(-1.0)
        Traceback (most recent call last):
            ...
        ValueError: reg must be a finite number of at least 0, got -1.0: e.g. reg=1e-6.
    """

    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not 0 <= reg < float("inf"):
        raise ValueError(f"reg must be a finite number of at least 0, got {reg!r}: e.g. reg=1e-6.")


def check_em(tol: float, max_iter: int) -> None:
    r"""Raises a :class:`ValueError` unless the tolerance ``tol`` of EM is a finite
    non-negative number and ``max_iter`` a positive integer.

    Example:
        >>> check_em(1e-3, 100)
        >>> check_em(1e-3, 0)
        Traceback (most recent call last):
            ...
        ValueError: max_iter must be an integer of at least 1, got 0.
    """

    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < float("inf"):
        raise ValueError(f"tol must be a finite number of at least 0, got {tol!r}: e.g. tol=1e-3.")

    check_sizes(max_iter=max_iter)


def iterate(
    step: Callable[[], float], tol: float, max_iter: int, what: str, progress: bool | None
) -> tuple[list[float], bool]:
    r"""Runs ``step`` (one EM iteration, which returns the lower bound of its E-step)
    until the bound changes by less than ``tol`` or ``max_iter`` times, with a progress
    bar whose postfix is the bound (:func:`~contmix.report.progress_bar`), and warns with
    a :class:`~contmix.report.ConvergenceWarning` when it does not converge. Returns
    the bounds and whether it converged.

    Example:
        >>> bounds = iter([-3.0, -2.0, -1.9995])
        >>> iterate(lambda: next(bounds), tol=1e-3, max_iter=10, what="EM", progress=False)
        ([-3.0, -2.0, -1.9995], True)
    """

    history = []

    with progress_bar(max_iter, what, progress) as bar:
        for _ in range(max_iter):
            history.append(step())
            bar.set_postfix(lower_bound=f"{history[-1]:.6g}", refresh=False)
            bar.update()

            if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
                return history, True

    warn_convergence(what, "max_iter", max_iter, f"tol (now {tol:g})")

    return history, False


def _components(bad: Tensor) -> str:
    r"""Names the components flagged in ``bad`` (the first few of them)."""

    index = bad.nonzero().squeeze(-1).tolist()
    more = f" and {len(index) - 5} more" if len(index) > 5 else ""

    return f"{'component' if len(index) == 1 else 'components'} {index[:5]}{more}"


def degenerate(what: str, finite: Tensor, positive: Tensor, fix: str) -> ValueError:
    r"""Returns the error of a fit that cannot continue: the components whose
    parameters are not finite (an overflow) or not positive (a degenerate cluster),
    named, with what to do about each.

    Arguments:
        what: What is wrong, e.g. ``"covariance"``.
        finite: Whether the parameter of each component is finite, with shape :math:`(K,)`.
        positive: Whether it is positive (definite), with shape :math:`(K,)`.
        fix: What to raise against a degenerate cluster, e.g. ``"reg (the variance added
            to the covariances, e.g. reg=1e-3)"``.

    Example:
        >>> error = degenerate("covariance", torch.tensor([True]), torch.tensor([False]), "reg")
        >>> str(error)
        'The covariance of component [0] is singular ... raise reg.'
    """

    messages = []
    if not finite.all():
        messages.append(
            f"The {what} of {_components(~finite)} is not finite: the squares of x overflow "
            "its dtype; standardize x, e.g. (x - x.mean(0)) / x.std(0)."
        )
    if not positive[finite].all():
        messages.append(
            f"The {what} of {_components(finite & ~positive)} is singular (a cluster of "
            f"duplicated samples, or constant in a feature): raise {fix}."
        )

    return ValueError(" ".join(messages))


def dtype_of(x: Data) -> torch.dtype:
    r"""Returns the dtype of the samples: of the tensor, or of the first batch.

    Example:
        >>> dtype_of(torch.randn(4, 2, dtype=torch.float64).split(2))
        torch.float64
    """

    for batch in batches(x):
        return batch.dtype

    raise ValueError("x holds no batch: pass at least one batch of samples.")
