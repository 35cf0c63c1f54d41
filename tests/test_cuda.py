r"""Every model and the curriculum on a GPU, against the same computation on the CPU.

The tests run on ``CONTMIX_TEST_DEVICE`` (``cuda`` by default) and skip cleanly when it
is not available. Each one fits or copies a model on the CPU in float64, moves a copy
to the device and checks that the device gives the CPU's values (densities,
posteriors, gradients, extracted models, curriculum spaces), that everything it
returns stays on the device, and that fitting on the device works in float32 too.
"""

import copy
import os

import pytest
import torch
import zuko

from contmix import CPMM, CWM, GMM, MFA, Curriculum, HierarchicalCPMM, HierarchicalMFA
from contmix.curriculum import Settings

DEVICE = torch.device(os.environ.get("CONTMIX_TEST_DEVICE", "cuda"))

pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"
)

MODELS = {
    "gmm-full": lambda: GMM(3, components=3),
    "gmm-diagonal-tied": lambda: GMM(3, components=3, covariance_type="diagonal", tied=True),
    "gmm-conditional": lambda: GMM(3, context=2, components=3, hidden_features=(8,)),
    "mfa": lambda: MFA(3, components=3, rank=1),
    "mfa-conditional": lambda: MFA(3, context=2, components=3, rank=1, hidden_features=(8,)),
    "hmfa": lambda: HierarchicalMFA(3, groups=3, components=2),
    "cpmm": lambda: CPMM(3, components=4, rank=1, hidden_features=(8,)),
    "cpmm-conditional": lambda: CPMM(3, context=2, components=3, hidden_features=(8,)),
    "cpmm-image": lambda: CPMM((3, 1, 1), components=3, hidden_features=(4,)),
    "hcpmm": lambda: HierarchicalCPMM(3, trajectories=3, components=3, hidden_features=(8,)),
    "cwm": lambda: CWM(3, components=3, hidden_features=(8,)),
}

STRATEGIES = {"gmm": "em", "mfa": "em", "hmfa": "kmeans", "cpmm": "kmeans", "hcpmm": "kmeans"}
STRATEGIES["cwm"] = "em"


def blobs(n: int = 300, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-5.0, 0, 1], [5, 1, -1], [0, 6, 2]])
    x = centers[torch.arange(n) % 3] + torch.randn(n, 3, generator=g)
    return x.to(dtype), torch.randn(n, 2, generator=g).to(dtype)


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(0)
    model = MODELS[name]().double()
    x, c = blobs()
    c = c if getattr(model, "context", 0) > 0 else None
    strategy = STRATEGIES[name.split("-")[0]]
    kwargs = {"steps": 5} if name.startswith(("cpmm", "hcpmm")) else {}
    model.initialize(x, strategy=strategy, **kwargs)
    return model.eval(), x, c


def on(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(DEVICE)


def call(model, c):
    return model() if c is None else model(c)


def assert_close(a: torch.Tensor, b: torch.Tensor, **kwargs) -> None:
    assert a.device.type == DEVICE.type
    torch.testing.assert_close(a.cpu(), b, **kwargs)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_on_device_equals_cpu(name):
    model, x, c = build(name)
    gpu = copy.deepcopy(model).to(DEVICE)
    d, d_gpu = call(model, c), call(gpu, on(c))

    assert_close(d_gpu.log_prob(on(x)), d.log_prob(x), rtol=1e-8, atol=1e-8)
    assert d_gpu.sample((5,)).device.type == DEVICE.type

    assert_close(d_gpu.posterior(on(x)), d.posterior(x), rtol=1e-7, atol=1e-8)
    if hasattr(d, "marginal"):
        margin = d.marginal([0, 2])
        assert_close(
            d_gpu.marginal([0, 2]).log_prob(on(x[:, [0, 2]])), margin.log_prob(x[:, [0, 2]])
        )

    # gradients of the likelihood with respect to every parameter
    model.train(name.startswith(("gmm", "mfa", "hmfa", "cwm")))
    gpu.train(model.training)
    torch.manual_seed(1)
    loss = -call(model, c).log_prob(x).mean()
    torch.manual_seed(1)
    loss_gpu = -call(gpu, on(c)).log_prob(on(x)).mean()
    if model.training:
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        grads_gpu = torch.autograd.grad(loss_gpu, list(gpu.parameters()), allow_unused=True)
        for g, g_gpu in zip(grads, grads_gpu, strict=True):
            if g is not None:
                assert_close(g_gpu, g, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["cpmm", "cpmm-image", "hcpmm", "cpmm-conditional"])
def test_extract_on_device(name):
    model, x, c = build(name)
    gpu = copy.deepcopy(model).to(DEVICE)
    context = None if c is None else c[0]

    extracted, extracted_gpu = model.extract(c=context), gpu.extract(c=on(context))
    assert all(p.device.type == DEVICE.type for p in extracted_gpu.parameters())
    assert_close(extracted_gpu().log_prob(on(x)), extracted().log_prob(x), rtol=1e-6, atol=1e-6)

    # one training step of the ODE model on the device
    gpu.train()
    loss = -call(gpu, on(c)).log_prob(on(x)).mean()
    loss.backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in gpu.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_initialize_on_device_float32(name):
    torch.manual_seed(0)
    model = MODELS[name]().to(DEVICE)
    x, _ = blobs(dtype=torch.float32)
    kwargs = {"steps": 50, "lr": 1e-2} if name.startswith(("cpmm", "hcpmm")) else {}
    model.initialize(x.to(DEVICE), strategy=STRATEGIES[name.split("-")[0]], **kwargs)

    assert all(p.device.type == DEVICE.type for p in model.parameters())
    assert all(p.isfinite().all() for p in model.parameters())

    c = blobs(dtype=torch.float32)[1].to(DEVICE) if getattr(model, "context", 0) else None
    log_p = call(model.eval(), c).log_prob(x.to(DEVICE))
    assert log_p.device.type == DEVICE.type and log_p.isfinite().all()
    if name.startswith(("cpmm", "hcpmm")):  # an ODE model: training on the device helps
        before = log_p.mean().item()
        optimizer = torch.optim.Adam(model.train().parameters(), lr=1e-2)
        for _ in range(20):
            loss = -call(model, c).log_prob(x.to(DEVICE)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert call(model.eval(), c).log_prob(x.to(DEVICE)).mean().item() > before
    else:  # EM: better than one Gaussian fitted to the three blobs
        single = torch.distributions.MultivariateNormal(x.mean(dim=0), torch.cov(x.mT))
        assert log_p.mean().item() > single.log_prob(x).mean().item() + 0.5


@pytest.mark.parametrize("name", ["gmm-full", "gmm-diagonal-tied"])
def test_gmm_em_on_device(name):
    torch.manual_seed(0)
    model = MODELS[name]().double()
    x, _ = blobs()
    model.initialize(x, strategy="random")
    gpu = copy.deepcopy(model).to(DEVICE)

    history = torch.tensor(model.em(x, tol=0.0, max_iter=5).lower_bounds)
    on_device = torch.tensor(gpu.em(x.to(DEVICE), tol=0.0, max_iter=5).lower_bounds)

    assert_close(on_device, history)
    assert_close(gpu().log_prob(on(x)), model().log_prob(x))


def test_curriculum_on_device():
    x, _ = blobs(128)
    torch.manual_seed(0)
    cnf = zuko.flows.CNF(3, hidden_features=(16,)).double()
    curriculum, gpu = Curriculum(cnf), Curriculum(copy.deepcopy(cnf).to(DEVICE))

    spaces, spaces_gpu = curriculum.spaces(x, steps=5), gpu.spaces(on(x), steps=5)
    assert_close(spaces_gpu.u, spaces.u, rtol=1e-5, atol=1e-5)
    assert torch.equal(spaces_gpu.u[-1].cpu(), x)  # u_0 = x exactly

    model = GMM(3, components=3).to(DEVICE, torch.float64)
    settings = Settings(finetune_epochs=1, batch_size=32)
    history = gpu.train(model, spaces_gpu, settings=settings, progress=False)
    assert len(history) == 6 and all(torch.isfinite(torch.tensor(history)))
    assert all(p.device.type == DEVICE.type for p in model.parameters())

    gpu.fit_teacher(on(x).float().double(), epochs=1, batch_size=64, progress=False)
    assert all(p.device.type == DEVICE.type for p in gpu.cnf.parameters())
