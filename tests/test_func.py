r"""contmix under torch's function transforms (torch.func) and torch.compile.

Every quantity is checked against the same one by plain autograd, or by a loop, in
float64: vmap against the batched call, grad against autograd.grad of the sum of the
batch (its rows are independent), jacrev against one backward pass per output.
"""

import copy

import pytest
import torch
import torch._dynamo  # only for explain(), to count graph breaks

from models import BASES, MODELS, build
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

from contmix import Solver, SolverError
from contmix.anchors import known
from contmix.utils import check_context

D, C = 2, 3

# torchdiffeq's adaptive solvers are not torch.func transformable (see the xfail below):
# the CPMMs here integrate with the fixed-step rk4
RK4 = dict(solver=Solver("rk4", options={"step_size": 0.25}))
CASES = [(name, context) for name in BASES for context in (0, C)]
MIXTURES = [name for name in BASES if not MODELS[name].ode]


def new(name: str, context: int = 0, seed: int = 0) -> torch.nn.Module:
    r"""The registry's model, with networks of 16 hidden features, the ODE models with rk4."""

    return build(name, D, context, seed, hidden=(16,), **(RK4 if MODELS[name].ode else {}))


ODE_REASON = (
    "torchdiffeq's fixed-grid solver writes each step in place into a solution buffer "
    "(torchdiffeq/_impl/solvers.py, solution[j] = ...), which vmap cannot do when the "
    "state is batched and the buffer is not"
)


def data(n: int = 6, context: int = 0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, D, generator=generator, dtype=torch.float64)
    c = torch.randn(n, context, generator=generator, dtype=torch.float64) if context else None
    return x, c


def per_sample(model: torch.nn.Module, context: int):
    r"""The log-density of one sample (and its context) as a function of the sample."""

    if context:
        return lambda x, c: model(c).log_prob(x)
    return lambda x: model().log_prob(x)


def test_known():
    assert known(torch.tensor(True)) and not known(torch.tensor(False))
    assert not known(torch.tensor(True, device="meta"))  # not read on other devices
    assert vmap(lambda t: t & known(t))(torch.tensor([True, True])).tolist() == [False, False]

    compiled = torch.compile(lambda t: t + known(t.all()), fullgraph=True, backend="eager")
    assert compiled(torch.ones(2)).tolist() == [1.0, 1.0]  # under compile, not read


CACHE_REASON = (
    "contmix/mixtures/solver.py _Resolve, which makes the cached states of an unconditional "
    "CPMM in evaluation mode differentiable, is an autograd.Function without setup_context, "
    "which vmap refuses"
)


def xfail_vmap_context(name: str, context: int) -> list:
    if "cpmm" in name:
        reason = ODE_REASON if context else CACHE_REASON
        return [pytest.mark.xfail(raises=RuntimeError, reason=reason, strict=True)]
    return []


@pytest.mark.parametrize(
    "name, context",
    [pytest.param(n, c, marks=xfail_vmap_context(n, c)) for n, c in CASES],
)
def test_vmap_grad_per_sample(name, context):
    model = new(name, context).double().eval()
    x, c = data(context=context)
    inputs = (x,) if c is None else (x, c)
    f = per_sample(model, context)

    x_ = x.clone().requires_grad_()
    log_p = model(c).log_prob(x_)
    (expected,) = torch.autograd.grad(log_p.sum(), x_)

    assert torch.allclose(vmap(f)(*inputs), log_p, rtol=1e-10, atol=1e-10)
    assert torch.allclose(vmap(grad(f))(*inputs), expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name, context", CASES)
def test_jacrev_parameters(name, context):
    model = new(name, context).double().eval()
    x, c = data(n=7, context=context)  # more samples than components: the expanded path
    params = {k: p.detach() for k, p in model.named_parameters()}

    jac = jacrev(lambda p: functional_call(model, p, (c,)).log_prob(x))(params)

    log_p = model(c).log_prob(x)
    assert log_p.shape == (7,) and jac.keys() == params.keys()
    for n in range(7):
        rows = torch.autograd.grad(log_p[n], list(model.parameters()), retain_graph=True)
        for key, row in zip(params, rows, strict=True):
            assert torch.allclose(jac[key][n], row, rtol=1e-8, atol=1e-10), (key, n)


@pytest.mark.parametrize("name", MIXTURES)
def test_vmap_over_data_sets(name):
    r"""Batches of data sets with more samples than components: the expanded forms of
    :mod:`contmix.ops` (anchors, groups and their custom autograd functions) under
    vmap, and jacrev with respect to the samples."""

    model = new(name).double().eval()
    xs = torch.stack([data(n=20, seed=s)[0] for s in range(3)])
    xs[1, :5] += 1e3  # a far group of samples
    f = lambda x: model().log_prob(x).mean()

    expected = torch.stack([f(x) for x in xs])
    gradients = torch.stack([torch.autograd.grad(f(x), x)[0] for x in xs.requires_grad_()])
    xs = xs.detach()

    assert torch.allclose(vmap(f)(xs), expected, rtol=1e-10)
    assert torch.allclose(vmap(grad(f))(xs), gradients, rtol=1e-8, atol=1e-12)

    x = xs[0]
    jac = jacrev(lambda x: model().log_prob(x))(x)  # (N, N, D), block diagonal
    x_ = x.clone().requires_grad_()
    (rows,) = torch.autograd.grad(model().log_prob(x_).sum(), x_)
    assert torch.allclose(jac.diagonal(dim1=0, dim2=1).mT, rows, rtol=1e-8, atol=1e-12)
    assert torch.count_nonzero(jac.sum(-1) - torch.diag(jac.sum(-1).diagonal())) == 0


@pytest.mark.parametrize("name", ["gmm-full", "gmm-diagonal", "mfa", "hmfa"])
def test_vmap_over_ensembles(name):
    r"""Models stacked by torch.func.stack_module_state, evaluated at once."""

    models = [new(name, seed=seed).double() for seed in range(3)]
    params, buffers = stack_module_state(models)
    x = data(n=20)[0]
    base = copy.deepcopy(models[0]).to("meta")

    out = vmap(lambda p, b: functional_call(base, (p, b), ()).log_prob(x))(params, buffers)
    expected = torch.stack([m().log_prob(x) for m in models])

    assert torch.allclose(out, expected, rtol=1e-10)


@pytest.mark.xfail(
    raises=RuntimeError,
    strict=True,
    reason="torchdiffeq's adaptive solvers (here dopri5) assign into a buffer through "
    "_UncheckedAssign (torchdiffeq/_impl/rk_common.py), an autograd.Function without "
    "setup_context, which no torch.func transform accepts",
)
def test_func_adaptive_cpmm():
    model = build("cpmm", D, hidden=(16,), solver=Solver("dopri5")).double().eval()
    x = data()[0]
    vmap(grad(lambda x: model().log_prob(x)))(x)


# torch.compile: a training step, the loss compiled as one graph (fullgraph=True raises at
# the first graph break), its backward by AOTAutograd, the optimizer step eager


def compiled_training(name: str, context: int, backend: str, steps: int = 3) -> None:
    torch.compiler.reset()  # the same code compiled for each model: a fresh cache
    model = new(name, context)
    twin = copy.deepcopy(model)
    x, c = (t.float() if t is not None else None for t in data(n=64, context=context))

    def loss(model):
        return -model(c).log_prob(x).mean()

    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (model, twin)]
    for _ in range(steps):
        values = []
        for m, f, optimizer in zip((model, twin), (compiled, loss), optimizers, strict=True):
            optimizer.zero_grad()
            value = f(m)
            value.backward()
            optimizer.step()
            values.append(value.detach())
        assert torch.isfinite(values[0])
        assert torch.allclose(values[0], values[1], rtol=1e-4, atol=1e-4)

    for (key, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-4), key


@pytest.mark.parametrize("name, context", [(n, c) for n, c in CASES if n in MIXTURES])
def test_compile_training_step(name, context):
    compiled_training(name, context, backend="aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name, context", [("gmm-full", 0), ("mfa", C), ("cwm-affine", C)])
def test_compile_training_step_inductor(name, context):
    compiled_training(name, context, backend="inductor")


CPMM_BREAKS = (
    "torchdiffeq's solvers branch on tensor values in Python (even the fixed-step rk4: "
    "the grid size by .item() in _impl/solvers.py, t == t0 in its interpolation, the "
    "assertions on t in _impl/misc.py; dopri5 also its step control in rk_common.py), "
    "and contmix/mixtures/cpmm.py's solve reads bool(times[0] > 0) and isfinite(h).all()"
)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=CPMM_BREAKS)
@pytest.mark.parametrize(
    "name, sizes", [("cpmm", {}), ("hcpmm", dict(trajectories=10, components=4))]
)
@pytest.mark.parametrize("context", [0, C])
def test_compile_cpmm_graph_breaks(name, sizes, context):
    cpmm = build(name, D, context, **sizes, **RK4)
    x, c = (t.float() if t is not None else None for t in data(n=64, context=context))

    explanation = torch._dynamo.explain(lambda: -cpmm(c).log_prob(x).mean())()

    assert explanation.graph_break_count == 0


# the finiteness check of the context


CONDITIONAL = ["gmm-full", "mfa", "hmfa", "cwm-diagonal", "cwm-affine"]


@pytest.mark.parametrize("name", CONDITIONAL)
def test_nan_context_where_unchecked(name, monkeypatch):
    r"""Where the context is not read (other devices, compile, vmap), a non-finite row
    of c makes its own densities NaN, those of the other rows unchanged, whether each
    sample has its context or every sample meets every mixture."""

    model = new(name, C).double()
    x, c = data(n=8, context=C)
    bad = c.clone()
    bad[3, 1] = float("nan")
    others = torch.arange(8) != 3

    with pytest.raises(ValueError, match=r"context c contains NaN or Inf"):
        model(bad)  # on the CPU, in eager mode: checked

    monkeypatch.setattr("contmix.utils.known", lambda flag: False)
    with torch.no_grad():
        for x_ in (x, x[:, None]):  # (8,) densities, then (8, 8): all against all
            expected, out = model(c).log_prob(x_), model(bad).log_prob(x_)
            assert out[..., 3].isnan().all()
            assert torch.allclose(out[..., others], expected[..., others], rtol=1e-12)


def test_nan_context_compiled():
    model = build("gmm-full", D, C)
    x, c = (t.float() for t in data(n=8, context=C))
    c[3, 1] = float("inf")

    compiled = torch.compile(lambda x, c: model(c).log_prob(x), fullgraph=True, backend="eager")
    out = compiled(x, c)

    assert out[3].isnan() and torch.isfinite(out[torch.arange(8) != 3]).all()


@pytest.mark.parametrize("solver", [dict(solver=Solver("dopri5")), RK4])
def test_nan_context_cpmm(solver, monkeypatch):
    r"""A CPMM solves the whole batch at once: unchecked, a NaN context stops the
    solver with an error, not a silent NaN."""

    cpmm = build("cpmm", D, C, **solver).double()
    c = data(n=8, context=C)[1]
    c[3, 1] = float("nan")

    monkeypatch.setattr("contmix.utils.known", lambda flag: False)
    with pytest.raises(SolverError):
        cpmm(c)


def test_check_context_no_sync(accelerator):
    if accelerator.type != "cuda":
        pytest.skip("checks CUDA's synchronizations")
    c = torch.randn(16, C, device=accelerator)
    c[0, 0] = float("nan")

    torch.cuda.set_sync_debug_mode("error")
    try:
        assert check_context(c, C, c) is c  # not read: no host synchronization
    finally:
        torch.cuda.set_sync_debug_mode("default")
