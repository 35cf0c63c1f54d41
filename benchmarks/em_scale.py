r"""EM at the paper's scale: 250 diagonal Gaussians on Fashion-MNIST (60,000 x 784), contmix
against scikit-learn's GaussianMixture, side by side in one process.

Each run fits, from its own default start (k-means, then EM to tol 1e-3, reg 1e-6, at most
100 iterations):

- contmix: ``GMM(784, components=250, covariance_type="diagonal").initialize(x, "em")``
  (float32 data, EM statistics in float64);
- scikit-learn: ``GaussianMixture(250, covariance_type="diag").fit(x)`` (float64).

It reports the whole fit's time, its iterations, the time of one EM iteration (from the
same fitted start, ``tol=0``, for both: the time of 11 iterations less that of 1, over 10,
so that neither the set-up nor the first E-step counts), the peak resident memory of the
fit (``VmHWM``, reset before each fit) and the test bits/dim of the 256-level pixels
(:func:`contmix.transforms.logit_bits_per_dim`). Times are medians over ``--runs``.

Run (about 8 minutes per run on 2 idle cores at full scale):

    python benchmarks/em_scale.py                      # docs/benchmarks/fashion_mnist.md
    python benchmarks/em_scale.py --limit 5000 --runs 1   # a smoke run

Needs the Debian package dataset-fashion-mnist (``apt-get install dataset-fashion-mnist``).
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from machine import describe, reset_peak, resident
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from contmix import GMM
from contmix.datasets import fashion_mnist
from contmix.em import fit_gmm
from contmix.transforms import logit_bits_per_dim

TOL, REG, MAX_ITER = 1e-3, 1e-6, 100


def measure(fit) -> tuple[float, float, object]:
    reset_peak()
    start = time.perf_counter()
    result = fit()
    return time.perf_counter() - start, resident(), result


def one_iteration(em) -> float:
    r"""The time of one iteration of ``em(iterations)``: that of 11 less that of 1, over 10."""

    times = []
    for iterations in (1, 11):
        start = time.perf_counter()
        em(iterations)
        times.append(time.perf_counter() - start)

    return (times[1] - times[0]) / 10


def contmix_row(x: torch.Tensor, x_test: torch.Tensor, K: int, seed: int) -> dict:
    model = GMM(x.shape[-1], components=K, covariance_type="diagonal")
    g = torch.Generator().manual_seed(seed)
    seconds, memory, report = measure(
        lambda: model.initialize(x, "em", tol=TOL, max_iter=MAX_ITER, reg=REG, generator=g)
    )

    with torch.no_grad():
        bpd = logit_bits_per_dim(model().log_prob(x_test), x_test).mean().item()
        dist = model()
        logits = dist.mixture_distribution.logits
        means = dist.component_distribution.mean
        variances = dist.component_distribution.variance

    def em(iterations: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gmm(x, logits, means, variances, "diagonal", tol=0.0, max_iter=iterations, reg=REG)

    iteration = one_iteration(em)

    return dict(
        seconds=seconds, iterations=report.iterations, iteration=iteration, memory=memory, bpd=bpd
    )


def sklearn_row(x: np.ndarray, x_test: torch.Tensor, K: int, seed: int) -> dict:
    model = GaussianMixture(
        K, covariance_type="diag", tol=TOL, reg_covar=REG, max_iter=MAX_ITER, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        seconds, memory, _ = measure(lambda: model.fit(x))

    log_prob = torch.from_numpy(model.score_samples(x_test.double().numpy()))
    bpd = logit_bits_per_dim(log_prob, x_test.double()).mean().item()

    def em(iterations: int) -> None:
        warm = GaussianMixture(
            K,
            covariance_type="diag",
            tol=0.0,
            reg_covar=REG,
            max_iter=iterations,
            weights_init=model.weights_,
            means_init=model.means_,
            precisions_init=model.precisions_,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warm.fit(x)

    iteration = one_iteration(em)

    return dict(
        seconds=seconds, iterations=model.n_iter_, iteration=iteration, memory=memory, bpd=bpd
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="train images (all: 60,000)")
    parser.add_argument("--components", type=int, default=250)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    x, x_test, _, _ = fashion_mnist(limit=args.limit)
    x64 = x.double().numpy()
    print(f"# {describe('cpu')}; train {tuple(x.shape)}, test {tuple(x_test.shape)}")

    rows = {"contmix": [], "scikit-learn": []}
    for seed in range(args.runs):
        rows["contmix"].append(contmix_row(x, x_test, args.components, seed))
        rows["scikit-learn"].append(sklearn_row(x64, x_test, args.components, seed))
        for name, runs in rows.items():
            print(name, seed, runs[-1], flush=True)

    median = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in rows.items()
    }
    sk = median["scikit-learn"]

    print()
    print(
        "| implementation | fit (s) | iterations | one iteration (s) | peak memory (GiB) "
        "| test bits/dim | fit speed-up | iteration speed-up |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, m in median.items():
        print(
            f"| {name} | {m['seconds']:.1f} | {m['iterations']:.0f} | {m['iteration']:.2f} "
            f"| {m['memory']:.2f} | {m['bpd']:.3f} | {sk['seconds'] / m['seconds']:.2f}x "
            f"| {sk['iteration'] / m['iteration']:.2f}x |"
        )


if __name__ == "__main__":
    main()
