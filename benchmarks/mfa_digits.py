r"""Test log-likelihood of MFA fitted by EM on contmix.datasets.digits against
scikit-learn's GaussianMixture with the same number of components (diagonal and full
covariances), on the same split.

    python benchmarks/mfa_digits.py [--components 10] [--device cuda]

The MFAs run on ``--device`` (default: cuda when available); scikit-learn always runs on
the CPU. The ``device`` column says where each row ran.
"""

import argparse
import time

import torch

from machine import add_device_argument, clock, describe
from sklearn.mixture import GaussianMixture

from contmix import MFA
from contmix.datasets import digits


def main(components: int, ranks: list[int], device: torch.device) -> None:
    x, x_test, _, _ = digits(dtype=torch.float64)
    print(f"contmix device: {describe(device)}")
    print(f"digits: {len(x)} train, {len(x_test)} test, 64 features, K={components}")
    print(f"{'model':42s} {'device':>7s} {'train':>8s} {'test':>8s} {'time':>7s}")

    for covariance in ("diag", "full"):
        start = time.perf_counter()
        sk = GaussianMixture(components, covariance_type=covariance, random_state=0)
        sk.fit(x.numpy())
        elapsed = time.perf_counter() - start
        name = f"sklearn GaussianMixture({covariance})"
        print(
            f"{name:42s} {'cpu':>7s} {sk.score(x.numpy()):8.2f} {sk.score(x_test.numpy()):8.2f} "
            f"{elapsed:6.1f}s"
        )

    x, x_test = x.to(device), x_test.to(device)

    for rank in ranks:
        for strategy in ("fa", "em"):
            torch.manual_seed(0)
            mfa = MFA(features=64, components=components, rank=rank).to(device, torch.float64)
            start = clock(device)
            mfa.initialize(x, strategy=strategy, max_iter=300)
            elapsed = clock(device) - start
            with torch.no_grad():
                train, test = mfa().log_prob(x).mean(), mfa().log_prob(x_test).mean()
            name = f"contmix MFA(rank={rank}), {strategy!r}"
            print(f"{name:42s} {device.type:>7s} {train:8.2f} {test:8.2f} {elapsed:6.1f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    add_device_argument(parser)
    args = parser.parse_args()

    main(args.components, args.ranks, args.device)
