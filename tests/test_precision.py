r"""float32 densities against float64 and against torch.distributions, on ill-conditioned
inputs: variances at the floor, a far narrow component, data offset by 1e4, far groups of
overlapping components, and ordinary data.

The rule (issue "No silent wrong answers"): the float32 log-density of every component
family and every model, and its gradients, are within max(10 x torch.distributions' own
float32 error, 1e-3 nats) of the same density computed in float64 from the same float32
parameters. The float64 reference is contmix's own density, itself checked against
torch.distributions in float64.
"""

import copy

import pytest
import torch

from torch import Tensor
from torch.distributions import (
    Categorical,
    Independent,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

import contmix

from contmix.distributions import DiagNormal, FullNormal, GaussianMixture, LowRankNormal
from contmix.ops import logsumexp

FAMILIES = ("diag", "full", "tied", "lowrank")
CASES = ("ordinary", "floor", "outlier", "offset", "blobs")


def make_case(case: str, D: int, K: int = 8, N: int = 300, R: int = 2, seed: int = 0):
    r"""Returns float32 parameters (means, variances, loadings, Cholesky factors and
    logits) and float32 samples for an ill-conditioned case."""

    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=f64)

    var = torch.rand(K, D, generator=g, dtype=f64) + 0.5
    labels = torch.randint(K, (N,), generator=g)

    if case == "ordinary":
        loc = 2 * randn(K, D)
        x = loc[labels] + randn(N, D) * var[labels].sqrt()
    elif case == "floor":  # half the variances at the floor, samples on the means
        loc = 2 * randn(K, D)
        var[:, D // 2 :] = 1e-6
        x = loc[labels] + 1e-3 * randn(N, D)
    elif case == "outlier":  # one far narrow component, and a sample on it
        loc = randn(K, D)
        loc[0], var[0] = 1e6, 1e-3
        x = loc[1 + labels % (K - 1)] + randn(N, D)
        x[0] = loc[0] + 0.01
    elif case == "offset":
        loc = randn(K, D) + 1e4
        x = loc[labels] + randn(N, D)
    else:  # two far groups of overlapping components
        side = torch.where(torch.arange(K) % 2 == 0, 1e4, -1e4).to(f64)
        loc = side[:, None] + randn(K, D)
        x = loc[labels] + randn(N, D)

    factor = randn(K, D, R) * var.sqrt().unsqueeze(-1)
    tril = torch.linalg.cholesky(torch.diag_embed(var) + factor @ factor.mT)
    params = {"loc": loc, "var": var, "factor": factor, "tril": tril, "logits": randn(K)}

    return {k: v.float() for k, v in params.items()}, x.float()


def ours(p: dict[str, Tensor], family: str) -> GaussianMixture:
    if family == "diag":
        base = DiagNormal(p["loc"], p["var"].sqrt())
    elif family == "full":
        base = FullNormal(p["loc"], scale_tril=p["tril"])
    elif family == "tied":
        base = FullNormal(p["loc"], scale_tril=p["tril"][0])
    else:
        base = LowRankNormal(p["loc"], p["factor"], p["var"])
    return GaussianMixture(base, p["logits"])


def theirs(p: dict[str, Tensor], family: str) -> MixtureSameFamily:
    if family == "diag":
        base = Independent(Normal(p["loc"], p["var"].sqrt()), 1)
    elif family == "full":
        base = MultivariateNormal(p["loc"], scale_tril=p["tril"])
    elif family == "tied":
        base = MultivariateNormal(p["loc"], scale_tril=p["tril"][0].expand_as(p["tril"]))
    else:
        base = LowRankMultivariateNormal(p["loc"], p["factor"], p["var"])
    return MixtureSameFamily(Categorical(logits=p["logits"]), base)


NAMES = {
    "diag": ("loc", "var", "logits"),
    "full": ("loc", "tril", "logits"),
    "tied": ("loc", "tril", "logits"),
    "lowrank": ("loc", "var", "factor", "logits"),
}


def evaluate(build, p: dict[str, Tensor], family: str, x: Tensor):
    r"""The log-densities and the gradients of a weighted sum of them with respect to
    the parameters, in float64."""

    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    log_p = build(leaves, family).log_prob(x)
    weights = torch.linspace(0.5, 1.5, len(x), dtype=log_p.dtype)
    grads = torch.autograd.grad((weights * log_p).sum(), [leaves[n] for n in NAMES[family]])

    return log_p.detach().double(), [g.double() for g in grads]


def check(family: str, p: dict[str, Tensor], x: Tensor) -> None:
    wide = {k: v.double() for k, v in p.items()}
    ref, ref_grads = evaluate(ours, wide, family, x.double())
    torch64, _ = evaluate(theirs, wide, family, x.double())
    assert torch.allclose(ref, torch64, rtol=1e-9, atol=1e-6), "the float64 reference"

    log_p, grads = evaluate(ours, p, family, x)
    torch_log_p, torch_grads = evaluate(theirs, p, family, x)

    error, torch_error = (log_p - ref).abs().max(), (torch_log_p - ref).abs().max()
    assert error <= max(10 * torch_error, 1e-3), f"log_prob off by {error:.3g}"

    for name, g, t, r in zip(NAMES[family], grads, torch_grads, ref_grads, strict=True):
        error, torch_error = (g - r).abs().max(), (t - r).abs().max()
        scale = 1e-3 * max(1.0, float(r.abs().max()))  # nats per unit of the parameter
        assert error <= max(10 * torch_error, scale), f"gradient of {name} off by {error:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("D", [2, 16])
def test_families(family: str, case: str, D: int):
    check(family, *make_case(case, D))


@pytest.mark.parametrize("family", ["diag", "lowrank"])
@pytest.mark.parametrize("case", CASES)
def test_families_784(family: str, case: str):
    check(family, *make_case(case, D=784, K=16, N=200))


@pytest.mark.parametrize("family", FAMILIES)
def test_families_few_samples(family: str):
    r"""Fewer samples than components: the differences are formed directly."""

    p, x = make_case("floor", D=16, K=40)
    check(family, p, x[:10])


def test_issue_outlier_gmm():
    r"""The issue's first case: a diagonal GMM with a component on an outlier at 1e6."""

    torch.manual_seed(0)
    x = torch.randn(200, 2)
    x[:100] -= 3
    x[100:] += 3
    x[7] = 1e6
    m = contmix.GMM(2, components=3, covariance_type="diagonal")
    m.initialize(x, strategy="kmeans")
    xt = torch.randn(4, 2) + 3

    log_p = m().log_prob(xt).double()
    ref = copy.deepcopy(m).double()().log_prob(xt.double())

    assert (log_p - ref).abs().max() < 1e-4
    assert (ref < 0).all()  # was +16381


def test_issue_mfa_784():
    r"""The issue's second case: an MFA started on random samples in 784-D, whose
    components hold their own samples with variances near the floor."""

    torch.manual_seed(0)
    x = torch.logit(0.05 + 0.9 * torch.rand(300, 784, dtype=torch.float64))
    m = contmix.MFA(784, components=100, rank=2).double()
    m.initialize(x, strategy="random")
    ref = m().log_prob(x)

    d = m.float()()
    log_p = d.log_prob(x.float()).double()
    base = LowRankMultivariateNormal(d.base.loc, d.base.cov_factor, d.base.cov_diag)
    torch_log_p = MixtureSameFamily(Categorical(logits=d.logits), base).log_prob(x.float())

    torch_error = (torch_log_p.double() - ref).abs().max()
    assert (log_p - ref).abs().max() <= max(10 * torch_error, 1e-3)  # was 400 nats


@pytest.mark.parametrize("D", [16, 784])
def test_samples_the_loadings_explain(D: int):
    r"""Samples drawn along the loadings of components whose diagonals are at the floor:
    the two terms of the Woodbury distance are about 1e8 and their difference a few
    nats. float32 must give the float64 density of the same float32 parameters, to
    1e-3 nats, also for the gradients' sake; torch's own float32 density is tens of
    nats off here (or its Cholesky decomposition fails)."""

    g = torch.Generator().manual_seed(0)
    K, R, N = 4, 2, 200
    loc = torch.randn(K, D, generator=g)
    factor = torch.randn(K, D, R, generator=g)
    diag = torch.full((K, D), 1e-6)
    labels = torch.randint(K, (N,), generator=g)
    w = torch.randn(N, R, 1, generator=g)
    x = loc[labels] + (factor[labels] @ w).squeeze(-1) + 1e-3 * torch.randn(N, D, generator=g)

    d = GaussianMixture(LowRankNormal(loc, factor, diag), torch.zeros(K))
    ref = wide(d).log_prob(x.double())
    log_p = d.log_prob(x)

    assert log_p.dtype == torch.float32
    assert ((log_p.double() - ref).abs() <= 1e-3 + 2**-22 * ref.abs()).all()  # was 50 nats


def wide(d):
    r"""The same distribution with float64 parameters."""

    if isinstance(d, GaussianMixture):
        return GaussianMixture(wide(d.base), d.logits.double())
    if isinstance(d, LowRankNormal):
        return LowRankNormal(d.loc.double(), d.cov_factor.double(), d.cov_diag.double())
    if isinstance(d, FullNormal):
        return FullNormal(d.loc.double(), scale_tril=d.scale_tril.double())
    return DiagNormal(d.base_dist.loc.double(), d.base_dist.scale.double())


def hard_data(kind: str, D: int = 4, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, D, generator=g)
    x[:200] -= 3
    x[200:] += 3
    if kind == "outlier":
        x[7] = 1e6
        x[8] = 1e4
    elif kind == "offset":
        x = x + 1e4
    elif kind == "constant":  # features at the variance floor
        x[:, D // 2 :] = 0.5
        x[:100, 0] = 1.0
    return x


def model_check(model, x: Tensor, c: Tensor | None = None) -> None:
    with torch.no_grad():
        d = model() if c is None else model(c)
        log_p = d.log_prob(x).double()
        ref = wide(d).log_prob(x.double())
    assert torch.isfinite(ref).all()
    assert (log_p - ref).abs().max() <= 1e-3 + 1e-7 * ref.abs().max()


MODELS = {
    "gmm-full": lambda D: contmix.GMM(D, components=6),
    "gmm-diag": lambda D: contmix.GMM(D, components=6, covariance_type="diagonal"),
    "gmm-spherical": lambda D: contmix.GMM(D, components=6, covariance_type="spherical"),
    "gmm-tied": lambda D: contmix.GMM(D, components=6, tied=True),
    "mfa": lambda D: contmix.MFA(D, components=6, rank=2),
    "hmfa": lambda D: contmix.HierarchicalMFA(D, groups=2, components=3, rank=1),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind", ["outlier", "offset", "constant"])
def test_models(name: str, kind: str):
    x = hard_data(kind)
    model = MODELS[name](x.shape[-1])
    model.initialize(x, strategy="kmeans")
    model_check(model, x)
    model_check(model, x[:5])  # fewer samples than components


@pytest.mark.parametrize("model", ["cpmm", "hcpmm"])
def test_continuous_models(model: str):
    x = hard_data("offset", D=2)
    torch.manual_seed(0)
    if model == "cpmm":
        m = contmix.CPMM(2, components=6)
    else:
        m = contmix.HierarchicalCPMM(2, trajectories=2, components=3)
    m.initialize(x, strategy="kmeans")
    model_check(m, x)


def test_mixture_of_mixtures():
    r"""Samples against a batch of mixtures: all components of all mixtures at once."""

    p, x = make_case("outlier", D=8, K=8)
    inner = GaussianMixture(
        LowRankNormal(
            p["loc"].unflatten(0, (2, 4)),
            p["factor"].unflatten(0, (2, 4)),
            p["var"].unflatten(0, (2, 4)),
        ),
        p["logits"].unflatten(0, (2, 4)),
    )
    outer = GaussianMixture(inner, torch.zeros(2))
    log_p = outer.log_prob(x).double()
    ref = wide(outer).log_prob(x.double())
    assert (log_p - ref).abs().max() < 1e-3


def test_conditional_models():
    r"""A context per sample: each sample has mixtures of its own."""

    x = hard_data("offset")
    c = torch.randn(len(x), 3)
    model = contmix.MFA(4, context=3, components=3, rank=1)
    model.initialize(x, strategy="kmeans")
    model_check(model, x, c)


def test_capacitance_at_the_floor():
    r"""I + A^T D^-1 A with D at its floor is factored without a Cholesky failure."""

    torch.manual_seed(0)
    factor = torch.randn(5, 100, 4)
    diag = torch.full((5, 100), 1e-6)
    diag[:, :10] = 1.0
    d = LowRankNormal(torch.zeros(5, 100), factor, diag)
    ref = LowRankMultivariateNormal(
        torch.zeros(5, 100, dtype=torch.float64), factor.double(), diag.double()
    )
    x = torch.randn(20, 1, 100)
    log_p = d.log_prob(x).double()
    assert torch.allclose(log_p, ref.log_prob(x.double()), rtol=1e-5)


def test_logsumexp_gradient():
    x = torch.tensor([[0.0, -1.0, -100.0, -1e4]], requires_grad=True)
    y = logsumexp(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    reference = torch.softmax(x.detach(), dim=-1)

    assert torch.allclose(y, torch.logsumexp(x, dim=-1))
    assert torch.allclose(grad, reference)
    tiny = torch.finfo(grad.dtype).tiny
    assert not ((grad != 0) & (grad.abs() < tiny)).any()  # no subnormal numbers
