r"""Full-covariance EM in 784-D: the paper's matched GMM (one component per class) on
Fashion-MNIST, contmix's two forms of the EM statistics against scikit-learn's
GaussianMixture(covariance_type="full"), side by side in one process.

Every fit starts from the same parameters: the M-step of the one-hot class labels
(10 components), ``reg`` added to the variances (``--reg``, 1e-3 by default: the background
pixels are nearly constant within a class). The rows:

- contmix, covariance form: ``fit_gmm(x, ..., "full")`` as it runs in 784-D (float32 data,
  float64 statistics): the E-step by a triangular solve with each Cholesky factor, the
  M-step by one (D, N_k) x (N_k, D) product per component over the samples whose
  responsibility is not negligible;
- contmix, sufficient statistics: the same call in the form it took before (and still takes
  below ``contmix.em.gmm.COVARIANCE_FORM`` dimensions): products with
  phi(x) = (x x^T, x, 1), 308,505 numbers per sample, forced here by raising the switch
  (only at the sizes of ``--before``: an iteration at 60,000 samples takes over half an hour);
- scikit-learn: ``GaussianMixture(10, covariance_type="full", weights_init=...,
  means_init=..., precisions_init=...)`` on the float64 data.

Each fit runs ``--iterations`` iterations (``tol=0``) and every iteration is timed
separately: contmix's by a timer around each EM step, scikit-learn's from the start of one
E-step to the start of the next. The time of an iteration is the median of iterations 2 to
n (the first one pays for the caches; this leaves out scikit-learn's own initial M-step and
contmix's pass for the data mean). The peak memory is the peak resident
memory (``VmHWM``, reset before each fit) beyond the resident memory before it, data and
start included in neither. The mean log-likelihood after the fit says that the three
agree.

Run (about 15 minutes on 2 idle cores):

    python benchmarks/gmm_em_full.py                       # N = 3,000 and 60,000
    python benchmarks/gmm_em_full.py --sizes 1000 --before 1000 --iterations 2   # a look

Needs the Debian package dataset-fashion-mnist and scikit-learn. CPU only: the peak memory
is the process's.
"""

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch

from machine import blas_info, describe, reset_peak, resident
from sklearn.mixture import GaussianMixture

import contmix.em.gmm

from contmix.datasets import fashion_mnist
from contmix.em import fit_gmm, gmm_log_likelihood, gmm_m_step
from contmix.em.base import iterate


def measured(fit) -> tuple[float, float, object]:
    r"""The seconds and the peak memory (MiB beyond the resident memory before) of ``fit()``."""

    reset_peak()
    before = resident("VmRSS")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit()
    return time.perf_counter() - start, (resident("VmHWM") - before) * 2**10, result


def median_iteration(times: list[float]) -> float:
    r"""The median of the times of iterations 2 to n (of the only one, if one)."""

    return statistics.median(times[1:] or times)


def contmix_row(x, start, iterations: int, reg: float, form: str) -> dict:
    switch = contmix.em.gmm.COVARIANCE_FORM
    if form == "statistics":
        contmix.em.gmm.COVARIANCE_FORM = x.shape[-1] + 1
    times, modules = [], (contmix.em.gmm, contmix.em.full)

    def timed(step, *args, **kwargs):  # iterate, with a timer around each EM step
        def each() -> float:
            begin = time.perf_counter()
            bound = step()
            times.append(time.perf_counter() - begin)
            return bound

        return iterate(each, *args, **kwargs)

    for module in modules:
        module.iterate = timed
    try:
        _, memory, fit = measured(
            lambda: fit_gmm(x, *start, "full", tol=0.0, max_iter=iterations, reg=reg)
        )
    finally:
        contmix.em.gmm.COVARIANCE_FORM = switch
        for module in modules:
            module.iterate = iterate

    log_lik = gmm_log_likelihood(x.double(), *fit[:3])
    return dict(iteration=median_iteration(times), memory=memory, log_lik=float(log_lik))


class TimedMixture(GaussianMixture):
    r"""scikit-learn's GaussianMixture that records when each E-step starts: an iteration
    of its loop runs from one E-step to the next (the last E-step follows the loop)."""

    def _e_step(self, X, **kwargs):
        self.starts_.append(time.perf_counter())
        return super()._e_step(X, **kwargs)


def sklearn_row(x, start, iterations: int, reg: float) -> dict:
    logits, means, covariances = (t.double().numpy() for t in start)
    precisions = np.linalg.inv(covariances)
    X = x.double().numpy()

    model = TimedMixture(
        len(logits),
        covariance_type="full",
        tol=0.0,
        reg_covar=reg,
        max_iter=iterations,
        weights_init=np.exp(logits) / np.exp(logits).sum(),
        means_init=means,
        precisions_init=precisions,
    )
    model.starts_ = []
    _, memory, model = measured(lambda: model.fit(X))
    times = np.diff(model.starts_).tolist()
    return dict(iteration=median_iteration(times), memory=memory, log_lik=float(model.score(X)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 60000])
    parser.add_argument(
        "--before",
        type=int,
        nargs="*",
        default=[3000],
        help="the sizes at which the sufficient-statistics form runs too",
    )
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--reg", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {describe('cpu')}; BLAS: {blas_info()}.")
    print(f"Load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.\n")

    print("| N | fit | s / iteration | peak memory (MiB) | mean log-likelihood |")
    print("|---|---|---|---|---|")

    for N in args.sizes:
        x, _, y, _ = fashion_mnist(limit=N)
        resp = torch.nn.functional.one_hot(y, 10).to(x.dtype)
        start = gmm_m_step(x, resp, "full", reg=args.reg)  # the matched GMM's start
        rows = {
            "contmix, covariance form": contmix_row(x, start, args.iterations, args.reg, "cov")
        }
        if N in args.before:
            rows["contmix, sufficient statistics (before)"] = contmix_row(
                x, start, args.iterations, args.reg, "statistics"
            )
        rows["scikit-learn"] = sklearn_row(x, start, args.iterations, args.reg)

        for name, r in rows.items():
            print(
                f"| {N:,} | {name} | {r['iteration']:.2f} | {r['memory']:.0f} | "
                f"{r['log_lik']:.6f} |",
                flush=True,
            )

    print(f"\nLoad average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.")


if __name__ == "__main__":
    main()
