r"""A battery of bad inputs thrown at every public entry point of every model.

Each case ends either in a correct result, checked against a reference (a jittered
refit, a unit-scale fit, a clean input, an independent model), or in a clear
:class:`ValueError` / :class:`TypeError` whose message names the problem, raised before
any parameter changes. Nothing may end in NaN parameters or a silent wrong answer.
"""

import copy
import math

import pytest
import torch
import zuko

from data import TWO, blobs
from helpers import unchanged
from models import CONTEXTUAL, MODELS, ODES, VECTORS, build
from models import initialize_kwargs as init_kwargs
from torch import Tensor

from contmix import CPMM, CWM, GMM, HierarchicalCPMM, Solver
from contmix.curriculum import Curriculum, Settings, Spaces

D = 2

CASES = [(name, s) for name in VECTORS for s in MODELS[name].strategies]


def make(name: str, dtype: torch.dtype = torch.float32, **kwargs):
    return build(name, D, **kwargs).to(dtype)


def data(dtype: torch.dtype = torch.float32, n: int = 30) -> Tensor:
    r"""Two blobs in 2-D."""

    return blobs(TWO, n, seed=1)[0].to(dtype)


def assert_finite(model: torch.nn.Module) -> None:
    for k, v in model.state_dict().items():
        assert torch.isfinite(v).all(), f"{k} is not finite"


def fitted(name: str, dtype=torch.float32, context: int = 0):
    model = make(name, dtype, context=context)
    model.initialize(data(dtype), strategy=MODELS[name].strategies[0], **init_kwargs(name))
    return model.eval()


# constructors


SIZES = {
    "gmm-full": ("components",),
    "mfa": ("components", "rank"),
    "cwm-diagonal": ("components",),
    "hmfa": ("groups", "components", "rank"),
    "cpmm": ("components", "rank"),
    "hcpmm": ("trajectories", "components", "rank"),
}


@pytest.mark.parametrize("value", [0, -1, 1.5])
@pytest.mark.parametrize(
    "name, size", [(name, size) for name, sizes in SIZES.items() for size in sizes]
)
def test_constructor_sizes(name, size, value):
    with pytest.raises(ValueError, match=rf"{size} must be an integer of at least 1, got"):
        MODELS[name].cls(D, **{size: value})

    with pytest.raises(ValueError, match=r"features must be an integer of at least 1"):
        MODELS[name].cls(0)

    with pytest.raises(ValueError, match=r"context must be an integer of at least 0"):
        MODELS[name].cls(D, context=-1)


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: GMM(D, covariance_type="tied"), r"Unknown covariance type 'tied'"),
        (lambda: CWM(D, maps="spline"), r"Unknown maps 'spline'"),
        (lambda: CPMM(D, solver=Solver("euler-maruyama")), r"Unknown method 'euler-maruyama'"),
        (lambda: CPMM(D, activation="relu"), r"Unknown activation 'relu'"),
        (lambda: HierarchicalCPMM(D, activation="relu"), r"Unknown activation 'relu'"),
    ],
)
def test_constructor_unknown(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


# initialize: errors before any change


def _nan(x: Tensor) -> Tensor:
    x = x.clone()
    x[3, 1] = float("nan")
    return x


def _inf(x: Tensor) -> Tensor:
    x = x.clone()
    x[5, 0] = -float("inf")
    return x


BAD_SAMPLES = {
    "features": (lambda x, n: torch.cat((x, x[:, :1]), dim=1), ValueError, r"shape \(N, 2\)"),
    "vector": (lambda x, n: x[:, 0], ValueError, r"shape \(N, 2\)"),
    "batched": (lambda x, n: x.unsqueeze(0), ValueError, r"shape \(N, 2\)"),
    "nan": (lambda x, n: _nan(x), ValueError, r"NaN or Inf in 1 rows \(first: \[3\]\)"),
    "inf": (lambda x, n: _inf(x), ValueError, r"NaN or Inf in 1 rows \(first: \[5\]\)"),
    "empty": (lambda x, n: x[:0], ValueError, r"x has 0 samples but at least"),
    "too-few": (lambda x, n: x[:n], ValueError, r"samples but at least \d+ are needed"),
    "integer": (lambda x, n: x.round().long(), TypeError, r"float32 or float64, got torch.int64"),
    "float16": (lambda x, n: x.half(), TypeError, r"float32 or float64, got torch.float16"),
    "list": (lambda x, n: x.tolist(), TypeError, r"must be a torch.Tensor, got list"),
    "numpy": (lambda x, n: x.numpy(), TypeError, r"must be a torch.Tensor, got ndarray"),
    "meta": (lambda x, n: x.to("meta"), ValueError, r"x is on meta but the model is on cpu"),
    "tiny": (lambda x, n: 1e-8 * x, ValueError, r"variance of x is at most .* standardize x"),
    "all-constant": (lambda x, n: 0 * x + 1, ValueError, r"variance of x is at most 0 per"),
}


# one model of each family, and those with an EM method (em)
FAMILIES = ["gmm-full", "mfa", "cwm-affine", "hmfa", "cpmm", "hcpmm"]
EM = [name for name in FAMILIES if hasattr(MODELS[name].cls, "em")]

# initialize with every strategy of the models of vectors, initialize with the default
# strategy of the conditional models, and em: (name, context, entry, strategy)
FITS = [
    *[(name, 0, "initialize", strategy) for name, strategy in CASES],
    *[(name, 2, "initialize", None) for name in CONTEXTUAL],
    *[(name, 0, "em", None) for name in EM],
]


def run_fit(model, name: str, entry: str, x, strategy: str | None = None, **kwargs):
    r"""``model.em(x)``, or ``model.initialize(x)`` with ``strategy`` unless None (the
    default) and a few gradient steps for the ODE models."""

    if entry == "em":
        return model.em(x, **kwargs)
    if strategy is not None:
        kwargs["strategy"] = strategy
    return model.initialize(x, **{**init_kwargs(name), **kwargs})


@pytest.mark.parametrize("bad", BAD_SAMPLES)
@pytest.mark.parametrize("name, context, entry, strategy", FITS)
def test_fit_bad_samples(name, context, entry, strategy, bad):
    model = make(name, context=context)
    transform, error, pattern = BAD_SAMPLES[bad]
    x = transform(data(), MODELS[name].few)

    with unchanged(model), pytest.raises(error, match=pattern):
        run_fit(model, name, entry, x, strategy)


# the other arguments of initialize, the last six also of em: (keyword arguments, error,
# message)
BAD_ARGUMENTS = {
    "n_init-0": ({"n_init": 0}, ValueError, r"n_init must be an integer of at least 1"),
    "n_init-1.5": ({"n_init": 1.5}, ValueError, r"n_init must be an integer of at least 1"),
    "generator": ({"generator": 1}, TypeError, r"generator must be a torch.Generator"),
    "steps": ({"steps": -1}, ValueError, r"steps must be an integer of at least 0"),
    "lr-0": ({"lr": 0.0}, ValueError, r"lr must be a positive finite number"),
    "lr-negative": ({"lr": -1e-2}, ValueError, r"lr must be a positive finite number"),
    "lr-nan": ({"lr": math.nan}, ValueError, r"lr must be a positive finite number"),
    "lr-inf": ({"lr": math.inf}, ValueError, r"lr must be a positive finite number"),
    "progress": ({"progress": "yes"}, TypeError, r"progress must be True, False or None"),
    "reg-negative": ({"reg": -1.0}, ValueError, r"reg must be a finite number of at least"),
    "reg-nan": ({"reg": math.nan}, ValueError, r"reg must be a finite number of at least"),
    "tol-negative": ({"tol": -1.0}, ValueError, r"tol must be a finite number of at least"),
    "tol-nan": ({"tol": math.nan}, ValueError, r"tol must be a finite number of at least"),
    "max_iter": ({"max_iter": 0}, ValueError, r"max_iter must be an integer of at least 1"),
}
EM_ARGUMENTS = list(BAD_ARGUMENTS)[-6:]
ODE_ARGUMENTS = list(BAD_ARGUMENTS)[:-5]  # the ODE models take no reg, tol or max_iter
ARGUMENT_CASES = [
    *[(n, "initialize", bad) for n in FAMILIES if not MODELS[n].ode for bad in BAD_ARGUMENTS],
    *[(n, "initialize", bad) for n in FAMILIES if MODELS[n].ode for bad in ODE_ARGUMENTS],
    *[(n, "em", bad) for n in EM for bad in EM_ARGUMENTS],
]


@pytest.mark.parametrize("name, entry, bad", ARGUMENT_CASES)
def test_fit_bad_arguments(name, entry, bad):
    model = make(name)
    kwargs, error, pattern = BAD_ARGUMENTS[bad]
    strategy = MODELS[name].strategies[0] if MODELS[name].ode else "em"

    with unchanged(model), pytest.raises(error, match=pattern):
        run_fit(model, name, entry, data(), strategy, **kwargs)
    assert model.fit_report is None


@pytest.mark.parametrize("name", EM)
def test_em_conditional(name):
    model = make(name, context=2)

    with unchanged(model), pytest.raises(ValueError, match=r"em\(\) fits an unconditional"):
        model.em(data())


@pytest.mark.parametrize("name, context", [(n, 0) for n in VECTORS] + [(n, 2) for n in CONTEXTUAL])
def test_initialize_unknown_strategy(name, context):
    model = make(name, context=context)

    with unchanged(model), pytest.raises(ValueError, match=r"Unknown strategy 'spectral'") as info:
        model.initialize(data(), strategy="spectral")
    assert all(repr(s) in str(info.value) for s in MODELS[name].strategies)  # the choices


@pytest.mark.parametrize("name", FAMILIES)
def test_initialize_dtype_mismatch(name):
    r"""float64 data into a float32 model: an error for the ODE models, a float32 fit
    equal to the fit of the data cast to float32 for the others."""

    model = make(name)
    x = data(torch.float64)

    if MODELS[name].ode:
        with unchanged(model), pytest.raises(TypeError, match=r"x is torch.float64 but the"):
            model.initialize(x, **init_kwargs(name))
        return

    torch.manual_seed(2)
    model.initialize(x)
    reference = make(name)
    torch.manual_seed(2)
    reference.initialize(x.float())

    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.allclose(v, reference.state_dict()[k], rtol=1e-4, atol=1e-4), k


@pytest.mark.parametrize("name", [n for n in VECTORS if MODELS[n].hierarchical])
@pytest.mark.parametrize(
    "labels, error, pattern",
    [
        (lambda n: torch.zeros(n), TypeError, r"integer tensor of labels"),
        (lambda n: torch.zeros(n - 1, dtype=torch.long), ValueError, r"one label per sample"),
        (lambda n: torch.arange(n) % 3, ValueError, r"y must lie in \[0, 2\)"),
        (lambda n: torch.zeros(n, dtype=torch.long), ValueError, r"labels \[1\] have no samples"),
    ],
)
def test_initialize_bad_labels(name, labels, error, pattern):
    model = make(name)
    x = data()

    with unchanged(model), pytest.raises(error, match=pattern):
        model.initialize(x, y=labels(len(x)), **init_kwargs(name))


# initialize: degenerate data gives a correct result


def marginal_log_prob(model, x: Tensor, dims: list[int]) -> Tensor:
    return model().marginal(dims).log_prob(x[:, dims])


def fit(name, x, strategy, seed=3, dtype=torch.float64, model_kwargs=None, **kwargs):
    model = make(name, dtype, **(model_kwargs or {}))
    torch.manual_seed(seed)
    model.initialize(x, strategy=strategy, **{**init_kwargs(name), **kwargs})
    return model.eval()


@pytest.mark.parametrize("name, strategy", CASES)
def test_initialize_constant_feature(name, strategy):
    r"""A constant feature: finite parameters, and on the other feature the density of
    the fit without the constant feature (which carries no information), or for the ODE
    models, of the fit of a copy whose constant feature is jittered."""

    x = data(torch.float64)
    constant = torch.cat((x[:, :1], torch.full_like(x[:, :1], 2.5)), dim=1)

    kwargs = {"tol": 1e-9, "max_iter": 1000} if strategy in ("fa", "em") else {}
    model = fit(name, constant, strategy, **kwargs)
    assert_finite(model)
    assert torch.isfinite(model().log_prob(constant)).all()

    if not MODELS[name].mixture:
        # a CWM starts as the Gaussian mixture fitted by the same steps
        covariance = "full" if name == "cwm-affine" else "diagonal"
        gmm = GMM(D, components=3, covariance_type=covariance).double()
        torch.manual_seed(3)
        gmm.initialize(constant, strategy=strategy, **kwargs)
        expected = gmm().log_prob(constant)
        assert torch.allclose(model().log_prob(constant), expected, atol=1e-6)
        return

    lp = marginal_log_prob(model, x, [0])

    if MODELS[name].ode:
        jittered = constant.clone()
        jittered[:, 1] += 1e-5 * torch.randn(len(x), generator=torch.Generator().manual_seed(4))
        expected = marginal_log_prob(fit(name, jittered, strategy), x, [0])
        assert torch.allclose(lp, expected, atol=1e-3), (lp - expected).abs().max()
        return

    reference = build(name, 1).double()  # the same model of the other feature
    torch.manual_seed(3)
    reference.initialize(x[:, :1], strategy=strategy, **kwargs)

    if "spherical" in name:
        # one variance for both features: the mean of the 1-D variance and of 0, each
        # regularized by reg (EM's responsibilities then differ: only finiteness)
        if strategy != "em":
            var, expected = model().base.variance[..., 0], reference().base.variance[..., 0]
            assert torch.allclose(2 * var - 1e-6, expected, rtol=1e-6)
        return

    expected = reference().log_prob(x[:, :1])
    # MFA's random loadings are drawn with another shape: they differ a little
    atol = 5e-2 if name == "mfa" and strategy not in ("fa", "em") else 1e-6
    assert torch.allclose(lp, expected, atol=atol), (lp - expected).abs().max()


@pytest.mark.parametrize("name, strategy", CASES)
def test_initialize_duplicated_points(name, strategy):
    r"""Ten more samples are copies of one: finite parameters, and on the other samples
    about the density of the fit of a jittered copy."""

    x = data(torch.float64)
    duplicated = torch.cat((x, x[:1].expand(10, D)))
    jittered = duplicated.clone()
    jittered[len(x) :] += 1e-6 * torch.randn(10, D, generator=torch.Generator().manual_seed(5))

    model = fit(name, duplicated, strategy)
    assert_finite(model)
    lp = model().log_prob(duplicated)
    assert torch.isfinite(lp).all()

    reference = fit(name, jittered, strategy)
    expected = reference().log_prob(jittered)
    assert torch.allclose(lp[: len(x)], expected[: len(x)], atol=1e-2, rtol=1e-3)


# numerical terms of each model that must scale with the data (variances scale with s^2)
SCALED = {
    "gmm": lambda s: ({"epsilon": 1e-6 * s}, {"reg": 1e-6 * s**2}),
    "cwm": lambda s: ({"epsilon": 1e-6 * s}, {"reg": 1e-6 * s**2}),
    "mfa": lambda s: ({"epsilon": 1e-6 * s**2}, {"reg": 1e-6 * s**2}),
    "hmfa": lambda s: ({"epsilon": 1e-6 * s**2}, {"reg": 1e-6 * s**2}),
    "cpmm": lambda s: ({"epsilon": 1e-6 * s**2, "log_diag_min": -6 + 2 * math.log(s)}, {}),
    "hcpmm": lambda s: ({"epsilon": 1e-6 * s**2, "log_diag_min": -6 + 2 * math.log(s)}, {}),
}


@pytest.mark.parametrize("scale", [1e-8, 1e8])
@pytest.mark.parametrize("name, strategy", CASES)
def test_initialize_extreme_scales(name, strategy, scale):
    r"""With the numerical terms scaled alike, the fit is equivariant:
    :math:`\log p_s(s x) = \log p_1(x) - D \log s`. Without (``scale=1e-8`` and
    defaults), the data is below what the model can represent: a clear error."""

    x = data(torch.float64)
    scaled = SCALED[MODELS[name].family]
    (model_kwargs, kwargs), (unit_model_kwargs, unit_kwargs) = scaled(scale), scaled(1.0)
    if MODELS[name].ode:
        if scale < 1:
            # the dynamics move the states by O(1e-2) in absolute units: at this scale a
            # CPMM is not equivariant, only the error of the default floor is checked
            model = make(name, torch.float64)
            with unchanged(model), pytest.raises(ValueError, match=r"below .* or lower log_diag"):
                model.initialize(scale * x, strategy=strategy, **init_kwargs(name))
            return
        kwargs = unit_kwargs = {"steps": 0}  # Adam's steps are not scale-equivariant

    model = fit(name, scale * x, strategy, model_kwargs=model_kwargs, **kwargs)
    reference = fit(name, x, strategy, model_kwargs=unit_model_kwargs, **unit_kwargs)
    assert_finite(model)

    lp = model().log_prob(scale * x)
    expected = reference().log_prob(x) - D * math.log(scale)
    # the dynamics of a CPMM see states of another scale: nearly equivariant only
    atol, rtol = (0.1, 1e-2) if MODELS[name].ode else (1e-4, 1e-6)
    assert torch.allclose(lp, expected, atol=atol, rtol=rtol), (lp - expected).abs().max()

    if scale < 1:
        model = make(name, torch.float64)
        with unchanged(model), pytest.raises(ValueError, match=r"below .* the smallest variance"):
            model.initialize(scale * x, strategy=strategy, **init_kwargs(name))


# forward, log_prob, sample, posterior, marginal, condition


def models(context: int = 0):
    names = CONTEXTUAL if context else VECTORS
    return [pytest.param(name, context, id=f"{name}-c{context}") for name in names]


ALL = models(0) + models(2)


def distribution(model, n: int = 6):
    c = torch.randn(n, model.context) if model.context else None
    return model(c)


# float32 values of one entry point reached through another memory layout or batch shape
# (a strided view against a contiguous clone, one sample against six, a batch with a NaN
# row) may take other BLAS kernels: they agree to rounding, not bit for bit. The log-
# densities are sums and differences of terms of tens of nats, eps * 50 = 6e-6, and can
# themselves be near 0 (a conditional, a log-posterior), so a relative tolerance alone is
# not enough: measured up to 1.1e-5 nats apart (hmfa, condition), while a wrong row is off
# by O(1) and a NaN that spreads fails. test_float32_agrees_with_float64 checks the bound.
ATOL, RTOL = 1e-4, 1e-5


def close(a: Tensor, b: Tensor, factor: float = 1.0) -> bool:
    r"""Whether float32 results of two code paths agree up to float32 rounding."""

    return torch.allclose(a, b.to(a.dtype), rtol=factor * RTOL, atol=factor * ATOL)


@pytest.mark.parametrize("name, context", ALL)
def test_log_prob_inputs(name, context):
    model = fitted(name, context=context)
    x = data()[::10]  # 6 samples
    d = distribution(model)
    lp = d.log_prob(x)
    assert lp.shape == (6,) and torch.isfinite(lp).all()

    with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\), got \(6, 3\)"):
        d.log_prob(torch.cat((x, x[:, :1]), dim=1))
    with pytest.raises(TypeError, match=r"x is torch.float64 but the distribution is"):
        d.log_prob(x.double())
    with pytest.raises(ValueError, match=r"x is on meta but the distribution is on cpu"):
        d.log_prob(x.to("meta"))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        d.log_prob(x.tolist())

    # integers and float16 are promoted: the same as the float32 values
    integer = x.round().long()
    assert close(d.log_prob(integer), d.log_prob(integer.float()))
    assert close(d.log_prob(x.half()), d.log_prob(x.half().float()))

    # NaN and Inf stay in their rows (log p = NaN or -inf there), the others unchanged
    bad = x.clone()
    bad[1, 0], bad[4, 1] = float("nan"), float("inf")
    lp_bad = d.log_prob(bad)
    assert not torch.isfinite(lp_bad[[1, 4]]).any()
    keep = [0, 2, 3, 5]
    assert close(lp_bad[keep], lp[keep])

    # a single sample and duplicated samples
    if not context:
        assert close(d.log_prob(x[2]), lp[2])
        assert close(d.log_prob(x[[2, 2, 2]]), lp[2].expand(3))


@pytest.mark.parametrize("name, context", models(0))
def test_log_prob_empty(name, context):
    model = fitted(name)
    lp = model().log_prob(data()[:0])
    assert lp.shape == (0,)


@pytest.mark.parametrize("name, context", ALL)
def test_sample(name, context):
    model = fitted(name, context=context)
    d = distribution(model, 3)
    batch = (3,) if context else ()

    x = d.sample((5,))
    assert x.shape == (5, *batch, D) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert d.sample((0,)).shape == (0, *batch, D)

    with pytest.raises(ValueError, match=r"sample shape must be non-negative, got \(-1,\)"):
        d.sample((-1,))


@pytest.mark.parametrize("name, context", ALL)
def test_posterior_and_predict(name, context):
    model = fitted(name, context=context)
    x = data()[::10]
    d = distribution(model)

    log_post = d.posterior(x)
    assert torch.allclose(log_post.exp().sum(dim=-1), torch.ones(6))
    assert torch.equal(d.predict(x), log_post.argmax(dim=-1))

    with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\)"):
        d.posterior(x[:, :1])
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\)"):
        d.predict(x[:, :1])

    bad = x.clone()
    bad[2] = float("nan")
    log_bad = d.posterior(bad)
    assert torch.isnan(log_bad[2]).all()
    assert close(log_bad[[0, 1, 3, 4, 5]], log_post[[0, 1, 3, 4, 5]])

    if hasattr(model, "predict_proba"):
        c = torch.randn(6, model.context) if model.context else None
        proba = model.predict_proba(x, c)
        assert torch.allclose(proba.sum(dim=-1), torch.ones(6))
        with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\)"):
            model.predict_proba(x[:, :1], c)
        with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\)"):
            model.predict(x[:, :1], c)


MIXTURES = [p for p in ALL if MODELS[p.values[0]].mixture]


@pytest.mark.parametrize("name, context", MIXTURES)
def test_marginal_and_condition(name, context):
    model = fitted(name, context=context)
    x = data()[::10]
    d = distribution(model)

    for dims, pattern in [
        ([2], r"Dimensions must lie in \[-2, 2\)"),
        ([0, 0], r"Dimensions must not repeat"),
        ([], r"At least one dimension"),
        (torch.tensor([True]), r"boolean mask of dimensions must have shape \(2,\)"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            d.marginal(dims)
    with pytest.raises(TypeError, match=r"Dimensions must be integers or a boolean mask"):
        d.marginal([0.5])

    with pytest.raises(ValueError, match=r"value must have shape \(\*, 1\), got \(6, 2\)"):
        d.condition([0], x)
    with pytest.raises(ValueError, match=r"value is on meta but the distribution is on cpu"):
        d.condition([0], x[:, :1].to("meta"))
    with pytest.raises(TypeError, match=r"value is torch.float64 but the distribution is"):
        d.condition([0], x[:, :1].double())

    # a NaN observation: NaN in its row only
    value = x[:, :1].clone()
    value[3] = float("nan")
    lp = d.condition([0], value).log_prob(x[:, 1:])
    clean = d.condition([0], x[:, :1]).log_prob(x[:, 1:])
    assert torch.isnan(lp[3]) and close(lp[[0, 1, 2, 4, 5]], clean[[0, 1, 2, 4, 5]])
    assert torch.isfinite(d.marginal([1]).log_prob(x[:, 1:])).all()


@pytest.mark.parametrize("name, context", ALL)
def test_float32_agrees_with_float64(name, context):
    r"""Every float32 entry point is within half the tolerance of :func:`close` of the
    same model in float64: two float32 code paths then agree within :func:`close`
    (measured at most 0.13 of it, on CPUs with and without AVX-512)."""

    model = fitted(name, context=context)
    double = copy.deepcopy(model).double()
    x = data()
    c = torch.randn(len(x), context) if context else None
    d, d64 = model(c), double(None if c is None else c.double())
    y = x.double()

    densities = [(d.log_prob(x), d64.log_prob(y))]
    if MODELS[name].mixture:
        marginal = d.marginal([1]).log_prob(x[:, 1:])
        conditional = d.condition([0], x[:, :1]).log_prob(x[:, 1:])
        densities.append((marginal, d64.marginal([1]).log_prob(y[:, 1:])))
        densities.append((conditional, d64.condition([0], y[:, :1]).log_prob(y[:, 1:])))

    for single, reference in [*densities, (d.posterior(x), d64.posterior(y))]:
        assert single.dtype == torch.float32
        error = (single.double() - reference).abs().max()
        assert close(single.double(), reference, factor=0.5), error

    for single, reference in densities:  # and a density wrong by 1e-3 nats fails
        assert reference.abs().max() < 50
        assert not close(single.double() + 1e-3, reference)


BAD_CONTEXTS = [  # for a model with context=2: (context, error, message)
    (None, ValueError, r"needs a context c with shape \(\*, 2\)"),
    (torch.randn(3, 3), ValueError, r"context c must have shape \(\*, 2\), got \(3, 3\)"),
    (torch.tensor(1.0), ValueError, r"context c must have shape \(\*, 2\), got \(\)"),
    (torch.ones(3, 2, dtype=torch.long), TypeError, r"floating point tensor, got torch.int64"),
    (torch.ones(3, 2).half(), TypeError, r"c is torch.float16 but the model is torch.float32"),
    (torch.ones(3, 2).double(), TypeError, r"c is torch.float64 but the model is"),
    (torch.ones(3, 2, device="meta"), ValueError, r"c is on meta but the model is on cpu"),
    ([[1.0, 2.0]], TypeError, r"context c must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("name, context", ALL)
def test_context(name, context):
    model = fitted(name, context=context)

    with unchanged(model):
        if not context:  # ignored, as zuko's unconditional distributions do
            x = data(torch.float32)
            assert close(model(torch.randn(3, 2)).log_prob(x), model().log_prob(x))
            return

        for c, error, pattern in BAD_CONTEXTS:
            with pytest.raises(error, match=pattern):
                model(c)

        # NaN or Inf in a context would spread to the whole batch: a clear error
        for value in (float("nan"), float("inf")):
            c = torch.randn(4, 2)
            c[1, 0] = value
            with pytest.raises(ValueError, match=r"context c contains NaN or Inf"):
                model(c)


@pytest.mark.parametrize("name", ODES)
@pytest.mark.parametrize("context", [0, 2])
def test_extract(name, context):
    model = fitted(name, context=context)
    x = data()[::10]
    c = torch.randn(context) if context else None

    extracted = model.extract(c=c)
    assert close(extracted().log_prob(x), model(c).log_prob(x))

    for components in (0, -2):
        with pytest.raises(
            ValueError, match=rf"components must be an integer .*, got {components}"
        ):
            model.extract(components, c=c)

    if context:
        for bad in (None, torch.randn(3, 2)):
            with pytest.raises(ValueError, match=r"needs one context c with shape \(2,\)"):
                model.extract(c=bad)
        with pytest.raises(ValueError, match=r"context c must have shape \(\*, 2\), got \(3,\)"):
            model.extract(c=torch.randn(3))
        with pytest.raises(ValueError, match=r"context c contains NaN or Inf"):
            model.extract(c=torch.tensor([0.0, float("nan")]))
    else:
        with pytest.raises(ValueError, match=r"has no context"):
            model.extract(c=torch.randn(2))


@pytest.mark.parametrize("name", ["gmm-full", "mfa", "cwm-affine", "hmfa", "cpmm"])
def test_device_mismatch(name, accelerator):
    model = make(name).to(accelerator)

    with unchanged(model), pytest.raises(ValueError, match=r"x is on cpu but the model is on"):
        model.initialize(data(), **init_kwargs(name))

    with pytest.raises(
        ValueError, match=rf"x is on cpu but the distribution is on {accelerator.type}"
    ):
        model().log_prob(data())


# curriculum


def curriculum(context: int = 0) -> Curriculum:
    torch.manual_seed(0)
    cnf = zuko.flows.CNF(D, context, hidden_features=(8,), atol=1e-4, rtol=1e-3)
    return Curriculum(cnf, context)


NO_FINETUNING = Settings(finetune_epochs=0)

CURRICULUM_BAD = {
    k: BAD_SAMPLES[k] for k in BAD_SAMPLES if k not in ("too-few", "tiny", "all-constant")
}
CURRICULUM_BAD["empty"] = (lambda x, n: x[:0], ValueError, r"x has 0 samples but at least 1")


@pytest.mark.parametrize("bad", CURRICULUM_BAD)
@pytest.mark.parametrize("entry", ["spaces", "fit_teacher", "train", "transform"])
def test_curriculum_bad_samples(entry, bad):
    cur = curriculum()
    model = make("gmm-full")
    transform, error, pattern = CURRICULUM_BAD[bad]
    x = transform(data(), 0)

    call = {
        "spaces": lambda: cur.spaces(x, steps=3),
        "fit_teacher": lambda: cur.fit_teacher(x, epochs=1, progress=False),
        "train": lambda: cur.train(model, x, settings=NO_FINETUNING, progress=False),
        "transform": lambda: cur.transform(x, 0.5),
    }[entry]

    with unchanged(cur.cnf, model), pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("entry", ["spaces", "fit_teacher", "train"])
def test_curriculum_context(entry):
    x = data()
    calls = {
        "spaces": lambda cur, c: cur.spaces(x, c, steps=3),
        "fit_teacher": lambda cur, c: cur.fit_teacher(x, c, epochs=1, progress=False),
        "train": lambda cur, c: cur.train(
            make("gmm-full", context=2), x, c, settings=NO_FINETUNING, progress=False
        ),
    }

    cur = curriculum()
    with unchanged(cur.cnf), pytest.raises(ValueError, match=r"has no context \(context=0\)"):
        calls[entry](cur, torch.randn(len(x), 2))

    cur = curriculum(context=2)
    for c, error, pattern in [
        (None, ValueError, r"needs a context c with shape \(\*, 2\)"),
        (torch.randn(len(x), 3), ValueError, r"context c must have shape \(\*, 2\)"),
        (torch.randn(len(x) - 1, 2), ValueError, rf"c must have shape \({len(x)}, 2\) or"),
        (torch.ones(len(x), 2, dtype=torch.long), TypeError, r"floating point tensor"),
        (torch.full((len(x), 2), float("nan")), ValueError, r"c contains NaN or Inf"),
    ]:
        with unchanged(cur.cnf), pytest.raises(error, match=pattern):
            calls[entry](cur, c)


def test_curriculum_arguments():
    cur = curriculum()
    x = data()
    model = make("gmm-full")

    with unchanged(model):
        with pytest.raises(TypeError, match=r"cnf must be a zuko.flows.CNF"):
            Curriculum(make("gmm-full"))
        with pytest.raises(ValueError, match=r"steps must be at least 2"):
            cur.spaces(x, steps=1)
        with pytest.raises(ValueError, match=r"jitter must be non-negative"):
            cur.spaces(x, steps=3, jitter=-0.1)
        with pytest.raises(ValueError, match=r"v must be in \[0, 1\], got 1.5"):
            cur.transform(x, 1.5)
        with pytest.raises(TypeError, match=r"model must be a zuko LazyDistribution"):
            cur.train(torch.nn.Linear(2, 2), x, progress=False)
        with pytest.raises(ValueError, match=r"epochs_per_space must be at least 1"):
            cur.train(model, x, settings=Settings(epochs_per_space=0), progress=False)
        with pytest.raises(ValueError, match=r"Pass the contexts with the spaces"):
            cur.train(model, Spaces(torch.linspace(1, 0, 3), x.expand(3, -1, -1)), c=x)
        with pytest.raises(ValueError, match=r"v must decrease, from the Gaussian"):
            Spaces(torch.linspace(0, 1, 3), x.expand(3, -1, -1))
        # a model with more components than samples fails in its initialize, unchanged
        with pytest.raises(ValueError, match=r"x has 3 samples but at least 4 are needed"):
            cur.train(model, x[:3], settings=NO_FINETUNING, progress=False)
