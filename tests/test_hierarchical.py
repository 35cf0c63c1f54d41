r"""Tests of the hierarchical mixture of factor analyzers
(:class:`contmix.HierarchicalMFA`, ``contmix.mixtures.hierarchical``) and of the
grouping helpers it shares with the hierarchical CPMM (``contmix.mixtures.groups``)."""

import math

import pytest
import torch

from data import plane as blobs
from helpers import unchanged

from contmix import MFA, HierarchicalMFA
from contmix.mixtures.groups import group_labels, order_path


def test_hierarchical_generator_and_restarts():
    r"""HierarchicalMFA: the same generator seed gives the same mixture, the global seed
    untouched; ``n_init=3`` keeps the restart of the highest log-likelihood among those
    drawn from the same stream."""

    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(6, 3, generator=g)
    x = centers.repeat_interleave(50, dim=0) + torch.randn(300, 3, generator=g)
    models = [HierarchicalMFA(3, groups=3, components=2, rank=1) for _ in range(6)]
    state = torch.get_rng_state()

    generator = torch.Generator().manual_seed(1)
    for model in models[:3]:
        model.initialize(x, generator=generator)
    models[3].initialize(x, n_init=3, generator=torch.Generator().manual_seed(1))
    models[4].initialize(x, n_init=3, generator=torch.Generator().manual_seed(1))
    models[5].initialize(x, "random", generator=torch.Generator().manual_seed(1))

    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        singles = [m().log_prob(x).mean().item() for m in models[:3]]
        best = models[3]().log_prob(x).mean().item()
        assert torch.equal(models[3]().log_prob(x), models[4]().log_prob(x))
        assert torch.isfinite(models[5]().log_prob(x)).all()
    assert best == pytest.approx(max(singles), abs=1e-5)
    assert all(p.is_leaf and p.grad_fn is None for p in models[3].parameters())


def test_order_path_does_not_depend_on_rounding():
    r"""Two centres are equally far from their mean: which one the path starts at was
    decided by rounding (a float32 and a float64 fit of the same data ordered their
    sub-clusters differently). Near ties now go to the smallest first coordinate."""

    from contmix.mixtures.groups import order_path

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        centers = torch.randn(2, 3, generator=g, dtype=torch.float64)
        noise = 1e-7 * torch.randn(2, 3, generator=g, dtype=torch.float64)
        expected = order_path(centers)
        assert expected[0] == centers[:, 0].argmin()
        assert torch.equal(order_path(centers.float()), expected)
        assert torch.equal(order_path(centers + noise), expected)

    line = torch.tensor([[1.0], [3.0], [0.0], [2.0]])
    assert order_path(line).tolist() == [2, 0, 3, 1]


def test_hierarchical_statistics_build_no_graph():
    from contmix.mixtures.groups import factor_analyzers, group_statistics

    x = torch.randn(80, 3, requires_grad=True)
    labels = group_labels(x, 2, "kmeans")
    stats = group_statistics(x, labels, 2, 2)

    assert not labels.requires_grad
    assert not any(t.requires_grad for t in stats)
    assert not any(t.requires_grad for t in factor_analyzers(stats.covariances, 1))


def hierarchical_data():
    g = torch.Generator().manual_seed(0)
    centers = 5 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    return centers.repeat_interleave(60, dim=0) + torch.randn(240, 3, generator=g).double()


@pytest.mark.parametrize("strategy", ["random", "kmeans", "kmeans++", "em"])
def test_hierarchical_strategies_and_reports(strategy):
    x = hierarchical_data()
    model = HierarchicalMFA(3, groups=2, components=2, rank=1).double()
    report = model.initialize(x, strategy, generator=torch.Generator().manual_seed(0))

    assert model.fit_report is report and report.strategy == strategy
    assert (report.iterations > 0) == (strategy == "em")
    with torch.no_grad():
        mean = model().log_prob(x).mean().item()
    if strategy == "em":
        assert report.converged and report.lower_bound == report.lower_bounds[-1]
        assert (torch.tensor(report.lower_bounds).diff() > -1e-9).all()
    else:
        assert report.lower_bound == pytest.approx(mean, abs=1e-6)


def test_hierarchical_em_is_em_of_the_flat_mfa():
    r"""EM of the hierarchical mixture is EM of the MFA of its C G components with
    weights :math:`\eta_c \pi_{cj}`: the same densities, the same posteriors summed by
    group."""

    x = hierarchical_data()
    model = HierarchicalMFA(3, groups=2, components=2, rank=1).double()
    model.initialize(x, "kmeans", generator=torch.Generator().manual_seed(1))

    flat = MFA(3, components=4, rank=1).double()
    with torch.no_grad():
        eta, logits, loc, factor, log_diag = model.phi
        weights = eta.log_softmax(-1)[:, None] + logits.log_softmax(-1)
        start = [weights.flatten(), loc.flatten(0, 1), factor.flatten(0, 1)]
        for p, value in zip(flat.phi, [*start, log_diag.flatten(0, 1)], strict=True):
            p.copy_(value)
        assert torch.allclose(flat().log_prob(x), model().log_prob(x), atol=1e-10)

    report, expected = model.em(x, tol=1e-8), flat.em(x, tol=1e-8)
    assert report.iterations == expected.iterations
    assert report.lower_bounds == pytest.approx(expected.lower_bounds, abs=1e-9)
    with torch.no_grad():
        assert torch.allclose(model().log_prob(x), flat().log_prob(x), atol=1e-6)
        grouped = flat.predict_proba(x).unflatten(-1, (2, 2)).sum(dim=-1)
        proba = model.predict_proba(x)
        assert torch.allclose(proba, grouped, atol=1e-6)
        assert torch.allclose(proba.sum(dim=-1), torch.ones(len(x), dtype=x.dtype))
        assert torch.equal(model.predict(x), proba.argmax(dim=-1))
        assert model.free_parameters() == flat.free_parameters()
        log_lik, P = model().log_prob(x).sum().item(), model.free_parameters()
        assert model.bic(x).item() == pytest.approx(-2 * log_lik + P * math.log(240))
        assert model.aic(x).item() == pytest.approx(-2 * log_lik + 2 * P)


def test_hierarchical_bad_input_leaves_everything_unchanged():
    x = hierarchical_data()
    model = HierarchicalMFA(3, groups=2, components=2, rank=1).double()
    model.initialize(x)
    report = model.fit_report  # the other bad arguments of every model in test_battery.py

    with unchanged(model), pytest.raises(ValueError, match=r"'kmeans\+\+' or 'em'\."):
        model.initialize(x, strategy="fa")
    with unchanged(model), pytest.raises(ValueError, match="tol must be"):
        model.em(x, tol=-1.0)
    assert model.fit_report is report


def test_order_path():
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    assert order_path(centers).tolist() in ([1, 3, 2, 0, 4], [4, 0, 2, 3, 1])


def test_hierarchical_mfa_initialize():
    torch.manual_seed(0)
    x, y = blobs()
    model = HierarchicalMFA(2, groups=3, components=4, rank=1)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError):
        model.initialize(x[:, :1])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    model.initialize(x, y=y)
    assert (model.predict(x) == y).float().mean() > 0.97
    assert torch.allclose(model.predict_proba(x).sum(-1), torch.ones(len(x)), atol=1e-6)
    assert model().log_prob(x).mean() > -4.0  # three unit blobs: about -2.8 nats
