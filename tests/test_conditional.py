r"""Tests for the fit of the context network of the conditional models
(contmix.mixtures.conditional, ``initialize(x, c=c)``)."""

import math

import pytest
import torch

from helpers import snapshot, unchanged
from models import build
from torch import Tensor

import contmix.mixtures.conditional

from contmix import GMM
from contmix.mixtures.conditional import check_steps, fit_context, initialize_context

D, C = 2, 2

# the registry's models, of two components and context networks of 16 hidden features
SIZES = dict(components=2, hidden_features=(16,))
MODELS = {
    "gmm-full": SIZES,
    "gmm-diagonal": SIZES,
    "mfa": SIZES,
    "hmfa": dict(SIZES, components=1),
    "cwm-affine": dict(components=2),
}


def make(name: str) -> torch.nn.Module:
    return build(name, D, C, **MODELS[name])


def data(n: int = 200) -> tuple[Tensor, Tensor]:
    r"""Two clusters at -3 and 3 along the first feature, shifted by 2 c_1 along both:
    p(x | c) is much sharper than p(x)."""

    generator = torch.Generator().manual_seed(1)
    c = torch.randn(n, C, generator=generator)
    side = torch.where(torch.arange(n) % 2 == 0, -3.0, 3.0)
    x = 0.3 * torch.randn(n, D, generator=generator) + 2 * c[:, :1]
    x[:, 0] += side
    return x, c


def mean_log_prob(model: torch.nn.Module, x: Tensor, c: Tensor) -> float:
    with torch.no_grad():
        return float(model(c).log_prob(x).mean())


def fit(model: torch.nn.Module, *args, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return model.initialize(*args, generator=generator, **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_contexts_raise_the_conditional_likelihood(name):
    x, c = data()
    unconditional, conditional = make(name), make(name)

    fit(unconditional, x)
    report = fit(conditional, x, c=c, steps=40)

    before, after = mean_log_prob(unconditional, x, c), mean_log_prob(conditional, x, c)
    assert after > before + 0.5
    assert report is conditional.fit_report
    assert len(report.context_history) == 41
    assert math.isclose(report.context_log_likelihood, after, rel_tol=1e-4, abs_tol=1e-4)
    assert report.context_log_likelihood == max(report.context_history)
    # the start of the context fit is the unconditional mixture
    assert math.isclose(report.context_history[0], before, rel_tol=1e-3, abs_tol=1e-3)
    assert all(p.grad is None for p in conditional.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_seeded_fit_ignores_the_global_seed(name):
    x, c = data()
    a, b = make(name), make(name)
    state = torch.get_rng_state()

    torch.manual_seed(1)
    fit(a, x, c=c, steps=10)
    torch.manual_seed(2)
    fit(b, x, c=c, steps=10)

    after = snapshot(b)
    for key, value in snapshot(a).items():
        assert torch.equal(value, after[key]), key

    torch.set_rng_state(state)
    fit(make(name), x, c=c, steps=10)
    assert torch.equal(torch.get_rng_state(), state)  # given a generator, left alone


@pytest.mark.parametrize("name", ["gmm-full", "cwm-affine"])
def test_without_contexts_the_mixture_whatever_the_context(name):
    x, c = data()
    model = make(name)
    report = fit(model, x)

    assert report.context_history == () and report.context_log_likelihood is None
    with torch.no_grad():
        here, there = model(c).log_prob(x), model(torch.zeros_like(c)).log_prob(x)
    assert torch.allclose(here, there, atol=0.2)  # the output weights scaled by 1e-2


def test_no_steps_is_exactly_the_mixture():
    x, c = data()
    model = make("gmm-full")
    report = fit(model, x, c=c, steps=0)

    assert len(report.context_history) == 1
    with torch.no_grad():
        here, there = model(c).log_prob(x), model(torch.zeros_like(c)).log_prob(x)
    assert torch.allclose(here, there, atol=1e-6)  # the output weights at zero


def test_never_worse_than_the_start():
    x, c = data()
    model = make("gmm-full")
    report = fit(model, x, c=c, steps=5, lr=50.0)  # diverges

    assert report.context_log_likelihood >= report.context_history[0]
    after = mean_log_prob(model, x, c)
    assert math.isclose(report.context_log_likelihood, after, rel_tol=1e-4, abs_tol=1e-4)


def test_fit_context_against_a_hand_written_adam():
    r"""One step of fit_context is one step of Adam (written out) on the mean negative
    log-likelihood; the kept parameters are the better of the start and the step."""

    x, c = data(50)
    model, reference = make("gmm-diagonal"), make("gmm-diagonal")
    lr = 1e-2

    best, history = fit_context(model, x, c, model.hyper.parameters(), steps=1, lr=lr)

    loss = -reference(c).log_prob(x).mean()
    grads = torch.autograd.grad(loss, list(reference.hyper.parameters()))
    with torch.no_grad():
        for p, g in zip(reference.hyper.parameters(), grads, strict=True):
            m, v = 0.1 * g, 0.001 * g.square()  # the moments of one step, bias-corrected
            p.sub_(lr * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8))
    start, stepped = float(loss.detach()), mean_log_prob(reference, x, c)

    assert math.isclose(history[0], -start, rel_tol=1e-5)
    assert math.isclose(history[1], stepped, rel_tol=1e-4, abs_tol=1e-4)
    assert best == max(history)


def bad_contexts(x: Tensor, c: Tensor) -> list:
    nan = c.clone()
    nan[3, 1] = math.nan
    return [
        (c[:, :1], ValueError, r"context c must have shape \(\*, 2\)"),
        (c[0], ValueError, r"shape \(N, 2\), one row per sample"),
        (c.unsqueeze(0), ValueError, r"shape \(N, 2\), one row per sample"),
        (c[:-1], ValueError, r"one row per sample of x \(200\), got 199"),
        (nan, ValueError, "NaN or Inf"),
        (c.double(), TypeError, "c is torch.float64 but the model is torch.float32"),
        (c.long(), TypeError, "floating point"),
        (c.tolist(), TypeError, "torch.Tensor"),
    ]


@pytest.mark.parametrize("name", MODELS)
def test_bad_contexts_change_nothing(name):
    x, c = data()
    model = make(name)
    fit(model, x)
    report = model.fit_report

    for bad, error, message in bad_contexts(x, c):
        with unchanged(model), pytest.raises(error, match=message):
            fit(model, x, c=bad)
        assert model.fit_report is report


def test_bad_arguments_change_nothing():
    x, c = data()
    model = make("gmm-full")

    with unchanged(model), pytest.raises(ValueError, match="steps must be an integer"):
        fit(model, x, c=c, steps=-1)
    with unchanged(model), pytest.raises(ValueError, match="lr must be a positive"):
        fit(model, x, c=c, lr=math.nan)
    with unchanged(model), pytest.raises(TypeError, match="initialize\\(x, c=c\\)"):
        model.initialize(x, c)  # the contexts in place of the strategy
    with unchanged(model), pytest.raises(TypeError, match="x as a tensor"):
        model.initialize(x.split(50), c=c)

    unconditional = GMM(D, components=2)
    with unchanged(unconditional), pytest.raises(ValueError, match="context=2"):
        unconditional.initialize(x, c=c)


def test_check_steps():
    check_steps(0, 1)
    for steps in (-1, 1.5, True):
        with pytest.raises(ValueError, match="steps must be an integer of at least 0"):
            check_steps(steps, 1e-2)
    for lr in (0.0, -1.0, math.inf, "1e-2", True):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            check_steps(1, lr)


@pytest.mark.parametrize("name", ["gmm-full", "cwm-affine"])
def test_interrupted_context_fit_changes_nothing(name, monkeypatch):
    x, c = data()
    model = make(name)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(contmix.mixtures.conditional, "fit_context", interrupted)
    with unchanged(model), pytest.raises(KeyboardInterrupt):
        fit(model, x, c=c)
    assert model.fit_report is None


def test_initialize_context_without_contexts_is_a_no_op():
    x, _ = data()
    model = make("gmm-full")
    report = fit(model, x)

    with unchanged(model):
        assert initialize_context(model, x, None, report) is report


def test_frozen_parameters_are_left_alone():
    x, c = data()
    model = make("gmm-full")
    model.hyper.requires_grad_(False)

    report = fit(model, x, c=c, steps=5)
    assert len(report.context_history) == 1  # nothing to fit: the unconditional start
