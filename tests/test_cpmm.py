r"""Tests of CPMM and HierarchicalCPMM (``contmix.mixtures.cpmm``): shapes, the
extracted MFAs, the hierarchical posterior and entropy, empty batches, training, and
models of images. The base they share (solve, cache, initialization) is tested in
``test_continuous.py``."""

import io
import math

import pytest
import torch

from data import plane
from helpers import train
from models import ode
from torch.distributions import LowRankMultivariateNormal

from contmix import CPMM, GMM, MFA, HierarchicalCPMM, HierarchicalMFA, Solver
from contmix.datasets import two_circles
from contmix.nn import ConvDynamics

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


# shapes


def test_shapes_unconditional():
    torch.manual_seed(0)
    model = ode(components=5, rank=2)
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
    model = ode(context=3)
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

    hier = ode(HierarchicalCPMM, context=3, trajectories=4)
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

    model = ode(HierarchicalCPMM, context=1, trajectories=2, components=3).double()
    model.initialize(x, y=y, steps=0)
    assert torch.allclose(
        model.outer_logits(c[:2]).softmax(-1), torch.tensor(0.5).double(), atol=0.02
    )

    train(model, lambda: -model(c).log_prob(x).mean(), steps=60, lr=1e-2)

    model.eval()
    eta = model.outer_logits(torch.tensor([[0.0], [1.0]]).double()).softmax(-1)
    group = model.predict(torch.tensor([[-4.0, 0.0]]).double(), torch.tensor([[0.0]]).double())
    assert eta[0, group].item() > 0.75 and eta[1, group].item() < 0.25
    assert torch.allclose(model.extract(c=c[1]).phi[0].softmax(-1), eta[1])


# extraction


def test_extract_equals_eval():
    torch.manual_seed(0)
    x = torch.randn(50, 2)
    model = ode(learn_weights=True, solver=Solver("dopri5", rtol=1e-5, atol=1e-6))
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
    model = ode(HierarchicalCPMM, trajectories=3)
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


# empty batches


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch", [(0,), (2, 0)])
@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
def test_empty_context_batch(cls, batch, training):
    # empty results of the right shapes, as GMM and MFA give
    torch.manual_seed(0)
    options = {"trajectories": 3} if cls is HierarchicalCPMM else {}
    model = ode(cls, context=3, **options).train(training)
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
    model = ode(HierarchicalCPMM, trajectories=3)
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
    x, _ = plane()
    model = ode(HierarchicalCPMM, trajectories=3, learn_weights=True)
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
    model = ode(HierarchicalCPMM, trajectories=3, random_times=6).eval()

    proba = model.predict_proba(x).double()
    mean = [sum(proba[n, k].item() for n in range(40)) / 40 for k in range(3)]
    expected = -sum(p * math.log(p) for p in mean)

    assert math.isclose(model.entropy(x).item(), expected, rel_tol=1e-4)
    assert 0 <= expected <= math.log(3)

    # from a given distribution: the same pseudotimes as its likelihood in training mode
    model.initialize(plane()[0], steps=0)
    model.train()
    d = model()
    assert torch.allclose(model.entropy(x, d=d), model.entropy(x, d=d))
    assert not torch.allclose(model.entropy(x, d=d), model.entropy(x))  # new pseudotimes


def test_supervised_initialization():
    torch.manual_seed(0)
    x, y = plane()
    model = ode(HierarchicalCPMM, trajectories=3)
    model.initialize(x, "kmeans", y=y, steps=100, lr=1e-2)
    model.eval()

    # every trajectory runs through its class (its start, at the first sub-cluster of
    # the path, may be an outlier of its class), and the classifier is right
    loc = model.extract().phi[2]
    nearest = (loc[:, :, None] - x).square().sum(dim=-1).argmin(dim=-1)  # (C, G)
    assert (y[nearest] == torch.arange(3)[:, None]).float().mean(dim=-1).min() >= 0.8
    assert (model.predict(x) == y).float().mean() > 0.97

    model.train()
    before = model.joint_log_prob(x, y).mean().detach()
    loss = train(model, lambda: -model.joint_log_prob(x, y).mean(), steps=10, lr=1e-3)
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
    model = ode(components=12, hidden_features=(32, 32))
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
    model = ode(HierarchicalCPMM, trajectories=5, components=10, hidden_features=(32, 32))
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


# the penalty towards the start's diagonals


@pytest.mark.parametrize(
    "cls, strategy", [(CPMM, "em"), (HierarchicalCPMM, "em"), (CPMM, "kmeans")]
)
def test_penalty_is_the_shift_from_the_start(cls, strategy):
    torch.manual_seed(0)
    x = torch.randn(200, 2) * torch.tensor([0.1, 3.0])
    model = ode(cls, trajectories=2, components=4) if cls is HierarchicalCPMM else ode(cls)
    model.initialize(x, strategy, steps=20)
    start = model.extract().phi[-1].double().exp() + model.epsilon  # the start's diagonals
    assert model.penalty(model()) < 1e-10

    train(model, lambda: -model().log_prob(x).mean(), steps=20, lr=1e-2)
    d = model()
    diag = (d.base.base if cls is HierarchicalCPMM else d.base).cov_diag.double()
    by_hand = (diag.log() - start.log().view(diag.shape)).square().sum(-1).mean()
    assert by_hand > 1e-4  # training moved them
    torch.testing.assert_close(model.penalty(d).double(), by_hand, rtol=1e-4, atol=1e-7)


def test_penalty_in_float32_at_the_floor():
    # diagonals at the floor (e^-10 + 1e-6) and large (1e4), a start far from both:
    # the float32 penalty is the float64 one to rounding
    from contmix.distributions import GaussianMixture, LowRankNormal
    from contmix.mixtures.penalty import diagonal_shift

    g = torch.Generator().manual_seed(0)
    diag = torch.cat((torch.full((3, 40), math.exp(-10) + 1e-6), torch.full((3, 40), 1e4)), -1)
    diag = diag * (1 + 1e-3 * torch.rand(3, 80, generator=g, dtype=torch.float64))
    start = 5 * torch.randn(3, 80, generator=g, dtype=torch.float64)
    values = []
    for dtype in (torch.float32, torch.float64):
        zeros = torch.zeros(3, 80, dtype=dtype)
        base = LowRankNormal(zeros, zeros.unsqueeze(-1), diag.to(dtype))
        d = GaussianMixture(base, torch.zeros(3, dtype=dtype))
        values.append(diagonal_shift(d, start.to(dtype)).double())

    torch.testing.assert_close(values[0], values[1], rtol=1e-6, atol=0)


def test_penalty_keeps_the_diagonals_of_few_samples():
    # 40 samples for 4 components in 16-D: maximum likelihood shrinks the diagonals
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    shrunk = {}
    for weight in (0.0, 1.0):
        model = CPMM(16, components=4, rank=1, hidden_features=(32,))
        model.initialize(x, steps=50, generator=torch.Generator().manual_seed(0))

        def loss(model=model, weight=weight):
            d = model()
            return -d.log_prob(x).mean() + weight * model.penalty(d)

        train(model, loss, steps=150, lr=1e-2)
        with torch.no_grad():
            log_diag = model().base.cov_diag.log()
        shrunk[weight] = (model.start_log_diag - log_diag).mean().item()

    assert shrunk[0.0] > 0.15, shrunk  # without it the noise shrinks
    assert abs(shrunk[1.0]) < shrunk[0.0] / 4, shrunk


def test_penalty_start_in_the_state_dict():
    torch.manual_seed(0)
    x = torch.randn(100, 2)
    model = ode(HierarchicalCPMM, trajectories=2, components=4)
    model.initialize(x, steps=10)
    train(model, lambda: -model().log_prob(x).mean(), steps=10, lr=1e-2)
    penalty = model.penalty(model()).detach()
    assert penalty > 0

    # saved with the start: the same penalty after a strict load
    fresh = ode(HierarchicalCPMM, trajectories=2, components=4)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.penalty(fresh()), penalty)

    # saved without it (before contmix had it) or for another grid: the start is the
    # loaded model itself, and the load is still strict
    old = {k: v for k, v in model.state_dict().items() if k != "start_log_diag"}
    for state, components in ((old, 4), (model.state_dict(), 6)):
        fresh = ode(HierarchicalCPMM, trajectories=2, components=components)
        fresh.load_state_dict(state)
        assert fresh.penalty(fresh()) < 1e-10
        diag = fresh().base.base.cov_diag
        torch.testing.assert_close(fresh.start_log_diag, diag.log())
    with pytest.raises(RuntimeError, match="Unexpected"):
        fresh.load_state_dict(old | {"other": torch.zeros(1)})


def test_penalty_needs_the_models_distribution():
    model = ode(CPMM)
    with pytest.raises(TypeError, match="model\\(c\\)"):
        model.penalty(torch.distributions.Normal(0.0, 1.0))

    model = ode(CPMM, random_times=3)  # training mode: 3 random pseudotimes, not the grid
    with pytest.raises(ValueError, match=r"model\.eval"):
        model.penalty(model())


def test_double_precision():
    torch.manual_seed(0)
    x = torch.randn(30, 2, dtype=torch.float64)
    model = ode(HierarchicalCPMM, trajectories=2).double()
    model.initialize(x, steps=3)
    assert model().log_prob(x).dtype == torch.float64
    assert model.eval().extract().phi[2].dtype == torch.float64


def test_cpmm_predict_proba_is_bayes():
    torch.manual_seed(0)
    model = ode().double().eval()
    x = torch.randn(20, 2, dtype=torch.float64)
    d = model()
    joint = d.logits.log_softmax(dim=-1) + d.base.log_prob(x[:, None])
    assert torch.allclose(model.predict_proba(x), joint.softmax(dim=-1), atol=1e-12)
    assert torch.equal(model.predict(x), model.predict_proba(x).argmax(dim=-1))


# spherical diagonals: D = d I (the paper's "constant diagonal")


@pytest.mark.parametrize("cls", [CPMM, HierarchicalCPMM])
@pytest.mark.parametrize("strategy", ["em", "kmeans", "random"])
def test_spherical_diagonals(cls, strategy):
    torch.manual_seed(0)
    x = torch.randn(300, 3) * torch.tensor([0.1, 1.0, 3.0])
    sizes = dict(trajectories=2) if cls is HierarchicalCPMM else {}
    model = cls(3, components=4, rank=1, spherical=True, hidden_features=(16,), **sizes)
    full = cls(3, components=4, rank=1, hidden_features=(16,), **sizes)
    assert model.layout.size == full.layout.size - (1 + 2) * (3 - 1)  # augmented twice over
    model.initialize(x, strategy, steps=10, generator=torch.Generator().manual_seed(0))

    d = model()
    inner = d.base if cls is HierarchicalCPMM else d
    diag = inner.base.cov_diag
    assert torch.equal(diag, diag[..., :1].expand_as(diag))  # one variance per component
    assert torch.allclose(model.start_log_diag.view_as(diag), diag.log().detach())

    # the density is that of torch's low-rank normals with those parameters
    logits, loc, factor, log_diag = model.parameters_of(model.states().squeeze(-3))
    spread = torch.ones_like(loc) * (log_diag[..., :1].exp() + model.epsilon)
    components = LowRankMultivariateNormal(loc, factor, spread).log_prob(x[:, None, None])
    inner_log_prob = (components + logits.log_softmax(dim=-1)).logsumexp(dim=-1)
    if cls is HierarchicalCPMM:
        expected = (inner_log_prob + d.logits.log_softmax(dim=-1)).logsumexp(dim=-1)
    else:
        expected = inner_log_prob.squeeze(-1)
    assert torch.allclose(d.log_prob(x), expected, **LOG_PROB)

    with torch.no_grad():
        assert torch.allclose(model.eval().extract()().log_prob(x), d.log_prob(x), **LOG_PROB)

    # the one log-variance of each trajectory's state trains
    d.log_prob(x).mean().backward()
    assert model.start.grad[..., model.layout.slices["log_diag"]].abs().min() > 0


def test_spherical_conditional():
    torch.manual_seed(0)
    x, c = torch.randn(200, 3) * torch.tensor([0.1, 1.0, 3.0]), torch.randn(50, 2)
    model = HierarchicalCPMM(
        3, context=2, trajectories=2, components=3, spherical=True, hidden_features=(8,)
    )
    model.initialize(x, generator=torch.Generator().manual_seed(0))
    diag = model(c).base.base.cov_diag
    assert diag.shape == (50, 2, 3, 3)
    assert torch.equal(diag, diag[..., :1].expand_as(diag))
    start = model.start_log_diag  # the fit's, for a conditional model: spherical too
    assert torch.equal(start, start[..., :1].expand_as(start))


def test_spherical_cpmm_reaches_the_closed_form_of_probabilistic_pca():
    # with one component of rank R, a spherical CPMM is probabilistic PCA, whose maximum
    # likelihood has a closed form (Tipping and Bishop, 1999): the top R eigenvectors of
    # the covariance, d the mean of the other eigenvalues
    torch.manual_seed(0)
    x = torch.randn(4000, 1) @ (2 * torch.randn(1, 8)) + 0.5 * torch.randn(4000, 8) + 3.0
    values, vectors = torch.linalg.eigh(torch.cov(x.double().T, correction=0))
    d = values[:-1].mean()
    factor = vectors[:, -1:] * (values[-1:] - d).sqrt()
    best = LowRankMultivariateNormal(x.double().mean(0), factor, d.expand(8))
    optimum = best.log_prob(x.double()).mean()

    model = CPMM(8, components=1, rank=1, spherical=True, hidden_features=(32,))
    model.initialize(x, steps=100, generator=torch.Generator().manual_seed(0))
    train(model, lambda: -model().log_prob(x).mean(), steps=300, lr=1e-2)

    with torch.no_grad():  # the float32 parameters, evaluated in float64
        fit = model.double()()
        log_prob = fit.log_prob(x.double()).mean()
    assert log_prob < optimum + 1e-5  # no spherical model does better (a diagonal: 5e-4)
    assert log_prob > optimum - 1e-4
    assert torch.allclose(fit.base.cov_diag, d, rtol=1e-4)


# images: the state in image shape, CNN dynamics

SHAPE = (2, 5, 6)  # (C, H, W)


def images(n: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, *SHAPE).flatten(1)


def test_image_cpmm_trains_and_extracts():
    x = images()
    model = CPMM(SHAPE, components=4, rank=2, hidden_features=(8, 8))
    assert isinstance(model.dynamics, ConvDynamics)
    assert model.features == 60 and model.layout.channels == 4 * 2 + 16

    model.initialize(x, steps=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = -model().log_prob(x).mean()
    for _ in range(5):
        loss = -model().log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
        optimizer.step()

    model.eval()
    after = -model().log_prob(x).mean()
    assert after < before

    # the same parameters through another code path (copies against views of the
    # states): equal to float32 rounding, 1e-5 relative of log p ~ -85 in 60 dimensions
    mfa = model.extract()
    with torch.no_grad():
        assert torch.allclose(mfa().log_prob(x), model().log_prob(x), **LOG_PROB)


def test_image_hierarchical_cpmm_separate_and_context():
    x = images()
    model = HierarchicalCPMM(
        SHAPE, trajectories=3, components=4, hidden_features=(4,), separate=True
    )
    model.initialize(x, steps=0)
    model.eval()
    assert model.dynamics.copies == 3

    with torch.no_grad():  # the extracted model's labels, but at float32 near-ties
        assert_same_labels(model.extract().predict(x), model().joint(x))

    conditional = CPMM(SHAPE, context=2, components=3, hidden_features=(4,))
    c = torch.randn(64, 2)
    assert conditional(c).log_prob(x).shape == (64,)
    assert conditional.extract(c=c[0])().log_prob(x).shape == (64,)


def test_image_shape_errors():
    with pytest.raises(ValueError, match="C, H, W"):
        CPMM((8, 8), components=3)
    with pytest.raises(ValueError, match="weights"):
        CPMM(SHAPE, components=3, learn_weights=True)
    with pytest.raises(ValueError, match="spherical=False or flat"):
        CPMM(SHAPE, components=3, spherical=True)
    with pytest.raises(ValueError, match="60"):  # images must be flattened
        CPMM(SHAPE, components=3, hidden_features=(4,)).initialize(torch.randn(20, *SHAPE))
