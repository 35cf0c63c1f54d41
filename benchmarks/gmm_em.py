r"""EM fit: contmix.em.fit_gmm vs sklearn.mixture.GaussianMixture (full covariance).

Both fit the same data (N=50,000, D=16, K=16, drawn from a random mixture of 16
overlapping full-covariance Gaussians) from the same start: k-means++ centres, hard
assignment, one M-step (contmix.em.gmm_m_step), given to scikit-learn as weights_init,
means_init and precisions_init. Same tol (1e-3), same reg_covar (1e-6), max_iter=1000.
Only the fit is timed; the three fits (scikit-learn, contmix float64, contmix float32)
alternate within each run, and the table gives medians over the runs.

Run (a few minutes on 2 idle cores):

    python benchmarks/gmm_em.py            # the figures of docs/benchmarks/gmm.md
    python benchmarks/gmm_em.py --quick    # a smoke run, small data
    python benchmarks/gmm_em.py --device cuda   # contmix on the GPU, scikit-learn on the CPU

contmix runs on ``--device`` (default: cuda when available); scikit-learn always runs on
the CPU, and the table says where each row ran. It prints markdown tables.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from machine import add_device_argument, blas_info, cpu_model, describe, timed
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from contmix.cluster import kmeans_plusplus
from contmix.em import fit_gmm, gaussian_mixture, gmm_m_step
from contmix.mixtures.start import hard_responsibilities


def dataset(N: int, D: int, K: int, seed: int = 0) -> Tensor:
    r"""Samples of a random mixture of K full-covariance Gaussians: means with standard
    deviation 0.5 per dimension, covariances with random axes and variances between
    exp(-2) and exp(0.5), weights softmax(0.5 z)."""

    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    means = 0.5 * torch.randn(K, D, generator=g, dtype=f64)
    axes = torch.linalg.qr(torch.randn(K, D, D, generator=g, dtype=f64)).Q
    variances = torch.empty(K, D, dtype=f64).uniform_(-2, 0.5, generator=g).exp()
    covariances = axes @ torch.diag_embed(variances) @ axes.mT
    weights = torch.softmax(0.5 * torch.randn(K, generator=g, dtype=f64), dim=0)

    true = MixtureSameFamily(Categorical(weights), MultivariateNormal(means, covariances))
    torch.manual_seed(seed)
    x = true.sample((N,))

    posterior = torch.softmax(true.component_distribution.log_prob(x[:, None]) + weights.log(), -1)
    top = posterior.max(dim=-1).values
    print(
        f"Data: N={N}, D={D}, K={K}; true mixture: mean log-likelihood "
        f"{true.log_prob(x).mean():.4f}, mean max posterior {top.mean():.3f}, "
        f"{(top < 0.9).double().mean():.1%} of samples with max posterior < 0.9.\n"
    )

    return x


def sklearn_fit(X: np.ndarray, start, tol: float, reg: float, max_iter: int):
    weights, means, precisions = start
    sk = SKGaussianMixture(
        len(weights),
        covariance_type="full",
        tol=tol,
        reg_covar=reg,
        max_iter=max_iter,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter()
        sk.fit(X)
        elapsed = time.perf_counter() - t

    return elapsed, sk


def contmix_fit(x: Tensor, start, tol: float, reg: float, max_iter: int):
    return timed(lambda: fit_gmm(x, *start, "full", False, tol, max_iter, reg), x.device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N=5000, 2 runs")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)
    args = parser.parse_args()

    N, D, K = (5_000 if args.quick else 50_000), 16, 16
    runs = 2 if args.quick else args.runs
    tol, reg, max_iter = 1e-3, 1e-6, 1000

    torch.set_num_threads(args.threads)
    load = os.getloadavg()

    print("## Setup\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"- torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"- threadpoolctl: {blas_info()}")
    print(f"- contmix device: {describe(args.device)}; scikit-learn: cpu")
    print(f"- load average before: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)\n")

    x_cpu = dataset(N, D, K, args.seed)
    X = x_cpu.numpy()  # scikit-learn's copy, on the CPU
    x = x_cpu.to(args.device)

    # one start for everyone: k-means++ -> hard assignment -> M-step
    torch.manual_seed(args.seed + 1)
    centers = kmeans_plusplus(x, K)
    start = gmm_m_step(x, hard_responsibilities(x, centers), "full", False, reg)
    start_sk = (
        start[0].exp().cpu().numpy(),
        start[1].cpu().numpy(),
        torch.linalg.inv(start[2]).cpu().numpy(),
    )
    start32 = [p.float() for p in start]
    x32 = x.float()

    fits = {
        "scikit-learn (float64)": lambda it: sklearn_fit(X, start_sk, tol, reg, it),
        "contmix (float64)": lambda it: contmix_fit(x, start, tol, reg, it),
        "contmix (float32)": lambda it: contmix_fit(x32, start32, tol, reg, it),
    }
    names = list(fits)
    devices = {names[0]: "cpu"} | dict.fromkeys(names[1:], str(x.device))

    for name in names:  # warm-up
        fits[name](2)

    times = {name: [] for name in names}
    results = {}

    for r in range(runs):
        order = names[r % 3 :] + names[: r % 3]  # alternate who goes first
        for name in order:
            elapsed, results[name] = fits[name](max_iter)
            times[name].append(elapsed)
            print(f"run {r}: {name} {elapsed:.3f} s", file=sys.stderr)  # progress

    sk = results[names[0]]
    log_lik = {names[0]: sk.score(X)}
    iterations = {names[0]: sk.n_iter_}
    converged = {names[0]: sk.converged_}

    for name in names[1:]:
        fit = results[name]
        params = [p.double() for p in fit[:3]]
        log_lik[name] = gaussian_mixture(*params, "full").log_prob(x).mean().item()
        iterations[name] = len(fit.history)
        converged[name] = fit.converged

    load = os.getloadavg()
    print(f"Load average after: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min).\n")

    print(f"## EM fit, N={N}, D={D}, K={K}, full covariance, median of {runs} runs\n")
    print(
        "| implementation | device | median (s) | min (s) | speed-up vs sklearn | iterations | "
        "converged | final mean log-lik | difference vs sklearn (nats) |"
    )
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")

    median = {name: statistics.median(times[name]) for name in names}

    for name in names:
        print(
            f"| {name} | {devices[name]} | {median[name]:.3f} | {min(times[name]):.3f} | "
            f"{median[names[0]] / median[name]:.1f}x | {iterations[name]} | "
            f"{converged[name]} | {log_lik[name]:.6f} | "
            f"{abs(log_lik[name] - log_lik[names[0]]):.2e} |"
        )

    print("\n## Targets\n")
    for name in names[1:]:
        speed = median[names[0]] / median[name]
        gap = abs(log_lik[name] - log_lik[names[0]])
        print(
            f"- {name} on {devices[name]}: {speed:.1f}x faster "
            f"({'met' if speed >= 5 else 'NOT met'}: >= 5x), "
            f"log-likelihood within {gap:.1e} nats ({'met' if gap <= 0.01 else 'NOT met'}: "
            f"<= 0.01), {iterations[name]} iterations vs {iterations[names[0]]}."
        )

    print("\nAll times (s):\n")
    for name in names:
        print(f"- {name}: {', '.join(f'{t:.3f}' for t in times[name])}")


if __name__ == "__main__":
    main()
