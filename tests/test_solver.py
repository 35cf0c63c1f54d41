r"""Tests of the ODE solver settings and their failures (``contmix.mixtures.solver``),
through a small CPMM."""

import pytest
import torch

from models import ode

from contmix import Solver, SolverError
from contmix.mixtures.solver import FIXED, METHODS


def test_step_budget_error():
    torch.manual_seed(0)
    model = ode(solver=Solver("dopri5", rtol=1e-8, atol=1e-8, max_steps=3))
    with torch.no_grad():
        model.dynamics.output_layer()[0].mul_(100.0)

    with pytest.raises(SolverError, match=r"max_steps=3.*stiff.*rk4"):
        model()

    rk4 = ode(solver=Solver("rk4"))
    with torch.no_grad():
        rk4.dynamics.output_layer()[1].fill_(float("nan"))
    with pytest.raises(SolverError, match="NaN"):
        rk4()


def test_stiff_solve_stops_at_default_budget():
    torch.manual_seed(0)
    model = ode(solver=Solver("dopri5"))
    with torch.no_grad():  # a fast oscillating field: far too many steps for dopri5
        model.dynamics.network[0].weight.mul_(1e3)
        model.dynamics.output_layer()[0].mul_(1e3)

    evaluations = []
    model.dynamics.register_forward_hook(lambda *_: evaluations.append(1))
    with pytest.raises(SolverError, match=r"max_steps=100 steps"):
        model()

    # dopri5 evaluates the dynamics 6 times a step (plus a few to start): the solve
    # stops after about 100 steps of the first interval instead of stalling
    assert 6 * 100 <= len(evaluations) <= 6 * 101 + 3, len(evaluations)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "scipy_solver"])
def test_every_torchdiffeq_method(method):
    # the methods accepted are torchdiffeq's (its list is private): each one solves
    torch.manual_seed(0)
    options = {"step_size": 0.25} if method in FIXED else {}
    model = ode(components=3, solver=Solver(method, max_steps=1000, options=options)).eval()
    with torch.no_grad():
        assert torch.isfinite(model().log_prob(torch.randn(5, 2))).all()
