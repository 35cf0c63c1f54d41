r"""Tests of contmix.report: the record of a fit, its warning and its progress bar."""

import dataclasses
import math
import warnings

import pytest
import torch

import contmix

from contmix.report import (
    ConvergenceWarning,
    FitReport,
    best_of,
    check_progress,
    progress_bar,
    warn_convergence,
)


def test_exported():
    assert contmix.ConvergenceWarning is ConvergenceWarning
    assert contmix.FitReport is FitReport
    assert issubclass(ConvergenceWarning, UserWarning)


def test_report_of_a_fit():
    history = torch.tensor([-3.0, -2.5, -2.25], dtype=torch.float64)
    report = FitReport.of("em", history[-1], history, converged=False)

    assert report == FitReport("em", False, 3, (-3.0, -2.5, -2.25), -2.25, 0, 1)
    assert all(type(value) is float for value in (*report.lower_bounds, report.lower_bound))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.converged = True

    start = FitReport.of("kmeans++", -4.0)
    assert (start.iterations, start.lower_bounds, start.converged) == (0, (), True)


def test_best_of_keeps_the_highest_bound():
    bounds = iter([-3.0, -1.0, -1.0, float("nan"), -2.0])
    calls = []

    def fit():
        bound = next(bounds)
        calls.append(bound)
        return len(calls) - 1, FitReport.of("em", bound, [bound])

    result, report = best_of(fit, 5, progress=False)

    assert len(calls) == 5
    assert result == 1 and report.restart == 1 and report.n_init == 5  # the first of ties
    assert report.lower_bounds == (-1.0,)


def test_best_of_nan_never_wins():
    bounds = iter([float("nan"), -5.0, float("nan")])
    report = best_of(lambda: (None, FitReport.of("em", next(bounds))), 3)[1]
    assert report.restart == 1 and report.lower_bound == -5.0

    only = best_of(lambda: (None, FitReport.of("em", float("nan"))), 2)[1]
    assert only.restart == 0 and math.isnan(only.lower_bound)


def test_progress_bar(capsys):
    with progress_bar(4, "EM", progress=True) as bar:
        for step in range(4):
            bar.set_postfix(lower_bound=f"{-step:.6g}", refresh=False)
            bar.update()
        bar.refresh()  # what tqdm does at its next display
    assert "EM: 100%" in capsys.readouterr().err

    with progress_bar(4, "EM", progress=False) as bar:
        bar.update(4)
    with progress_bar(4, "EM") as bar:  # None: disabled when stderr is not a terminal
        assert bar.disable
        bar.update(4)
    assert capsys.readouterr().err == ""


def test_check_progress():
    for good in (True, False, None):
        check_progress(good)
    for bad in (1, "yes", 0.0):
        with pytest.raises(TypeError, match="progress must be True, False or None"):
            check_progress(bad)
    with pytest.raises(TypeError, match="progress must be"):
        progress_bar(3, "EM", progress="always")


def test_warn_convergence_says_what_to_raise():
    with pytest.warns(ConvergenceWarning) as record:
        warn_convergence("EM", "max_iter", 7, "tol (now 0.001)")

    message = str(record[0].message)
    assert message == (
        "EM did not converge in 7 iterations (max_iter=7): raise max_iter, or tol (now 0.001)."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConvergenceWarning):
            warn_convergence("k-means", "iterations", 3)
