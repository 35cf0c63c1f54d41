r"""Initialization quality: how often each fit reaches the best optimum.

The data of each seed: 16 well-separated clusters in 16 dimensions, centres
``randn(16, 16) * 4``, N = 20,000 samples of uniformly drawn clusters with unit
isotropic noise, in float32 (float64 for scikit-learn), drawn as
``torch.manual_seed(seed)`` followed by global draws would (from a generator, though).
The fits, each from the seed of the data:

* scikit-learn's :class:`~sklearn.mixture.GaussianMixture` (its defaults: full
  covariances, k-means initialization, ``n_init=1``, ``random_state=seed``);
* contmix's ``GMM(16, 16).initialize(x, "em")`` and ``"kmeans"`` (full covariances,
  ``generator=torch.Generator().manual_seed(seed)``, and ``--n-init``);
* contmix's ``MFA(16, 16, rank=2).initialize(x, "em")`` and ``"kmeans"``, alike;
* for each family, EM from the true clusters (the oracle start).

Every fit is scored by its mean log-likelihood on the data, in float64, and so is its
optimum: EM from the fit (float64) to a tolerance of 1e-6, which finds the local
optimum whose basin the fit is in. The best optimum of a family (full GMM, MFA) is the
highest such optimum among its fits of that seed, the oracle's included. A fit is in
the best basin when its optimum is within ``--tol`` (1e-3) nats per sample of the best
one, and at the best optimum when the fit itself is. The two differ for MFA: with
isotropic noise, the likelihood is nearly flat in the loadings and EM at the default
tolerance (1e-3 per iteration) stops about 0.01 nats per sample short of the optimum of
its basin, the oracle's run too, so "in the best basin" is the measure of the start.

Run (about a minute per seed on 2 idle cores):

    python benchmarks/init_quality.py                 # 5 seeds, the figures of the issue
    python benchmarks/init_quality.py --seeds 0 1     # fewer seeds
    python benchmarks/init_quality.py --n-init 3      # contmix with restarts
"""

import argparse
import time
import warnings

import numpy as np
import torch

from machine import add_device_argument, describe
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from torch import Tensor

from contmix import GMM, MFA
from contmix.em import fit_gmm, fit_mfa, gmm_m_step

K, D, N, R = 16, 16, 20_000, 2
POLISH = 1e-6  # the tolerance of EM to the optimum of a fit


def dataset(seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    r"""The samples (float32) and their clusters."""

    g = torch.Generator().manual_seed(seed)  # as torch.manual_seed(seed) and global draws
    centers = torch.randn(K, D, generator=g) * 4
    labels = torch.randint(K, (N,), generator=g)
    x = centers[labels] + torch.randn(N, D, generator=g)

    return x.to(device), labels.to(device)


def gmm_score(x: Tensor, logits: Tensor, means: Tensor, covariances: Tensor) -> float:
    r"""The mean log-likelihood of a full GMM of natural parameters, in float64."""

    gmm = GMM(D, components=K).double().to(x.device)
    with torch.no_grad():
        for p, value in zip(
            gmm.phi, gmm._layout(*(t.double() for t in (logits, means, covariances))), strict=True
        ):
            p.copy_(value)
        return gmm().log_prob(x.double()).mean().item()


def mfa_score(x: Tensor, logits: Tensor, loc: Tensor, factor: Tensor, diag: Tensor) -> float:
    r"""The mean log-likelihood of an MFA of natural parameters, in float64."""

    mfa = MFA(D, components=K, rank=R).double().to(x.device)
    with torch.no_grad():
        for p, value in zip(
            mfa.phi, mfa._layout(*(t.double() for t in (logits, loc, factor, diag))), strict=True
        ):
            p.copy_(value)
        return mfa().log_prob(x.double()).mean().item()


def gmm_scores(x: Tensor, params: tuple[Tensor, ...]) -> tuple[float, float]:
    r"""The score of a GMM fit and that of its optimum: EM from it to a tolerance of
    1e-6 (float64)."""

    x, params = x.double(), [t.double().to(x.device) for t in params]
    polished = fit_gmm(x, *params, tol=POLISH, max_iter=2000)[:3]
    return gmm_score(x, *params), gmm_score(x, *polished)


def mfa_scores(x: Tensor, params: tuple[Tensor, ...]) -> tuple[float, float]:
    r"""The score of an MFA fit and that of its optimum: EM from it to a tolerance of
    1e-6 (float64)."""

    x, params = x.double(), [t.double().to(x.device) for t in params]
    polished = fit_mfa(x, *params, tol=POLISH, max_iter=5000)[:4]
    return mfa_score(x, *params), mfa_score(x, *polished)


def sklearn_fit(x: Tensor, seed: int) -> tuple[Tensor, ...]:
    X = x.double().cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SKGaussianMixture(K, random_state=seed).fit(X)
    return tuple(torch.as_tensor(a) for a in (np.log(sk.weights_), sk.means_, sk.covariances_))


def generator(x: Tensor, seed: int) -> torch.Generator:
    return torch.Generator(x.device).manual_seed(seed)


def gmm_fit(x: Tensor, strategy: str, seed: int, n_init: int) -> tuple[Tensor, ...]:
    gmm = GMM(D, components=K).to(x.device)
    gmm.initialize(x, strategy, n_init=n_init, generator=generator(x, seed))
    return gmm._moments()


def mfa_fit(x: Tensor, strategy: str, seed: int, n_init: int) -> tuple[Tensor, ...]:
    mfa = MFA(D, components=K, rank=R).to(x.device)
    mfa.initialize(x, strategy, n_init=n_init, generator=generator(x, seed))
    with torch.no_grad():
        logits, loc, factor, log_diag = mfa.phi
        return logits.log_softmax(dim=-1), loc, factor, log_diag.exp() + mfa.epsilon


def gmm_oracle(x: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    r"""The hard-assignment M-step of the true clusters (full covariances, float64)."""

    x = x.double()
    return gmm_m_step(x, torch.nn.functional.one_hot(labels, K).double())


def mfa_oracle(x: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    r"""The moments of the true clusters and small loadings (float64)."""

    x = x.double()
    nk = torch.bincount(labels, minlength=K).double()
    loc = torch.zeros(K, D, dtype=x.dtype, device=x.device).index_add_(0, labels, x) / nk[:, None]
    residual = (x - loc[labels]).square()
    diag = torch.zeros_like(loc).index_add_(0, labels, residual) / nk[:, None]
    g = torch.Generator().manual_seed(0)
    factor = 0.1 * torch.randn(K, D, R, generator=g, dtype=torch.float64).to(x.device)
    return (nk / N).log(), loc, factor * diag.sqrt().unsqueeze(-1), diag


def cell(gap: float, basin: bool) -> str:
    r"""A gap, in bold when the fit is in the basin of the best optimum."""

    gap = max(gap, 0.0)
    return f"**-{gap:.4f}**" if basin else f"-{gap:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-init", type=int, default=1, help="contmix's n_init")
    parser.add_argument("--tol", type=float, default=1e-3, help="nats per sample")
    add_device_argument(parser)
    args = parser.parse_args()
    device = args.device

    print(f"# Initialization quality ({describe(device)})\n")
    print(f"K={K}, D={D}, N={N}, MFA rank {R}, contmix n_init={args.n_init}\n")

    n = args.n_init
    fits = {
        "GMM": {
            "scikit-learn GaussianMixture": lambda x, s: sklearn_fit(x, s),
            'contmix GMM "em"': lambda x, s: gmm_fit(x, "em", s, n),
            'contmix GMM "kmeans"': lambda x, s: gmm_fit(x, "kmeans", s, n),
        },
        "MFA": {
            'contmix MFA "em"': lambda x, s: mfa_fit(x, "em", s, n),
            'contmix MFA "kmeans"': lambda x, s: mfa_fit(x, "kmeans", s, n),
        },
    }
    oracles = {"GMM": gmm_oracle, "MFA": mfa_oracle}
    scorers = {"GMM": gmm_scores, "MFA": mfa_scores}
    gaps = {name: [] for family in fits.values() for name in family}

    for seed in args.seeds:
        x, labels = dataset(seed, device)
        for family, methods in fits.items():
            start = time.perf_counter()
            scores = {name: scorers[family](x, f(x, seed)) for name, f in methods.items()}
            best = max(value for _, value in scores.values())
            best = max(best, scorers[family](x, oracles[family](x, labels))[1])
            for name, (raw, polished) in scores.items():
                gaps[name].append((best - raw, best - polished))
            elapsed = time.perf_counter() - start
            print(
                f"seed {seed} {family}: best optimum {best:.4f} nats per sample ({elapsed:.0f} s)"
            )

    print()
    header = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"| fit | {header} | in the best basin | at the best optimum |")
    print("|---|" + "---|" * len(args.seeds) + "---|---|")
    for name, values in gaps.items():
        basin = sum(polished <= args.tol for _, polished in values)
        hits = sum(raw <= args.tol for raw, _ in values)
        cells = " | ".join(cell(raw, polished <= args.tol) for raw, polished in values)
        print(f"| {name} | {cells} | {basin} of {len(values)} | {hits} of {len(values)} |")
    print(
        "\nCells: the gap of the fit to the best optimum of its family (nats per sample); "
        "bold: in the basin of the best optimum (EM from the fit to a tolerance of "
        f"{POLISH:g} reaches it within {args.tol:g}). 'at the best optimum': the fit "
        f"itself within {args.tol:g}."
    )


if __name__ == "__main__":
    main()
