r"""Property-based tests of the mixture algebra (hypothesis, derandomized).

Each property is checked on models with random parameters drawn from a seed that
hypothesis chooses, with the model family, the number of features and components, and
the dimensions of a split drawn alongside.
"""

import math

import models
import torch

from hypothesis import given, settings
from hypothesis import strategies as st
from models import MODELS
from torch import Tensor

from contmix import CWM, GMM, MFA, HierarchicalMFA

FAMILIES = (
    "gmm-full",
    "gmm-diagonal",
    "gmm-spherical",
    "gmm-full-tied",
    "mfa",
    "hmfa",
    "cwm-diagonal",
)
SETTINGS = dict(max_examples=25, deadline=None, derandomize=True)


# the role of each free parameter: "mean" in [-2, 2], "loading" in [-0.5, 0.5], the
# others (logits, log-scales, lower triangles) in [-1, 0]
ROLES = {
    GMM: {"phi.1": "mean"},
    MFA: {"phi.1": "mean", "phi.2": "loading"},
    HierarchicalMFA: {"phi.2": "mean", "phi.3": "loading"},
    CWM: {"phi.0": "mean"},
}
RANGES = {"mean": (-2.0, 2.0), "loading": (-0.5, 0.5), "classifier": (-2.0, 2.0)}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    r"""Draws every parameter of ``model`` uniformly in the range of its role, which
    keeps the standard deviations within :math:`[e^{-1}, 1]` (plus the loadings) and the
    means within :math:`[-2, 2]`; a CWM's classifier is far from constant."""

    generator = torch.Generator().manual_seed(seed)
    roles = ROLES[type(model)]

    with torch.no_grad():
        for name, p in model.named_parameters():
            role = "classifier" if name.startswith("classifier") else roles.get(name)
            low, high = RANGES.get(role, (-1.0, 0.0))
            p.copy_(low + (high - low) * torch.rand(p.shape, generator=generator))

    return model.double()


def build(family: str, features: int, components: int, seed: int):
    return randomize(MODELS[family].build(features, components=components), seed)


def grid(features: int, half: float = 12.0, points: int = 601) -> tuple[Tensor, float]:
    r"""A regular grid of :math:`[-h, h]^D` and the volume of a cell."""

    axis = torch.linspace(-half, half, points, dtype=torch.float64)
    mesh = torch.stack(torch.meshgrid(*[axis] * features, indexing="ij"), dim=-1)
    return mesh.reshape(-1, features), (axis[1] - axis[0]).item() ** features


@settings(**SETTINGS)
@given(
    family=st.sampled_from(FAMILIES),
    features=st.integers(1, 2),
    components=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_log_prob_normalizes(family, features, components, seed):
    r""":math:`\int p(x) \, dx = 1` by a Riemann sum on a grid (the densities are
    smooth and negligible beyond it), and the mean is :math:`\int x p(x) \, dx`."""

    d = build(family, features, components, seed)()
    x, cell = grid(features, points=601 if features == 2 else 2401)

    with torch.no_grad():
        p = d.log_prob(x).exp()

    assert abs(p.sum() * cell - 1) < 1e-3

    if MODELS[family].mixture:
        mean = (p.unsqueeze(-1) * x).sum(dim=0) * cell
        assert torch.allclose(mean, d.mean.detach(), atol=1e-3)


def split(features: int, data) -> list[int]:
    observed = data.draw(
        st.lists(st.integers(0, features - 1), min_size=1, max_size=features - 1, unique=True)
    )
    return observed


MIXTURES = (*[f for f in FAMILIES if MODELS[f].mixture], "cpmm", "hcpmm")


def build_mixture(family: str, features: int, components: int, seed: int):
    if MODELS[family].ode:
        return models.build(family, features, seed=seed, components=components).double().eval()

    return build(family, features, components, seed)


@settings(**SETTINGS)
@given(
    family=st.sampled_from(MIXTURES),
    features=st.integers(2, 4),
    components=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    mask=st.booleans(),
    data=st.data(),
)
def test_marginal_and_condition_agree_with_joint(family, features, components, seed, mask, data):
    r""":math:`\log p(x) = \log p(x_A) + \log p(x_B \mid x_A)` for a random split of the
    dimensions into :math:`A` (given as indices or a boolean mask, in any order) and
    its complement :math:`B`, in increasing order."""

    model = build_mixture(family, features, components, seed)
    observed = split(features, data)
    rest = [i for i in range(features) if i not in observed]

    with torch.no_grad():
        d = model()
        torch.manual_seed(seed)
        x = d.sample((16,))

        dims = observed
        if mask:
            dims = torch.zeros(features, dtype=torch.bool)
            dims[observed] = True
            observed = sorted(observed)

        joint = d.log_prob(x)
        marginal = d.marginal(dims).log_prob(x[:, observed])
        conditional = d.condition(dims, x[:, observed]).log_prob(x[:, rest])

    assert torch.allclose(joint, marginal + conditional, atol=1e-8)


@settings(**SETTINGS)
@given(
    family=st.sampled_from((*FAMILIES, "cpmm", "hcpmm")),
    features=st.integers(1, 3),
    components=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_posterior_is_softmax_of_joint(family, features, components, seed):
    r""":math:`p(k \mid x) = \operatorname{softmax}_k(\log \pi_k + \log p_k(x))`, it
    sums to one, :math:`\log p(x) = \operatorname{logsumexp}_k` of the joint and the
    prediction is its argmax."""

    model = build_mixture(family, features, components, seed)

    with torch.no_grad():
        d = model()
        torch.manual_seed(seed)
        x = 3 * torch.randn(32, features, dtype=torch.float64)
        joint = d.joint(x)
        posterior = d.posterior(x)

    assert torch.allclose(posterior.exp().sum(dim=-1), torch.ones(32, dtype=torch.float64))
    assert torch.allclose(posterior.exp(), torch.softmax(joint, dim=-1), atol=1e-12)
    assert torch.allclose(d.log_prob(x), torch.logsumexp(joint, dim=-1), atol=1e-10)
    assert torch.equal(d.predict(x), joint.argmax(dim=-1))

    if hasattr(model, "predict_proba"):
        assert torch.allclose(model.predict_proba(x), posterior.exp(), atol=1e-12)


@settings(**{**SETTINGS, "max_examples": 15})
@given(
    hierarchical=st.booleans(),
    features=st.integers(1, 3),
    components=st.integers(2, 5),
    extracted=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_extract_agrees_with_eval(hierarchical, features, components, extracted, seed):
    r"""The extracted mixture has the log-density of the model in evaluation mode, at
    the model's grid and at :math:`G'` other pseudotimes (those of a model built with
    :math:`G'` components and the same parameters)."""

    torch.manual_seed(seed)
    ode = MODELS["hcpmm" if hierarchical else "cpmm"]
    build = lambda G: ode.build(features, components=G, activation="tanh")

    model = build(components).double().eval()
    with torch.no_grad():
        for p in model.dynamics.parameters():
            p.mul_(3)  # trajectories that move
    other = build(extracted).double().eval()
    other.load_state_dict(model.state_dict())

    x = 2 * torch.randn(20, features, dtype=torch.float64)

    with torch.no_grad():
        assert torch.allclose(model.extract()().log_prob(x), model().log_prob(x), atol=1e-10)
        lp = model.extract(extracted)().log_prob(x)
        assert torch.allclose(lp, other().log_prob(x), atol=1e-10)
        if hierarchical:
            assert torch.equal(model.extract().predict(x), model.predict(x))

    # the components moved along the trajectory: the extracted means differ
    if components > 1:
        mixture = model.extract()()
        means = mixture.base.mean if not hierarchical else mixture.base.base.mean
        assert means.flatten(0, -2).std(dim=0).max() > 0


@settings(**{**SETTINGS, "max_examples": 15})
@given(
    family=st.sampled_from(("gmm-full", "gmm-diagonal", "mfa")),
    components=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_log_prob_normalizes_by_importance_sampling(family, components, seed):
    r"""In 3-D, :math:`\mathbb{E}_{q}[p(x) / q(x)] = 1` with :math:`q` a wide Gaussian,
    within 5 standard errors."""

    d = build(family, 3, components, seed)()
    q = torch.distributions.MultivariateNormal(
        torch.zeros(3, dtype=torch.float64), 16 * torch.eye(3, dtype=torch.float64)
    )
    torch.manual_seed(seed)
    x = q.sample((200_000,))

    with torch.no_grad():
        w = (d.log_prob(x) - q.log_prob(x)).exp()

    se = w.std() / math.sqrt(len(w))
    assert abs(w.mean() - 1) < 5 * se + 1e-3
