r"""EM for the MFA at the paper's scale: 250 components of rank 4 on Fashion-MNIST (784-D),
its bounded E-step against the dense one and against scikit-learn's diagonal
GaussianMixture(250), side by side in one process.

The iterations are timed from one start, the MFA fitted from k-means with the assignments
held fixed (strategy ``"fa"``, 10 iterations), and scikit-learn's diagonal GMM from its own
fit's parameters. One iteration is the time of 11 less that of 1, over 10 (neither the
set-up nor the first, dense, E-step counts), from the same start, ``tol=0``, for:

- contmix: :func:`contmix.em.fit_mfa`, whose E-step computes only the pairs that its
  bounds do not rule out (:class:`contmix.em.lowrank.BoundedLowRank`);
- the dense E-step: the same with every component of every sample (what ``fit_mfa`` did
  before the bounds);
- scikit-learn: ``GaussianMixture(250, covariance_type="diag")``, the cost of a comparably
  sized model (scikit-learn has no MFA).

Each is timed ``--runs`` times, interleaved, and the medians are reported, with the mean
log-likelihood after the 11 iterations of both of contmix's. With ``--fit``, the whole fit
of Table 1's row follows, ``MFA(784, components=250, rank=4).initialize(x,
strategy="em")``, and with ``--dense`` the same fit with the dense E-step beside it: time,
iterations, peak resident memory (``VmHWM``, reset before each fit) and test bits/dim of
the 256-level pixels (:func:`contmix.transforms.logit_bits_per_dim`).

Run:

    python benchmarks/mfa_em_scale.py --limit 60000 --runs 3 --fit --dense
    python benchmarks/mfa_em_scale.py --limit 2000 --runs 1 --fit   # a smoke run

Needs the Debian package dataset-fashion-mnist (``apt-get install dataset-fashion-mnist``).
"""

import argparse
import contextlib
import statistics
import time
import warnings

from pathlib import Path

import torch

from em_scale import one_iteration
from machine import describe, reset_peak, resident
from sklearn.mixture import GaussianMixture

import contmix.em.mfa as em_mfa

from contmix import MFA
from contmix.datasets import fashion_mnist
from contmix.transforms import logit_bits_per_dim

K, RANK = 250, 4


@contextlib.contextmanager
def dense():
    r"""The dense E-step of ``fit_mfa``: every component of every sample."""

    bounded = em_mfa.bounded
    em_mfa.bounded = lambda *args: False
    try:
        yield
    finally:
        em_mfa.bounded = bounded


def whole_fit(x, x_test) -> str:
    model = MFA(x.shape[-1], components=K, rank=RANK)
    reset_peak()
    start = time.perf_counter()
    report = model.initialize(x, strategy="em", generator=torch.Generator().manual_seed(0))
    seconds, memory = time.perf_counter() - start, resident()
    with torch.no_grad():
        bpd = logit_bits_per_dim(model().log_prob(x_test), x_test).mean().item()
    return (
        f"{seconds:.1f} s, {report.iterations} iterations, converged {report.converged}, "
        f"peak memory {memory:.2f} GiB, test bits/dim {bpd:.4f}; "
        f"load {Path('/proc/loadavg').read_text().split()[:3]}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=10000, help="train images (all: 60,000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit", action="store_true", help="also the whole fit of Table 1")
    parser.add_argument("--dense", action="store_true", help="and that fit, dense E-step")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    x, x_test, _, _ = fashion_mnist(limit=args.limit)
    print(f"# {describe('cpu')}; train {tuple(x.shape)}, test {tuple(x_test.shape)}")
    print(f"# threads {args.threads}; load {Path('/proc/loadavg').read_text().split()[:3]}")

    model = MFA(x.shape[-1], components=K, rank=RANK)
    model.initialize(x, strategy="fa", max_iter=10, generator=torch.Generator().manual_seed(0))
    params = [p.detach() for p in model._natural()]
    gmm = GaussianMixture(K, covariance_type="diag", max_iter=10, random_state=0)
    x64 = x.double().numpy()
    gmm.fit(x64)
    warm = dict(weights_init=gmm.weights_, means_init=gmm.means_)
    warm["precisions_init"] = gmm.precisions_

    def sklearn(iterations):
        GaussianMixture(K, covariance_type="diag", tol=0.0, max_iter=iterations, **warm).fit(x64)

    def contmix(iterations):
        return em_mfa.fit_mfa(x, *params, tol=0.0, max_iter=iterations)

    def previous(iterations):
        with dense():
            return contmix(iterations)

    after = [em_mfa.mfa_log_likelihood(x, *f(11)[:4]).item() for f in (contmix, previous)]
    print(f"# mean log-likelihood after 11 iterations: {after[0]:.6f}, dense {after[1]:.6f}")

    times = {"contmix": [], "dense E-step": [], "scikit-learn (diagonal GMM)": []}
    for _ in range(args.runs):
        for name, f in zip(times, (contmix, previous, sklearn), strict=True):
            times[name].append(one_iteration(f))
        print({k: round(v[-1], 3) for k, v in times.items()}, flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    print("\n| implementation | one iteration (s) | ratio to contmix |")
    print("| --- | ---: | ---: |")
    for name, t in median.items():
        print(f"| {name} | {t:.3f} | {t / median['contmix']:.2f}x |")

    if args.fit:
        print(f"\nfit: {whole_fit(x, x_test)}", flush=True)
    if args.dense:
        with dense():
            print(f"fit, dense E-step: {whole_fit(x, x_test)}")


if __name__ == "__main__":
    main()
