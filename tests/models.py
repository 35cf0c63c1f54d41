r"""The registry of the models that the suites check one by one (importable as
``models``: pytest puts the folder of the tests on the path).

Each entry builds a small model of its family, ``MODELS[name].build(features,
context=0, hidden=None, **sizes)`` (other sizes where a suite needs them), and says what
the model can do, so that a suite selects the models by capability instead of keeping
its own list. A new model goes here, and the cross-cutting suites (battery, properties,
persistence, cuda, ddp) check it.
"""

from dataclasses import dataclass, field

import torch

from contmix import CPMM, CWM, GMM, MFA, HierarchicalCPMM, HierarchicalMFA

GMM_STRATEGIES = ("random", "kmeans", "kmeans++", "em")
MFA_STRATEGIES = ("random", "kmeans", "kmeans++", "fa", "em")
ODE_STRATEGIES = ("random", "kmeans")  # the battery leaves out the slower "em"


@dataclass(frozen=True)
class Model:
    r"""A model class with small sizes and its capabilities."""

    cls: type
    family: str  # gmm, mfa, cwm, hmfa, cpmm or hcpmm
    strategies: tuple[str, ...]  # of initialize; the first is the one the suites use
    few: int  # a number of samples too few for initialize
    sizes: dict = field(default_factory=dict)  # the small sizes of the constructor
    image: bool = False  # features of shape (C, 1, 1) instead of a vector
    contextual: bool = False  # also checked with a context (a sample of the families)

    @property
    def ode(self) -> bool:
        r"""An ODE model: fitted by gradient steps after its start, with ``extract``."""

        return self.family in ("cpmm", "hcpmm")

    @property
    def hierarchical(self) -> bool:
        r"""Groups of components, fitted with labels ``y`` too."""

        return self.family in ("hmfa", "hcpmm")

    @property
    def mixture(self) -> bool:
        r"""A mixture of Gaussians: ``marginal``, ``condition`` and ``mean``."""

        return self.family != "cwm"

    def build(
        self, features: int = 2, context: int = 0, hidden: tuple | None = None, **sizes
    ) -> torch.nn.Module:
        r"""The model, of the registry's sizes unless ``sizes`` say otherwise; ``hidden``
        replaces the hidden features of the networks that the registry sizes (CWM's, the
        dynamics), not those of the context networks of the other models."""

        shape = (features, 1, 1) if self.image else features
        if hidden is not None and "hidden_features" in self.sizes:
            sizes = {"hidden_features": hidden, **sizes}
        return self.cls(shape, context=context, **{**self.sizes, **sizes})


H = dict(hidden_features=(8,))  # CWM's networks and the ODE models' dynamics


def gmm(covariance: str, tied: bool = False, **kwargs) -> Model:
    sizes = dict(components=3, covariance_type=covariance, tied=tied)
    return Model(GMM, "gmm", GMM_STRATEGIES, 3, sizes, **kwargs)


MODELS = {
    "gmm-full": gmm("full", contextual=True),
    "gmm-full-tied": gmm("full", tied=True),
    "gmm-diagonal": gmm("diagonal"),
    "gmm-diagonal-tied": gmm("diagonal", tied=True, contextual=True),
    "gmm-spherical": gmm("spherical"),
    "gmm-spherical-tied": gmm("spherical", tied=True),
    "mfa": Model(MFA, "mfa", MFA_STRATEGIES, 3, dict(components=3, rank=1), contextual=True),
    "cwm-diagonal": Model(CWM, "cwm", GMM_STRATEGIES, 3, dict(components=3, **H)),
    "cwm-affine": Model(
        CWM, "cwm", GMM_STRATEGIES, 3, dict(components=3, maps="affine", **H), contextual=True
    ),
    "hmfa": Model(
        HierarchicalMFA,
        "hmfa",
        GMM_STRATEGIES,
        2,
        dict(groups=2, components=2, rank=1),
        contextual=True,
    ),
    "cpmm": Model(
        CPMM, "cpmm", ODE_STRATEGIES, 1, dict(components=4, rank=1, **H), contextual=True
    ),
    "hcpmm": Model(
        HierarchicalCPMM,
        "hcpmm",
        ODE_STRATEGIES,
        2,
        dict(trajectories=2, components=3, rank=1, **H),
        contextual=True,
    ),
    "hcpmm-spherical": Model(
        HierarchicalCPMM,
        "hcpmm",
        ODE_STRATEGIES,
        2,
        dict(trajectories=2, components=3, rank=1, spherical=True, **H),
    ),
    "cpmm-image": Model(
        CPMM,
        "cpmm",
        ODE_STRATEGIES,
        1,
        dict(components=3, rank=1, hidden_features=(4,)),
        image=True,
    ),
}

# the models of vectors (the battery's data are vectors)
VECTORS = [name for name, m in MODELS.items() if not m.image]
CONTEXTUAL = [name for name, m in MODELS.items() if m.contextual]
ODES = [name for name, m in MODELS.items() if m.ode and not m.image]
# the models of test_zuko and test_func: the models of vectors, with one tied GMM
BASES = [name for name in VECTORS if name not in ("gmm-diagonal-tied", "gmm-spherical-tied")]


def build(name: str, features: int = 2, context: int = 0, seed: int = 0, **sizes):
    r"""The model ``name``, built from the seed ``seed``."""

    torch.manual_seed(seed)
    return MODELS[name].build(features, context, **sizes)


def ode(cls: type = CPMM, **sizes) -> torch.nn.Module:
    r"""A continuous mixture of 2-D data, ``CPMM`` or ``HierarchicalCPMM``: 6 components
    of rank 1 and dynamics of two hidden layers of 16 unless ``sizes`` say otherwise (the
    model of the tests of the continuous mixtures)."""

    return cls(2, **(dict(components=6, rank=1, hidden_features=(16, 16)) | sizes))


def initialize_kwargs(name: str, steps: int = 2) -> dict:
    r"""The arguments of a short ``initialize``: a few gradient steps for the ODE models."""

    return {"steps": steps} if MODELS[name].ode else {}
