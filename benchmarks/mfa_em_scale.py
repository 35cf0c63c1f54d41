r"""EM for the MFA at the paper's scale: 250 components of rank 4 on Fashion-MNIST (784-D),
against contmix's previous M-step and scikit-learn's diagonal GaussianMixture(250), side by
side in one process.

The iterations are timed from one start, the MFA fitted from k-means with the assignments
held fixed (strategy ``"fa"``, 10 iterations), and scikit-learn's diagonal GMM from its own
fit's parameters; each kind of iteration is timed ``--runs`` times, interleaved, and the
medians are reported:

- contmix: one iteration of :func:`contmix.em.fit_mfa` (``max_iter=1`` from the same
  parameters, so that the reference point is computed each time too);
- the previous code: the same, with the dense M-step sums over all components and
  LAPACK's batched Cholesky decomposition (what ``fit_mfa`` did before the sparse sums);
- scikit-learn: one iteration of ``GaussianMixture(250, covariance_type="diag")``, the
  cost of a comparably sized model (scikit-learn has no MFA).

With ``--fit``, the whole fit of Table 1's row follows,
``MFA(784, components=250, rank=4).initialize(x, strategy="em")``: its time, iterations,
peak resident memory (``VmHWM``, reset before the fit) and test bits/dim of the 256-level
pixels (:func:`contmix.transforms.logit_bits_per_dim`).

Run:

    python benchmarks/mfa_em_scale.py --limit 10000 --runs 5 --threads 1
    python benchmarks/mfa_em_scale.py --limit 2000 --runs 3 --fit   # a smoke run

Needs the Debian package dataset-fashion-mnist (``apt-get install dataset-fashion-mnist``).
"""

import argparse
import statistics
import time
import warnings

from pathlib import Path

import torch

from machine import describe, reset_peak, resident
from sklearn.mixture import GaussianMixture

import contmix.em.mfa as em_mfa

from contmix import MFA
from contmix.datasets import fashion_mnist
from contmix.transforms import logit_bits_per_dim

K, RANK = 250, 4


def lapack(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The previous Cholesky decomposition of the M-step: LAPACK's, batched."""

    tril, info = torch.linalg.cholesky_ex(moments)
    return tril, info == 0


def previous(f):
    r"""Runs ``f`` with the previous M-step: dense sums, LAPACK's Cholesky."""

    support, cholesky = em_mfa.support, em_mfa._cholesky
    em_mfa.support, em_mfa._cholesky = (lambda resp: None), lapack
    try:
        return f()
    finally:
        em_mfa.support, em_mfa._cholesky = support, cholesky


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=10000, help="train images (all: 60,000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit", action="store_true", help="also the whole fit of Table 1")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    x, x_test, _, _ = fashion_mnist(limit=args.limit)
    print(f"# {describe('cpu')}; train {tuple(x.shape)}, test {tuple(x_test.shape)}")
    print(f"# threads {args.threads}; load {Path('/proc/loadavg').read_text().split()[:3]}")

    model = MFA(x.shape[-1], components=K, rank=RANK)
    model.initialize(x, strategy="fa", max_iter=10, generator=torch.Generator().manual_seed(0))
    params = model._natural()
    gmm = GaussianMixture(K, covariance_type="diag", max_iter=10, random_state=0)
    x64 = x.double().numpy()
    gmm.fit(x64)
    warm = dict(weights_init=gmm.weights_, means_init=gmm.means_)
    warm["precisions_init"] = gmm.precisions_

    def sklearn_iteration():
        GaussianMixture(K, covariance_type="diag", tol=0.0, max_iter=1, **warm).fit(x64)

    def iteration():
        return em_mfa.fit_mfa(x, *params, tol=0.0, max_iter=1)

    new, old = iteration(), previous(iteration)
    after = [em_mfa.mfa_log_likelihood(x, *fit[:4]).item() for fit in (new, old)]
    print(f"# mean log-likelihood after one iteration: {after[0]:.6f}, previous {after[1]:.6f}")

    times = {"contmix": [], "previous": [], "scikit-learn (diagonal GMM)": []}
    for _ in range(args.runs):
        times["contmix"].append(timed(iteration))
        times["previous"].append(timed(lambda: previous(iteration)))
        times["scikit-learn (diagonal GMM)"].append(timed(sklearn_iteration))
        print({k: round(v[-1], 3) for k, v in times.items()}, flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    print("\n| implementation | one iteration (s) | ratio to contmix |")
    print("| --- | ---: | ---: |")
    for name, t in median.items():
        print(f"| {name} | {t:.3f} | {t / median['contmix']:.2f}x |")

    if args.fit:
        model = MFA(x.shape[-1], components=K, rank=RANK)
        reset_peak()
        start = time.perf_counter()
        report = model.initialize(x, strategy="em")
        seconds, memory = time.perf_counter() - start, resident()
        with torch.no_grad():
            bpd = logit_bits_per_dim(model().log_prob(x_test), x_test).mean().item()
        print(
            f"\nfit: {seconds:.1f} s, {report.iterations} iterations, converged "
            f"{report.converged}, peak memory {memory:.2f} GiB, test bits/dim {bpd:.3f}; "
            f"load {Path('/proc/loadavg').read_text().split()[:3]}"
        )


if __name__ == "__main__":
    main()
