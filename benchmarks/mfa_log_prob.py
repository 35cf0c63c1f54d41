r"""Speed of an MFA's log_prob (forward, and forward + backward) against torch's
MixtureSameFamily over LowRankMultivariateNormal and against one matrix product of the
shape of the main projection, (N x D) times (D x K*R), all timed side by side.

    python benchmarks/mfa_log_prob.py [--threads 1] [--repeat 7] [--device cuda]

Everything runs on ``--device`` (default: cuda when available); each timing is the median
of ``--repeat`` calls after one warm-up call.
"""

import argparse

import torch

from machine import add_device_argument, describe, timeit
from torch.distributions import Categorical, LowRankMultivariateNormal, MixtureSameFamily

from contmix import MFA


def main(
    N: int, D: int, K: int, R: int, repeat: int, reference_repeat: int, device: torch.device
) -> None:
    torch.manual_seed(0)
    mfa = MFA(features=D, components=K, rank=R)
    x = torch.randn(N, D)
    w = torch.randn(D, K * R)
    mfa, x, w = mfa.to(device), x.to(device), w.to(device).requires_grad_()

    def ours():
        return mfa().log_prob(x).sum()

    def theirs():
        logits, loc, factor, log_diag = mfa.phi
        base = LowRankMultivariateNormal(loc, factor, log_diag.exp() + mfa.epsilon)
        return MixtureSameFamily(Categorical(logits=logits), base).log_prob(x).sum()

    def matmul():
        return (x @ w).sum()

    def backward(f):
        return lambda: f().backward()

    assert torch.allclose(ours(), theirs(), rtol=1e-4)

    results = {}
    for name, f, n in [
        ("contmix MFA", ours, repeat),
        ("torch MixtureSameFamily(LowRankMultivariateNormal)", theirs, reference_repeat),
        ("matmul (N x D) @ (D x K*R)", matmul, repeat),
    ]:
        with torch.no_grad():
            forward = timeit(f, n, device)
        results[name] = forward, timeit(backward(f), n, device)

    print(f"device: {describe(device)}")
    print(f"N={N}, D={D}, K={K}, R={R}, threads={torch.get_num_threads()}, float32")
    print(f"{'':55s} {'forward':>10s} {'fwd+bwd':>10s}")
    for name, (forward, both) in results.items():
        print(f"{name:55s} {forward * 1e3:8.1f}ms {both * 1e3:8.1f}ms")

    ours_f, ours_b = results["contmix MFA"]
    ref_f, ref_b = results["torch MixtureSameFamily(LowRankMultivariateNormal)"]
    mm_f, mm_b = results["matmul (N x D) @ (D x K*R)"]
    print(f"speed-up over torch: forward {ref_f / ours_f:6.1f}x, fwd+bwd {ref_b / ours_b:6.1f}x")
    print(f"ratio to matmul:     forward {ours_f / mm_f:6.2f}x, fwd+bwd {ours_b / mm_b:6.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--N", type=int, default=2000)
    parser.add_argument("--D", type=int, default=784)
    parser.add_argument("--K", type=int, default=50)
    parser.add_argument("--R", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--reference-repeat", type=int, default=3)
    add_device_argument(parser)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)

    main(args.N, args.D, args.K, args.R, args.repeat, args.reference_repeat, args.device)
