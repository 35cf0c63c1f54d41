r"""log_prob with its backward pass: contmix.GMM vs zuko.flows.GMM, same parameters.

For each covariance type (full, diagonal, spherical), tied and untied, a zuko GMM with
random parameters (N=100,000, D=16, K=32) and a contmix GMM that loads its state dict
time the forward and backward pass of ``-model().log_prob(x).mean()``. The two models
alternate within each run; the table gives medians over the runs, the speed-up
(zuko / contmix) and the largest difference between the two log-densities.

Run (a few minutes on 2 idle cores):

    python benchmarks/gmm_log_prob.py            # the figures of docs/benchmarks/gmm.md
    python benchmarks/gmm_log_prob.py --quick    # a smoke run, small data
    python benchmarks/gmm_log_prob.py --memory   # also the peak memory
    python benchmarks/gmm_log_prob.py --device cuda --memory   # both models on the GPU

Both models run on ``--device`` (default: cuda when available). The peak memory comes
from torch.profiler's memory events on the CPU and from the CUDA allocator's statistics
on CUDA. It prints markdown tables.
"""

import argparse
import os
import statistics
import sys

import torch
import zuko

from machine import add_device_argument, cpu_model, describe, peak_memory, timed
from torch import Tensor

import contmix

CASES = [(cov, tied) for cov in ("full", "diagonal", "spherical") for tied in (False, True)]


def models(D: int, K: int, cov: str, tied: bool, dtype: torch.dtype, device: torch.device):
    torch.manual_seed(0)
    theirs = zuko.flows.GMM(D, components=K, covariance_type=cov, tied=tied)
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(0.5)
    ours = contmix.GMM(D, components=K, covariance_type=cov, tied=tied)
    ours.load_state_dict(theirs.state_dict())

    return theirs.to(device, dtype), ours.to(device, dtype)


def backward(model, x: Tensor) -> None:
    (-model().log_prob(x).mean()).backward()


def step(model, x: Tensor) -> float:
    model.zero_grad(set_to_none=True)
    return timed(lambda: backward(model, x), x.device)[0]


def profiler_peak(f) -> int:
    r"""Peak of the memory allocated by torch on the CPU while ``f`` runs, in bytes,
    above what was allocated before, from the memory events of :mod:`torch.profiler`."""

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        f()

    # an operator's own allocations minus its frees count at its end, other frees when
    # they happen
    changes = sorted(
        (e.time_range.start if e.name == "[memory]" else e.time_range.end, e.self_cpu_memory_usage)
        for e in prof.events()
    )
    current, peak = 0, 0
    for _, change in changes:
        current += change
        peak = max(peak, current)

    return peak


def step_memory(model, x: Tensor) -> float:
    r"""Peak memory of one step in MiB, above what was allocated before."""

    model.zero_grad(set_to_none=True)
    return peak_memory(lambda: backward(model, x), x.device, cpu=profiler_peak) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N=10000, 3 runs")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--float64", action="store_true", help="double precision")
    parser.add_argument("--memory", action="store_true", help="measure the peak memory")
    add_device_argument(parser)
    args = parser.parse_args()

    N, D, K = (10_000 if args.quick else 100_000), 16, 32
    runs = 3 if args.quick else args.runs
    dtype = torch.float64 if args.float64 else torch.float32

    torch.set_num_threads(args.threads)
    load = os.getloadavg()

    print("## Setup\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"- torch {torch.__version__}, zuko {zuko.__version__}, contmix {contmix.__version__}")
    print(f"- torch.get_num_threads() = {torch.get_num_threads()}, dtype {dtype}")
    print(f"- device (both models): {describe(args.device)}")
    print(f"- load average before: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)\n")

    torch.manual_seed(1)
    x = torch.randn(N, D, dtype=dtype).to(args.device)
    rows = []

    for cov, tied in CASES:
        theirs, ours = models(D, K, cov, tied, dtype, args.device)
        pair = {"zuko": theirs, "contmix": ours}

        with torch.no_grad():
            diff = (theirs().log_prob(x) - ours().log_prob(x)).abs().max().item()

        for model in pair.values():  # warm-up
            step(model, x)

        times = {name: [] for name in pair}
        for r in range(runs):
            for name in list(pair)[:: 1 if r % 2 else -1]:  # alternate who goes first
                times[name].append(step(pair[name], x))

        median = {name: statistics.median(t) for name, t in times.items()}
        memory = {name: step_memory(m, x) for name, m in pair.items()} if args.memory else {}
        rows.append((cov, tied, median, memory, diff))
        print(f"{cov} tied={tied}: {median}", file=sys.stderr)  # progress

    load = os.getloadavg()
    print(f"Load average after: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min).\n")

    print(
        f"## log_prob + backward, N={N}, D={D}, K={K}, {dtype}, on {args.device}, "
        f"median of {runs} runs (ms)\n"
    )
    head = "| covariance | tied | zuko (ms) | contmix (ms) | speed-up | max abs diff |"
    line = "|---|---|---:|---:|---:|---:|"
    if args.memory:
        head += " zuko peak (MiB) | contmix peak (MiB) |"
        line += "---:|---:|"
    print(head)
    print(line)

    for cov, tied, median, memory, diff in rows:
        row = (
            f"| {cov} | {tied} | {1e3 * median['zuko']:.1f} | {1e3 * median['contmix']:.1f} | "
            f"{median['zuko'] / median['contmix']:.2f}x | {diff:.1e} |"
        )
        if memory:
            row += f" {memory['zuko']:.0f} | {memory['contmix']:.0f} |"
        print(row)

    print("\n## Target\n")
    slower = [f"{c}{' tied' if t else ''}" for c, t, m, _, _ in rows if m["contmix"] > m["zuko"]]
    if slower:
        print(f"NOT met: contmix is slower than zuko for {', '.join(slower)}.")
    else:
        print("Met: contmix is at least as fast as zuko for every covariance type, tied or not.")


if __name__ == "__main__":
    main()
