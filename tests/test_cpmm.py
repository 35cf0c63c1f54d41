r"""Tests for contmix.mixtures.cpmm and the modules it is built from (continuous,
regression, solver, state, contmix.nn)."""

import io
import math

import pytest
import torch

from data import blobs as make_blobs
from helpers import unchanged
from torch.distributions import LowRankMultivariateNormal

from contmix import CPMM, GMM, MFA, HierarchicalCPMM, HierarchicalMFA, Solver, SolverError
from contmix.datasets import two_circles
from contmix.mixtures.continuous import pseudotimes
from contmix.mixtures.groups import group_labels
from contmix.mixtures.paths import path_components


def small(cls=CPMM, **kwargs):
    options = dict(components=6, rank=1, hidden_features=(16, 16))
    return cls(2, **(options | kwargs))


def blobs(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Three unit blobs in 2-D (float32), cycling through the centres, and their labels."""

    centers = [[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]]
    return make_blobs(centers, n, seed=seed, dtype=torch.float32, cycle=True)


# float32 log-densities reached by two code paths (a CPMM's states against an extracted
# MFA's parameters, contmix against torch.distributions) agree to rounding: about a
# hundred ulps of the terms (1e-5 relative) for these small models
LOG_PROB = dict(rtol=1e-5, atol=1e-5)


def assert_same_labels(labels: torch.Tensor, scores: torch.Tensor) -> None:
    r"""Asserts that ``labels`` are the argmax of reference ``scores`` (log-densities
    with shape (N, K) from another code path), except at float32 near-ties, where either
    of the tied labels is right; and that the near-ties are few."""

    top = scores.topk(2, dim=-1).values
    margin = LOG_PROB["atol"] + LOG_PROB["rtol"] * top[:, 0].abs()
    clear = top[:, 0] - top[:, 1] > 2 * margin
    chosen = scores.gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    assert clear.float().mean() > 0.9
    assert torch.equal(labels[clear], scores.argmax(dim=-1)[clear])
    assert (chosen >= top[:, 0] - 2 * margin).all()


def test_pseudotimes():
    torch.manual_seed(0)
    t = torch.stack([pseudotimes(9, torch.zeros(())) for _ in range(10000)])
    assert (t[:, 1:] > t[:, :-1]).all() and (t > 0).all() and (t < 1).all()
    # order statistics of 9 uniforms: E[t_(j)] = j / 10 (standard errors below 0.0016)
    assert torch.allclose(t.mean(dim=0), torch.arange(1, 10) / 10, atol=0.01)


# shapes


def test_shapes_unconditional():
    torch.manual_seed(0)
    model = small(components=5, rank=2)
    d = model()
    assert d.batch_shape == () and d.event_shape == (2,)
    assert d.base.loc.shape == (5, 2) and d.base.cov_factor.shape == (5, 2, 2)
    assert model().log_prob(torch.randn(7, 3, 2)).shape == (7, 3)
    assert model().sample((4,)).shape == (4, 2)

    h = model.solve(torch.tensor([0.0, 0.3, 1.0]))
    assert h.shape == (1, 3, model.layout.size)
    assert torch.equal(h[0, 0], model.start[0])  # t = 0 is the initial state


def test_shapes_conditional():
    torch.manual_seed(0)
    model = small(context=3)
    c = torch.randn(5, 3)
    d = model(c)
    assert d.batch_shape == (5,) and d.base.batch_shape == (5, 6)
    assert d.log_prob(torch.randn(5, 2)).shape == (5,)
    assert d.sample().shape == (5, 2)
    assert model(c[0]).batch_shape == ()

    # the context reaches both the initial state and the dynamics
    h = model.solve(torch.linspace(0, 1, 4), c[:2])
    assert h.shape == (2, 1, 4, model.layout.size)
    assert not torch.allclose(h[0], h[1])

    with pytest.raises(ValueError, match="needs a context"):
        model()

    hier = small(HierarchicalCPMM, context=3, trajectories=4)
    d = hier(c)
    assert d.batch_shape == (5,) and d.base.batch_shape == (5, 4)
    assert d.base.base.batch_shape == (5, 4, 6)
    assert hier.predict_proba(torch.randn(5, 2), c).shape == (5, 4)

    hier.eval()
    assert hier(c).log_prob(torch.randn(5, 2)).shape == (5,)
    assert hier.extract(c=c[0])().log_prob(torch.randn(5, 2)).shape == (5,)


def test_conditional_outer_weights_follow_the_context():
    # two groups whose proportions flip with a binary context: 9 to 1, then 1 to 9
    torch.manual_seed(0)
    c = (torch.arange(400) % 2).double().unsqueeze(-1)
    major = torch.rand(400, dtype=torch.float64) < 0.9
    y = torch.where(c.squeeze(-1) == 0, ~major, major).long()
    x = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=torch.float64)[y]
    x = x + 0.5 * torch.randn(400, 2, dtype=torch.float64)

    model = small(HierarchicalCPMM, context=1, trajectories=2, components=3).double()
    model.initialize(x, y=y, steps=0)
    assert torch.allclose(
        model.outer_logits(c[:2]).softmax(-1), torch.tensor(0.5).double(), atol=0.02
    )

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = -model(c).log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    eta = model.outer_logits(torch.tensor([[0.0], [1.0]]).double()).softmax(-1)
    group = model.predict(torch.tensor([[-4.0, 0.0]]).double(), torch.tensor([[0.0]]).double())
    assert eta[0, group].item() > 0.75 and eta[1, group].item() < 0.25
    assert torch.allclose(model.extract(c=c[1]).phi[0].softmax(-1), eta[1])


def test_separate_dynamics():
    torch.manual_seed(0)
    # a fixed-step solver: adaptive steps are shared by all trajectories
    model = small(HierarchicalCPMM, trajectories=3, separate=True, solver=Solver("rk4")).eval()
    assert model.dynamics.network[0].weight.shape[0] == 3
    h = model.solve(torch.linspace(0, 1, 4))

    with torch.no_grad():
        for layer in model.dynamics.linears():
            layer.weight[1].mul_(2.0)

    h2 = model.solve(torch.linspace(0, 1, 4))
    # trajectories 0 and 2 are unchanged, up to the rounding of the batched products
    # (another batch); trajectory 1 moves by far more
    assert torch.allclose(h[[0, 2]], h2[[0, 2]], rtol=1e-6, atol=1e-6)
    assert (h[1, 1:] - h2[1, 1:]).abs().max() > 1e-3


# extraction and caching


def test_extract_equals_eval():
    torch.manual_seed(0)
    x = torch.randn(50, 2)
    model = small(learn_weights=True, solver=Solver("dopri5", rtol=1e-5, atol=1e-6))
    model.initialize(x, steps=5)
    model.eval()

    mfa = model.extract()
    assert isinstance(mfa, MFA) and mfa.components == 6
    with torch.no_grad():
        # the parameters are copies of the states (views of them for the model)
        for p, value in zip(mfa.phi, model.parameters_of(model.states()[0]), strict=True):
            assert torch.equal(p, value)
        assert torch.allclose(mfa().log_prob(x), model().log_prob(x), **LOG_PROB)

    # saves and loads on its own: the same values, the same code path
    buffer = io.BytesIO()
    torch.save(mfa.state_dict(), buffer)
    buffer.seek(0)
    fresh = MFA(2, components=6, rank=1)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh().log_prob(x), mfa().log_prob(x))

    # G' = 3 components at t = 0, 0.5, 1: another solve, whose steps differ, so equal
    # to the grid of 6 up to the solver's tolerance (t = 0 is the initial state, copied);
    # the trajectory moves by more than that between two pseudotimes of the grid
    coarse = model.extract(components=3)
    loc = mfa.phi[1].detach()
    bound = 10 * (model.solver.atol + model.solver.rtol * loc.abs().max())
    assert coarse.components == 3
    assert torch.equal(coarse.phi[1][0], loc[0])
    assert (coarse.phi[1][2] - loc[5]).abs().max() < bound
    middle = model.layout.unpack(model.solve(torch.tensor([0.5]))).loc[0, 0]
    assert (coarse.phi[1][1] - middle).abs().max() < bound
    assert (loc[5] - loc[4]).abs().max() > 10 * bound


def test_extract_hierarchical_equals_eval():
    torch.manual_seed(0)
    x = torch.randn(50, 2)
    model = small(HierarchicalCPMM, trajectories=3)
    model.initialize(x, steps=5)
    model.eval()

    extracted = model.extract()
    assert isinstance(extracted, HierarchicalMFA)
    with torch.no_grad():
        assert torch.allclose(extracted().log_prob(x), model().log_prob(x), **LOG_PROB)
        assert_same_labels(extracted.predict(x), model().joint(x))

        fresh = HierarchicalMFA(2, groups=3, components=6, rank=1)
        fresh.load_state_dict(extracted.state_dict())
        assert torch.equal(fresh().log_prob(x), extracted().log_prob(x))


def count_evaluations(model):
    calls = []
    model.dynamics.register_forward_hook(lambda *args: calls.append(1))
    return calls


def halve_through_data(model, x):
    for p in model.parameters():
        p.data.mul_(0.5)  # bypasses autograd and the version counter
    return x


def edit_in_place(model, x):
    with torch.no_grad():
        model.dynamics.output_layer()[1].add_(1.0)
        model.start.add_(0.5)
    return x


def load_another_state(model, x):
    torch.manual_seed(1)
    model.load_state_dict(type(model)(2, **OPTIONS[type(model)]).state_dict())
    return x


def optimizer_step_in_train_mode(model, x):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (-model().log_prob(x).mean()).backward()
    optimizer.step()
    model.eval()
    return x


def optimizer_step_in_eval_mode(model, x):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (-model().log_prob(x).mean()).backward()
    optimizer.step()
    return x


def to_double(model, x):
    model.double()
    return x.double()


def change_the_solver(model, x):
    model.solver = Solver("euler", options={"step_size": 0.5})  # coarse: far off
    return x


OPTIONS = {CPMM: dict(components=6, rank=1, hidden_features=(16, 16))}
OPTIONS[HierarchicalCPMM] = OPTIONS[CPMM] | {"trajectories": 2}


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
@pytest.mark.parametrize(
    "change",
    [
        halve_through_data,
        edit_in_place,
        load_another_state,
        optimizer_step_in_train_mode,
        optimizer_step_in_eval_mode,
        to_double,
        change_the_solver,
    ],
)
def test_cache_follows_every_change(cls, change):
    # whichever way the parameters (or the solver) change, the cached states are not
    # served: log_prob is that of a fresh model with the same state, solved again
    torch.manual_seed(0)
    x = torch.randn(20, 2)
    model = cls(2, **OPTIONS[cls]).eval()
    calls = count_evaluations(model)

    with torch.no_grad():
        before = model().log_prob(x)
    x = change(model, x)
    calls.clear()

    with torch.no_grad():
        after = model().log_prob(x)
        assert len(calls) > 0  # solved again

        fresh = cls(2, **OPTIONS[cls]).to(x.dtype)
        fresh.load_state_dict(model.state_dict())
        fresh.solver = model.solver
        assert torch.equal(after, fresh.eval()().log_prob(x))  # the same solve again

    if change is to_double:  # the same values, in float64
        assert after.dtype == torch.float64
        assert torch.allclose(after, before.double(), **LOG_PROB)
    else:
        assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
def test_cache_is_used_while_nothing_changes(cls):
    torch.manual_seed(0)
    x = torch.randn(20, 2)
    model = cls(2, **OPTIONS[cls]).eval()
    calls = count_evaluations(model)

    with torch.no_grad():
        first = model().log_prob(x)
        assert len(calls) > 0
        calls.clear()

        assert torch.equal(model().log_prob(x), first)
        model.load_state_dict(model.state_dict())  # the same values
        model.float()
        assert torch.equal(model.extract()().log_prob(x), model.extract()().log_prob(x))
        assert torch.equal(model().log_prob(x), first)

    # with gradients enabled, a hit is differentiable and does not solve either
    assert model().log_prob(x).requires_grad
    assert len(calls) == 0

    # going back to training frees the cache
    model.train()
    assert model._cache is None


def test_training_mode_draws_pseudotimes():
    torch.manual_seed(0)
    model = small(random_times=6)
    a, b = model().base.loc, model().base.loc
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model().base.loc, model().base.loc)


def test_training_mode_uses_the_grid_by_default():
    model = small().double()
    train = model().base.loc
    assert model._cache is not None  # solved once and cached, as in evaluation mode
    assert torch.allclose(train, model.eval()().base.loc, rtol=1e-12, atol=1e-12)


# gradients


@pytest.mark.parametrize("adjoint", [False, True])
def test_gradients_reach_everything(adjoint):
    torch.manual_seed(0)
    x = torch.randn(30, 2)
    solver = Solver(adjoint=adjoint)
    model = small(HierarchicalCPMM, trajectories=2, solver=solver, learn_weights=True)
    (-model().log_prob(x).mean()).backward()

    assert model.start.grad is not None and (model.start.grad != 0).any()
    assert model.logits.grad is not None
    for name, p in model.dynamics.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad != 0).any(), name


def directional_derivative(loss, model, direction, step=1e-6):
    r"""The central finite difference of ``loss()`` along ``direction`` (one tensor per
    parameter), in float64."""

    values = [p.detach().clone() for p in model.parameters()]
    results = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, value, v in zip(model.parameters(), values, direction, strict=True):
                p.copy_(value + sign * step * v)
            results.append(loss())
    with torch.no_grad():
        for p, value in zip(model.parameters(), values, strict=True):
            p.copy_(value)

    return (results[0] - results[1]) / (2 * step)


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
@pytest.mark.parametrize("context", [0, 2])
def test_eval_mode_trains(cls, context):
    # in evaluation mode (fixed grid), the loss is differentiable: on a cache miss
    # (solved with autograd) and on a hit (solved again by the backward pass); the
    # gradient matches finite differences (float64, fixed-step solver)
    torch.manual_seed(0)
    x = torch.randn(40, 2, dtype=torch.float64)
    c = torch.randn(40, context, dtype=torch.float64) if context else None
    model = cls(2, context=context, solver=Solver("rk4"), **OPTIONS[cls]).double().eval()

    def loss():
        return -model(c).log_prob(x).mean()

    with torch.no_grad():
        loss()  # fills the cache
    grads = []
    for _ in range(2):  # a hit, then (the cache is refilled) a hit again
        model.zero_grad()
        loss().backward()
        grads.append([p.grad.clone() for p in model.parameters()])

    direction = [torch.randn_like(p) for p in model.parameters()]
    expected = directional_derivative(loss, model, direction)
    model.zero_grad()
    loss().backward()  # a miss: the finite differences changed the parameters
    grads.append([p.grad.clone() for p in model.parameters()])

    for grad in grads:
        derivative = sum((g * v).sum() for g, v in zip(grad, direction, strict=True))
        assert torch.allclose(derivative, expected, rtol=1e-6, atol=1e-9)

    # and it trains
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = loss().item()
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < before - 0.01


def test_adjoint_gradients_match():
    x = torch.randn(30, 2, dtype=torch.float64)
    grads = []

    for adjoint in (False, True):
        torch.manual_seed(0)
        model = small(solver=Solver("dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)).double()
        h = model.solve(torch.linspace(0, 1, 6)).squeeze(0)
        (-model._inner(h).log_prob(x).mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))

    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_conditional_gradients_reach_context():
    torch.manual_seed(0)
    model = small(context=2, solver=Solver(adjoint=True))
    c = torch.randn(4, 2, requires_grad=True)
    h = model.solve(torch.linspace(0, 1, 3), c)
    h[..., -1, 0].sum().backward()  # a mean at t = 1 depends on c through f
    assert c.grad is not None and (c.grad != 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown method"):
        Solver("foo")
    with pytest.raises(ValueError, match="Unknown activation"):
        small(activation="relu")
    with pytest.raises(ValueError, match="no context"):
        small().solve(torch.linspace(0, 1, 3), torch.randn(3))
    x = torch.randn(5, 2)  # the forward pass ignores a context, as zuko's unconditional ones
    model = small().eval()
    assert torch.equal(model(torch.randn(3)).log_prob(x), model().log_prob(x))


# initialization


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
def test_initialize_em_passes_through_the_components(cls):
    # the trajectories are regressed on MFAs fitted by EM, one per group, laid out along
    # paths: the extracted components are those MFAs' (the divergence per feature from
    # each to the trajectory's is small) and the likelihood theirs with equal weights
    torch.manual_seed(0)
    x, _ = two_circles(1024)
    x = x.double()
    options = {"trajectories": 2} if cls is HierarchicalCPMM else {}
    model = small(cls, components=8, hidden_features=(64, 64), **options).double()
    generator = torch.Generator().manual_seed(0)
    model.initialize(x, steps=400, generator=generator)

    generator = torch.Generator().manual_seed(0)
    labels = group_labels(x, model.trajectories, "kmeans", None, generator)
    paths = path_components(x, labels, model.trajectories, 8, 1, generator=generator)
    model.eval()
    with torch.no_grad():
        q = LowRankMultivariateNormal(*paths[2:])
        d = model()
        base = d.base.base if cls is HierarchicalCPMM else d.base
        p = LowRankMultivariateNormal(base.loc, base.cov_factor, base.cov_diag)
        divergence = torch.distributions.kl_divergence(q, p) / 2
        assert divergence.mean() < 0.05, divergence

        mfa = HierarchicalMFA(2, groups=model.trajectories, components=8, rank=1).double()
        values = (paths.logits, torch.zeros(model.trajectories, 8), *paths[2:4], paths.diag.log())
        for param, value in zip(mfa.phi, values, strict=True):
            param.copy_(value)
        direct = mfa().log_prob(x).mean()
        assert abs(d.log_prob(x).mean() - direct) < 0.1  # 0.06 here, nats with steps=0


def test_initialize_kmeans_places_trajectory_on_data():
    torch.manual_seed(0)
    x, _ = two_circles(512)
    model = small(components=8, hidden_features=(32, 32))
    model.initialize(x, strategy="kmeans", steps=150, lr=1e-2)
    model.eval()
    loc = model().base.loc
    distances = (loc[:, None] - x).norm(dim=-1)  # exact differences, no cancellation
    assert distances.min(dim=-1).values.max() < 0.3  # every component near data
    assert torch.pdist(loc).min() > 0.05  # and spread out


def test_initialize_random():
    torch.manual_seed(0)
    x = torch.randn(100, 2) * torch.tensor([1.0, 3.0])
    model = small()
    model.initialize(x, strategy="random")
    start = model.layout.unpack(model.start.detach())
    # a sample, copied: exact differences (torch.cdist's matrix-product formula would
    # leave an error of the order of sqrt(eps) |x|, 1e-3, on the distance to itself)
    assert (start.loc[:, None] - x).abs().amax(dim=-1).min() == 0
    assert torch.isfinite(model().log_prob(x)).all()


def diagonal_gaussian(x: torch.Tensor) -> torch.distributions.Distribution:
    r"""The maximum-likelihood diagonal Gaussian of the samples, in float64."""

    x = x.double()
    normal = torch.distributions.Normal(x.mean(dim=0), x.std(dim=0, correction=0))
    return torch.distributions.Independent(normal, 1)


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
def test_one_component_is_the_gaussian_of_the_data(cls):
    # one centre has no spread to regress a path on; one component is a legal mixture:
    # the Gaussian of the data (its small random loadings aside)
    torch.manual_seed(0)
    x = torch.randn(200, 2) * torch.tensor([1.0, 3.0]) + torch.tensor([2.0, -1.0])
    options = {"trajectories": 1} if cls is HierarchicalCPMM else {}
    model = small(cls, components=1, **options)
    model.initialize(x, strategy="kmeans")
    model.eval()

    *_, loc, factor, log_diag = (p.detach().double() for p in model.extract().phi)
    cov = factor @ factor.mT + torch.diag_embed(log_diag.exp() + model.epsilon)
    truth = diagonal_gaussian(x)
    assert torch.allclose(loc.flatten(), truth.mean, atol=1e-4)
    assert torch.allclose(cov.flatten(0, -3), torch.diag(truth.variance), rtol=0.01, atol=0.01)
    with torch.no_grad():
        log_prob = model().log_prob(x).double()
    assert (log_prob - truth.log_prob(x.double())).abs().max() < 0.01

    model = small(cls, components=1, **options)
    model.initialize(x, strategy="random")
    assert torch.isfinite(model().log_prob(x)).all()


def test_one_component_per_trajectory_is_the_gaussian_of_its_group():
    torch.manual_seed(0)
    x, y = blobs(301)
    model = small(HierarchicalCPMM, trajectories=3, components=1)
    model.initialize(x, "kmeans", y=y)
    model.eval()

    log_eta = (y.bincount() / len(y)).log().double()
    joint = torch.stack([diagonal_gaussian(x[y == k]).log_prob(x.double()) for k in range(3)])
    truth = torch.logsumexp(joint.T + log_eta, dim=-1)
    with torch.no_grad():
        assert (model().log_prob(x).double() - truth).abs().max() < 0.01


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
def test_two_components_follow_the_two_blobs(cls):
    torch.manual_seed(0)
    x = torch.cat((0.5 * torch.randn(100, 2) - 3, 0.5 * torch.randn(100, 2) + 3))
    options = {"trajectories": 1} if cls is HierarchicalCPMM else {}
    model = small(cls, components=2, **options)
    model.initialize(x)
    model.eval()

    loc = model.extract().phi[-3].detach().reshape(2, 2)
    means = torch.stack((x[:100].mean(dim=0), x[100:].mean(dim=0)))
    error = (loc[:, None] - means).abs().amax(dim=-1)  # (component, blob)
    assert error.min(dim=-1).values.max() < 0.5 and error.min(dim=0).values.max() < 0.5


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.randn(10, 3), "shape"),
        (torch.full((10, 2), float("nan")), "NaN"),
        (torch.randn(2, 2), "samples"),
        (torch.randint(5, (10, 2)), "float"),
        (torch.randn(10, 2, dtype=torch.float64), "float64"),
    ],
)
def test_initialize_bad_input_changes_nothing(bad, error):
    torch.manual_seed(0)
    model = small(HierarchicalCPMM, trajectories=3)

    with unchanged(model), pytest.raises((ValueError, TypeError), match=error):
        model.initialize(bad)


def test_initialize_bad_labels_and_strategy():
    model = small(HierarchicalCPMM, trajectories=3)
    x = torch.randn(30, 2)

    with unchanged(model):
        with pytest.raises(ValueError, match="Unknown strategy"):
            model.initialize(x, strategy="foo")
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            model.initialize(x, y=torch.arange(30) % 4)
        with pytest.raises(ValueError, match="no samples"):
            model.initialize(x, y=torch.arange(30) % 2)
        with pytest.raises(TypeError, match="integer"):
            model.initialize(x, y=torch.zeros(30))
        with pytest.raises(ValueError, match="n_init"):
            model.initialize(x, n_init=0)
        with pytest.raises(TypeError, match="generator"):
            model.initialize(x, generator=0)
        with pytest.raises(ValueError, match="steps"):
            model.initialize(x, steps=-1)
        for lr in (0.0, -1e-2, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="lr"):
                model.initialize(x, lr=lr)


def initializations():
    x = blobs(120)[0]
    return [
        (lambda: small(), lambda m, g: m.initialize(x, steps=5, generator=g)),
        (lambda: small(), lambda m, g: m.initialize(x, "random", generator=g)),
        (lambda: small(), lambda m, g: m.initialize(x, steps=5, n_init=3, generator=g)),
        (lambda: small(context=2), lambda m, g: m.initialize(x, generator=g)),
        (
            lambda: small(HierarchicalCPMM, trajectories=3, context=1),
            lambda m, g: m.initialize(x, "random", n_init=2, generator=g),
        ),
        (
            lambda: small(HierarchicalCPMM, trajectories=3, separate=True),
            lambda m, g: m.initialize(x, steps=5, generator=g),
        ),
        (
            lambda: small(HierarchicalCPMM, trajectories=3),
            lambda m, g: m.initialize(x, y=blobs(120)[1], steps=5, n_init=2, generator=g),
        ),
        (
            lambda: CPMM((1, 2, 1), components=3, rank=1, hidden_features=(4,)),
            lambda m, g: m.initialize(x, steps=5, generator=g),
        ),
    ]


@pytest.mark.parametrize("index", range(len(initializations())))
def test_initialize_with_a_generator_is_reproducible(index):
    # the same seed gives the same parameters whatever the model was before (another
    # global seed, an initialization already made), and leaves the global seed alone
    make, initialize = initializations()[index]
    torch.manual_seed(0)
    a = make()
    torch.manual_seed(1)
    b = make()
    initialize(b, torch.Generator().manual_seed(5))  # b was initialized before

    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    initialize(a, torch.Generator().manual_seed(7))
    initialize(b, torch.Generator().manual_seed(7))
    assert torch.equal(torch.random.get_rng_state(), state)

    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name

    initialize(b, torch.Generator().manual_seed(8))  # another seed, other parameters
    assert not torch.equal(next(a.dynamics.parameters()), next(b.dynamics.parameters()))


def test_n_init_keeps_the_best_clusters():
    # of n_init draws (from the generator, in turn), the statistics of the highest
    # likelihood are kept
    torch.manual_seed(0)
    x = blobs(150)[0]
    model = small(HierarchicalCPMM, trajectories=3, components=4)
    best = model._statistics(x, "random", None, 5, torch.Generator().manual_seed(0))

    generator = torch.Generator().manual_seed(0)
    draws = [model._statistics(x, "random", None, 1, generator) for _ in range(5)]
    scores = torch.stack([model._log_likelihood(x, stats) for stats in draws])
    assert len(set(scores.tolist())) > 1  # the draws differ
    assert torch.equal(best.means, draws[scores.argmax()].means)


def test_initialize_solver_failure_restores():
    torch.manual_seed(0)
    x = torch.randn(40, 2)
    model = small(solver=Solver("dopri5", rtol=1e-10, atol=1e-10, max_steps=2))

    with unchanged(model), pytest.raises(SolverError):
        model.initialize(x, steps=50, lr=10.0)


# empty batches


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch", [(0,), (2, 0)])
@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
def test_empty_context_batch(cls, batch, training):
    # empty results of the right shapes, as GMM and MFA give
    torch.manual_seed(0)
    options = {"trajectories": 3} if cls is HierarchicalCPMM else {}
    model = small(cls, context=3, **options).train(training)
    reference = GMM(2, context=3, components=3 if options else 6, hidden_features=(8,))
    c, x = torch.empty(*batch, 3), torch.empty(*batch, 2)

    d, expected = model(c), reference(c)
    assert d.batch_shape == expected.batch_shape == batch
    for result, other in [
        (d.log_prob(x), expected.log_prob(x)),
        (d.sample(), expected.sample()),
        (d.sample((4,)), expected.sample((4,))),
        (d.posterior(x), expected.posterior(x)),
        (d.predict(x), expected.predict(x)),
        (d.mean, expected.mean),
    ]:
        assert result.shape == other.shape and result.dtype == other.dtype

    # the loss of an empty batch backpropagates (to zero gradients)
    d.log_prob(x).sum().backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())

    if cls is HierarchicalCPMM:
        assert model.predict_proba(x, c).shape == (*batch, 3)
        assert model.predict(x, c).shape == batch
        labels = torch.empty(batch, dtype=torch.long)
        assert model.joint_log_prob(x, labels, c).shape == batch


def test_entropy_of_an_empty_batch():
    model = small(HierarchicalCPMM, trajectories=3)
    with pytest.raises(ValueError, match="N >= 1"):
        model.entropy(torch.empty(0, 2))


# hierarchical


def brute_force_log_joint(model: HierarchicalCPMM, x: torch.Tensor) -> torch.Tensor:
    r"""log eta_c + log p(x | c) from the extracted parameters with torch's own low-rank
    normal, one trajectory and one component at a time, in float64."""

    eta, logits, loc, factor, log_diag = (p.detach().double() for p in model.extract().phi)
    x = x.double()
    C, G = logits.shape
    log_eta = torch.log_softmax(eta, dim=0)
    out = torch.empty(len(x), C, dtype=torch.float64)

    for c in range(C):
        log_pi = torch.log_softmax(logits[c], dim=0)
        terms = []
        for j in range(G):
            normal = LowRankMultivariateNormal(
                loc[c, j], factor[c, j], log_diag[c, j].exp() + model.epsilon
            )
            terms.append(log_pi[j] + normal.log_prob(x))
        out[:, c] = log_eta[c] + torch.logsumexp(torch.stack(terms), dim=0)

    return out


def test_hierarchical_posterior_is_bayes():
    torch.manual_seed(0)
    x, _ = blobs()
    model = small(HierarchicalCPMM, trajectories=3, learn_weights=True)
    model.initialize(x, steps=0)
    with torch.no_grad():
        model.logits.copy_(torch.tensor([0.2, -0.5, 0.1]))
    model.eval()

    # against float64: the float32 results to rounding
    joint = brute_force_log_joint(model, x)
    proba = model.predict_proba(x).double()
    assert torch.allclose(proba.sum(dim=-1), torch.ones(len(x)).double(), atol=1e-6)
    assert torch.allclose(proba, torch.softmax(joint, dim=-1), atol=1e-5)
    assert_same_labels(model.predict(x), joint)
    log_prob = model().log_prob(x).double()
    assert torch.allclose(log_prob, torch.logsumexp(joint, dim=-1), **LOG_PROB)

    # the joint of (x, y): log eta_y + log p(x | y), which marginalizes to p(x)
    y = torch.randint(3, (len(x),))
    assert torch.allclose(
        model.joint_log_prob(x, y).double(), joint.gather(-1, y[:, None])[:, 0], **LOG_PROB
    )
    for bad in (y + 3, y - 1, y.double()):
        with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
            model.joint_log_prob(x, bad)


def test_entropy_by_hand():
    torch.manual_seed(0)
    x = torch.randn(40, 2)
    model = small(HierarchicalCPMM, trajectories=3, random_times=6).eval()

    proba = model.predict_proba(x).double()
    mean = [sum(proba[n, k].item() for n in range(40)) / 40 for k in range(3)]
    expected = -sum(p * math.log(p) for p in mean)

    assert math.isclose(model.entropy(x).item(), expected, rel_tol=1e-4)
    assert 0 <= expected <= math.log(3)

    # from a given distribution: the same pseudotimes as its likelihood in training mode
    model.initialize(blobs()[0], steps=0)
    model.train()
    d = model()
    assert torch.allclose(model.entropy(x, d=d), model.entropy(x, d=d))
    assert not torch.allclose(model.entropy(x, d=d), model.entropy(x))  # new pseudotimes


def test_supervised_initialization():
    torch.manual_seed(0)
    x, y = blobs()
    model = small(HierarchicalCPMM, trajectories=3)
    model.initialize(x, "kmeans", y=y, steps=100, lr=1e-2)
    model.eval()

    # every trajectory runs through its class (its start, at the first sub-cluster of
    # the path, may be an outlier of its class), and the classifier is right
    loc = model.extract().phi[2]
    nearest = (loc[:, :, None] - x).square().sum(dim=-1).argmin(dim=-1)  # (C, G)
    assert (y[nearest] == torch.arange(3)[:, None]).float().mean(dim=-1).min() >= 0.8
    assert (model.predict(x) == y).float().mean() > 0.97

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    before = model.joint_log_prob(x, y).mean().detach()
    for _ in range(10):
        loss = -model.joint_log_prob(x, y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and -loss > before - 0.5


# training


def fit(model, x, steps, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = x[torch.randint(len(x), (256,))]
        loss = -model().log_prob(batch).mean()
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for p in model.parameters():
            assert torch.isfinite(p).all()
    return model.eval()


def test_fit_two_circles_improves():
    torch.manual_seed(0)
    x, _ = two_circles(1024)
    model = small(components=12, hidden_features=(32, 32))
    model.initialize(x, strategy="random")
    model.eval()
    before = model().log_prob(x).mean()

    fit(model, x, steps=150)
    after = model().log_prob(x).mean()
    assert after > before + 1.0, (before, after)


@pytest.mark.parametrize(
    "steps, data",
    [
        (30, "spiral"),
        pytest.param(3000, "spiral", marks=pytest.mark.slow),
        pytest.param(3000, "two_circles", marks=pytest.mark.slow),
    ],
)
def test_no_nan_long_run(steps, data):
    from contmix import datasets

    torch.manual_seed(0)
    x, _ = getattr(datasets, data)(1024)
    model = small(HierarchicalCPMM, trajectories=5, components=10, hidden_features=(32, 32))
    model.initialize(x, steps=20, lr=1e-2)

    evaluations = []
    model.dynamics.register_forward_hook(lambda *_: evaluations.append(1))
    solves = []
    model.register_forward_pre_hook(lambda *_: solves.append(len(evaluations)))

    fit(model, x, steps=steps, lr=3e-3)  # default solver: dopri5, max_steps=100
    assert torch.isfinite(model().log_prob(x)).all()

    # dynamics evaluations per training solve stay bounded (no stiff, stalling solve):
    # about 20 to 60 in practice, far below the budget (100 steps of 6 per interval)
    nfe = torch.diff(torch.tensor(solves[: steps + 1]))
    assert nfe.max() <= 200, nfe.max()


def test_double_precision():
    torch.manual_seed(0)
    x = torch.randn(30, 2, dtype=torch.float64)
    model = small(HierarchicalCPMM, trajectories=2).double()
    model.initialize(x, steps=3)
    assert model().log_prob(x).dtype == torch.float64
    assert model.eval().extract().phi[2].dtype == torch.float64


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
def test_initialize_reports_the_fit(cls):
    torch.manual_seed(0)
    x, _ = blobs(60)
    model = small(cls, trajectories=2) if cls is HierarchicalCPMM else small()
    report = model.initialize(x, steps=20, progress=False)
    assert report is model.fit_report and report.strategy == "em"
    with torch.no_grad():  # the mean log-likelihood of x at the grid, once initialized
        expected = model.eval()().log_prob(x).double().mean().item()
    assert math.isclose(report.lower_bound, expected, rel_tol=1e-4, abs_tol=1e-4)

    with unchanged(model), pytest.raises(TypeError, match="progress"):
        model.initialize(x, steps=1, progress="yes")


def test_cpmm_predict_proba_is_bayes():
    torch.manual_seed(0)
    model = small().double().eval()
    x = torch.randn(20, 2, dtype=torch.float64)
    d = model()
    joint = d.logits.log_softmax(dim=-1) + d.base.log_prob(x[:, None])
    assert torch.allclose(model.predict_proba(x), joint.softmax(dim=-1), atol=1e-12)
    assert torch.equal(model.predict(x), model.predict_proba(x).argmax(dim=-1))
