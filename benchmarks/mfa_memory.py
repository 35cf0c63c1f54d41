r"""Peak memory of an MFA's log_prob (forward without grad, and with grad, until the
output is freed) at D=3072, K=100, R=8, N=1000, measured from the allocation events
of torch.profiler (profile_memory=True) on the CPU, and from the CUDA allocator's
statistics on CUDA, beyond the inputs, which exist beforehand.

    python benchmarks/mfa_memory.py
    python benchmarks/mfa_memory.py --device cuda   # on the GPU
    # the implementation of another version of distributions.py (e.g. before a change):
    git show 8c223af:src/contmix/distributions.py > /tmp/before.py
    python benchmarks/mfa_memory.py --distributions /tmp/before.py
"""

import argparse
import importlib.util

import torch

from machine import add_device_argument, describe, peak_memory
from torch.distributions import Categorical, LowRankMultivariateNormal, MixtureSameFamily
from torch.profiler import profile

import contmix.distributions

MiB = 2**20


def load(path: str | None):
    if path is None:
        return contmix.distributions
    spec = importlib.util.spec_from_file_location("other_distributions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profiler_peak(f) -> int:
    r"""The largest number of bytes allocated at once on the CPU while ``f`` runs."""

    with profile(profile_memory=True) as prof:
        f()

    live, top = 0, 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        top = max(top, live)

    return top


def main(N: int, D: int, K: int, R: int, path: str | None, device: torch.device) -> None:
    module = load(path)
    torch.manual_seed(0)
    x = torch.randn(N, D)
    params = [torch.zeros(K), torch.randn(K, D), torch.randn(K, D, R) / R**0.5, torch.zeros(K, D)]
    x, params = x.to(device), [p.to(device) for p in params]

    def ours(grad: bool):
        logits, loc, factor, log_diag = (p.clone().requires_grad_(grad) for p in params)
        base = module.LowRankNormal(loc, factor, log_diag.exp() + 1e-6)
        return lambda: module.GaussianMixture(base, logits).log_prob(x).sum()

    def theirs(grad: bool):
        logits, loc, factor, log_diag = (p.clone().requires_grad_(grad) for p in params)
        base = LowRankMultivariateNormal(loc, factor, log_diag.exp() + 1e-6)
        return lambda: MixtureSameFamily(Categorical(logits=logits), base).log_prob(x).sum()

    inputs = x.nbytes + sum(p.nbytes for p in params)
    nkr = N * K * R * x.element_size()
    print(f"device: {describe(device)}")
    print(f"N={N}, D={D}, K={K}, R={R}, float32, implementation: {module.__file__}")
    print(f"inputs (x and parameters): {inputs / MiB:7.1f} MiB")
    print(f"x alone (N x D):           {x.nbytes / MiB:7.1f} MiB")
    print(f"loadings alone (K x D x R):{params[2].nbytes / MiB:7.1f} MiB")
    print(f"N x K x R working space:   {nkr / MiB:7.1f} MiB")

    for name, make in [("contmix", ours), ("torch", theirs)]:
        with torch.no_grad():
            forward = peak_memory(make(False), device, cpu=profiler_peak)
        graph = peak_memory(make(True), device, cpu=profiler_peak)
        print(
            f"{name:8s} peak beyond inputs: forward {forward / MiB:8.1f} MiB, "
            f"with grad {graph / MiB:8.1f} MiB"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--N", type=int, default=1000)
    parser.add_argument("--D", type=int, default=3072)
    parser.add_argument("--K", type=int, default=100)
    parser.add_argument("--R", type=int, default=8)
    parser.add_argument("--distributions", default=None)
    add_device_argument(parser)
    args = parser.parse_args()

    main(args.N, args.D, args.K, args.R, args.distributions, args.device)
