r"""Every model and the curriculum on a device, against the same computation on the CPU.

The tests run on the device of ``--device`` (``pytest tests/test_cuda.py --device
cuda``) and skip on the CPU, the default. Each one fits or copies a model on the CPU in
float64, moves a copy to the device and checks that the device gives the CPU's values
(densities, posteriors, gradients, extracted models, curriculum spaces), that
everything it returns stays on the device, and that fitting on the device works in the
dtype of ``--dtype`` too.
"""

import copy

import pytest
import torch
import zuko

from data import blobs as make_blobs
from helpers import train
from models import CONTEXTUAL, MODELS, build

from contmix import GMM, Curriculum
from contmix.curriculum import Settings

CASES = [(name, 0) for name in MODELS] + [(name, 2) for name in CONTEXTUAL]
IDS = [f"{name}-c{context}" for name, context in CASES]
CENTERS = [[-5.0, 0, 1], [5, 1, -1], [0, 6, 2]]


def blobs(n: int = 300, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Three blobs in 3-D and contexts."""

    g = torch.Generator().manual_seed(0)
    x, _ = make_blobs(CENTERS, n, seed=g, dtype=torch.float32, cycle=True)
    return x.to(dtype), torch.randn(n, 2, generator=g).to(dtype)


def strategy(name: str) -> str:
    return "em" if "em" in MODELS[name].strategies else "kmeans"


def fitted(name: str, context: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    model = build(name, 3, context).double()
    x, c = blobs()
    kwargs = {"steps": 5} if MODELS[name].ode else {}
    model.initialize(x, strategy=strategy(name), **kwargs)
    return model.eval(), x, c if context else None


def to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def call(model, c):
    return model() if c is None else model(c)


def assert_close(a: torch.Tensor, b: torch.Tensor, device: torch.device, **kwargs) -> None:
    assert a.device.type == device.type
    torch.testing.assert_close(a.cpu(), b, **kwargs)


@pytest.mark.parametrize("name, context", CASES, ids=IDS)
def test_model_on_device_equals_cpu(name, context, accelerator):
    model, x, c = fitted(name, context)
    gpu = copy.deepcopy(model).to(accelerator)
    d, d_gpu = call(model, c), call(gpu, to(c, accelerator))
    xd = x.to(accelerator)

    assert_close(d_gpu.log_prob(xd), d.log_prob(x), accelerator, rtol=1e-8, atol=1e-8)
    assert d_gpu.sample((5,)).device.type == accelerator.type

    assert_close(d_gpu.posterior(xd), d.posterior(x), accelerator, rtol=1e-7, atol=1e-8)
    if MODELS[name].mixture:
        margin = d_gpu.marginal([0, 2]).log_prob(xd[:, [0, 2]])
        assert_close(margin, d.marginal([0, 2]).log_prob(x[:, [0, 2]]), accelerator)

    # gradients of the likelihood with respect to every parameter
    model.train(not MODELS[name].ode)
    gpu.train(model.training)
    torch.manual_seed(1)
    loss = -call(model, c).log_prob(x).mean()
    torch.manual_seed(1)
    loss_gpu = -call(gpu, to(c, accelerator)).log_prob(xd).mean()
    if model.training:
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        grads_gpu = torch.autograd.grad(loss_gpu, list(gpu.parameters()), allow_unused=True)
        for g, g_gpu in zip(grads, grads_gpu, strict=True):
            if g is not None:
                assert_close(g_gpu, g, accelerator, rtol=1e-6, atol=1e-8)


ODE_CASES = [(name, context) for name, context in CASES if MODELS[name].ode]


@pytest.mark.parametrize("name, context", ODE_CASES, ids=[f"{n}-c{c}" for n, c in ODE_CASES])
def test_extract_on_device(name, context, accelerator):
    model, x, c = fitted(name, context)
    gpu = copy.deepcopy(model).to(accelerator)
    one = None if c is None else c[0]

    extracted, extracted_gpu = model.extract(c=one), gpu.extract(c=to(one, accelerator))
    assert all(p.device.type == accelerator.type for p in extracted_gpu.parameters())
    lp = extracted_gpu().log_prob(x.to(accelerator))
    assert_close(lp, extracted().log_prob(x), accelerator, rtol=1e-6, atol=1e-6)

    # one training step of the ODE model on the device
    gpu.train()
    loss = -call(gpu, to(c, accelerator)).log_prob(x.to(accelerator)).mean()
    loss.backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in gpu.parameters())


@pytest.mark.parametrize("name, context", CASES, ids=IDS)
def test_initialize_on_device(name, context, accelerator, dtype):
    model = build(name, 3, context).to(accelerator, dtype)
    x, c = (t.to(accelerator) for t in blobs(dtype=dtype))
    c = c if context else None
    kwargs = {"steps": 50, "lr": 1e-2} if MODELS[name].ode else {}
    model.initialize(x, strategy=strategy(name), **kwargs)

    assert all(p.device.type == accelerator.type for p in model.parameters())
    assert all(p.isfinite().all() for p in model.parameters())

    log_p = call(model.eval(), c).log_prob(x)
    assert log_p.device.type == accelerator.type and log_p.isfinite().all()
    if MODELS[name].ode:  # an ODE model: training on the device helps
        before = log_p.mean().item()
        train(model.train(), lambda: -call(model, c).log_prob(x).mean(), steps=20, lr=1e-2)
        assert call(model.eval(), c).log_prob(x).mean().item() > before
    else:  # EM: better than one Gaussian fitted to the three blobs
        single = torch.distributions.MultivariateNormal(x.mean(dim=0), torch.cov(x.mT))
        assert log_p.mean().item() > single.log_prob(x).mean().item() + 0.5


@pytest.mark.parametrize("name", ["gmm-full", "gmm-diagonal-tied"])
def test_gmm_em_on_device(name, accelerator):
    model = build(name, 3).double()
    x, _ = blobs()
    model.initialize(x, strategy="random")
    gpu = copy.deepcopy(model).to(accelerator)

    history = torch.tensor(model.em(x, tol=0.0, max_iter=5).lower_bounds)
    on_device = torch.tensor(gpu.em(x.to(accelerator), tol=0.0, max_iter=5).lower_bounds)

    assert_close(on_device, history, accelerator)
    assert_close(gpu().log_prob(x.to(accelerator)), model().log_prob(x), accelerator)


def test_curriculum_on_device(accelerator):
    x, _ = blobs(128)
    torch.manual_seed(0)
    cnf = zuko.flows.CNF(3, hidden_features=(16,)).double()
    curriculum, gpu = Curriculum(cnf), Curriculum(copy.deepcopy(cnf).to(accelerator))

    spaces, spaces_gpu = curriculum.spaces(x, steps=5), gpu.spaces(x.to(accelerator), steps=5)
    assert_close(spaces_gpu.u, spaces.u, accelerator, rtol=1e-5, atol=1e-5)
    assert torch.equal(spaces_gpu.u[-1].cpu(), x)  # u_0 = x exactly

    model = GMM(3, components=3).to(accelerator, torch.float64)
    settings = Settings(finetune_epochs=1, batch_size=32)
    history = gpu.train(model, spaces_gpu, settings=settings, progress=False)
    assert len(history) == 6 and all(torch.isfinite(torch.tensor(history)))
    assert all(p.device.type == accelerator.type for p in model.parameters())

    gpu.fit_teacher(x.to(accelerator).float().double(), epochs=1, batch_size=64, progress=False)
    assert all(p.device.type == accelerator.type for p in gpu.cnf.parameters())
