r"""Speed and memory of the CPMM on the digits configuration (M = 64).

1. log_prob of the extracted model against an MFA with the same number of components,
   and against the CPMM with a fresh ODE solve (cache cleared), medians of interleaved
   repetitions, measured side by side in one run.
2. One training step (forward, backward, Adam) of a HierarchicalCPMM with C = 10
   trajectories of G = 10 components, rank 2, with and without the adjoint: time, the
   number of dynamics evaluations, and the memory autograd keeps for the backward pass
   (bytes of the tensors saved by autograd, counted with saved_tensors_hooks), at two
   tolerances, so that more solver steps are taken.

    python benchmarks/cpmm_speed.py --sizes 64 256 1437 --trained
    python benchmarks/cpmm_speed.py --sizes 64 256 1437 --trained --device cuda

Every model runs on ``--device`` (default: cuda when available); timings synchronize the
device before reading the clock and follow one untimed warm-up round.
"""

import argparse
import statistics

import torch

from machine import add_device_argument, clock, describe, median_times

import contmix


def log_prob_speed(x: torch.Tensor, args) -> list[str]:
    torch.manual_seed(0)
    K = 10 * args.components
    cpmm = contmix.CPMM(64, components=K, rank=2, hidden_features=(256, 256))
    hier = contmix.HierarchicalCPMM(
        64, trajectories=10, components=args.components, rank=2, hidden_features=(256, 256)
    )
    mfa = contmix.MFA(64, components=K, rank=2)
    cpmm, hier, mfa = cpmm.to(x.device).eval(), hier.to(x.device).eval(), mfa.to(x.device)
    extracted, extracted_h = cpmm.extract(), hier.extract()

    def fresh(model):
        model._cache = None
        return model().log_prob(x)

    with torch.no_grad():
        t = median_times(
            {
                "MFA": lambda: mfa().log_prob(x),
                "CPMM.extract() (MFA)": lambda: extracted().log_prob(x),
                "HierarchicalCPMM.extract()": lambda: extracted_h().log_prob(x),
                "CPMM eval, cached": lambda: cpmm().log_prob(x),
                "CPMM, fresh ODE solve": lambda: fresh(cpmm),
                "HierarchicalCPMM, fresh ODE solve": lambda: fresh(hier),
            },
            args.repeat,
            x.device,
        )

    lines = [
        f"log_prob of N={len(x)} digits, K={K} components (C=10 x G={args.components} "
        "for the hierarchical model), rank 2, median of "
        f"{args.repeat} interleaved runs:",
        "",
        "| model | median time (ms) | ratio to MFA |",
        "| --- | --- | --- |",
    ]
    for name, value in t.items():
        lines.append(f"| {name} | {1e3 * value:.2f} | {value / t['MFA']:.2f} |")
    lines.append("")
    single = t["CPMM, fresh ODE solve"] / t["CPMM.extract() (MFA)"]
    nested = t["HierarchicalCPMM, fresh ODE solve"] / t["HierarchicalCPMM.extract()"]
    lines.append(f"fresh solve / extracted: CPMM {single:.1f}x, hierarchical {nested:.1f}x")
    return lines


def trained_speed(x: torch.Tensor, args) -> list[str]:
    r"""Fresh ODE solve against extraction for a HierarchicalCPMM trained as in
    ``cpmm_digits.py`` (seed 0, 500 Adam steps after 100 regression steps)."""

    from types import SimpleNamespace

    from cpmm_digits import fit_cpmm

    options = dict(components=args.components, rank=2, hidden=256, augment=2.0)
    options |= dict(steps=500, init_steps=100, batch=256, lr=1e-3, noise=0.01, entropy=1.0)
    model = fit_cpmm(x, SimpleNamespace(**options), seed=0)
    extracted = model.extract()
    calls = []
    model.dynamics.register_forward_hook(lambda *a: calls.append(1))

    def fresh(x):
        model._cache = None
        return model().log_prob(x)

    lines = [
        "Trained HierarchicalCPMM (digits, seed 0): fresh ODE solve against extract(), "
        f"median of {args.repeat} interleaved runs:",
        "",
        "| N | extract() (ms) | fresh ODE solve (ms) | ratio |",
        "| --- | --- | --- | --- |",
    ]

    with torch.no_grad():
        for n in args.sizes:
            y = x[:n]
            t = median_times(
                {"extract": lambda y=y: extracted().log_prob(y), "fresh": lambda y=y: fresh(y)},
                args.repeat,
                x.device,
            )
            ratio = t["fresh"] / t["extract"]
            lines.append(
                f"| {n} | {1e3 * t['extract']:.2f} | {1e3 * t['fresh']:.2f} | {ratio:.1f}x |"
            )

    calls.clear()
    fresh(x[:1])
    lines.append(f"\nDynamics evaluations per fresh solve: {len(calls)}")

    return lines


def saved_bytes(fn) -> int:
    r"""Bytes of the distinct tensors autograd saves for the backward pass of ``fn``."""

    seen = {}

    def pack(tensor):
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()

    return out, sum(seen.values())


def train_step(x: torch.Tensor, args) -> list[str]:
    lines = [
        f"One training step, batch {args.batch}, HierarchicalCPMM C=10, G={args.components}, "
        "rank 2, hidden (256, 256), dopri5:",
        "",
        "| adjoint | rtol / atol | dynamics evaluations | step time (ms, median) | "
        "memory saved for backward (MiB) |",
        "| --- | --- | --- | --- | --- |",
    ]

    for rtol, atol in ((1e-3, 1e-4), (1e-6, 1e-7)):
        for adjoint in (False, True):
            torch.manual_seed(0)
            model = contmix.HierarchicalCPMM(
                64,
                trajectories=10,
                components=args.components,
                rank=2,
                hidden_features=(256, 256),
                solver=contmix.Solver(rtol=rtol, atol=atol, adjoint=adjoint),
            ).to(x.device)
            model.initialize(x, steps=0)
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            calls = []
            model.dynamics.register_forward_hook(lambda *a, calls=calls: calls.append(1))
            times, memory, evaluations = [], [], []

            for _ in range(args.steps):
                batch = x[torch.randint(len(x), (args.batch,), device=x.device)]
                calls.clear()
                start = clock(x.device)
                loss, saved = saved_bytes(lambda m=model, b=batch: -m().log_prob(b).mean())
                forward_calls = len(calls)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                times.append(clock(x.device) - start)
                memory.append(saved)
                evaluations.append(f"{forward_calls} + {len(calls) - forward_calls}")

            lines.append(
                f"| {adjoint} | {rtol:g} / {atol:g} | {evaluations[-1]} (forward + backward) | "
                f"{1e3 * statistics.median(times):.0f} | {max(memory) / 2**20:.1f} |"
            )

    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1437], help="batch sizes N")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--trained", action="store_true", help="time a trained model too")
    add_device_argument(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    x, x_test, _, _ = contmix.datasets.digits()
    x = x.to(args.device)
    print(f"device: {describe(args.device)}")
    for n in args.sizes:
        print("\n".join(log_prob_speed(x[:n], args)), flush=True)
        print()
    if args.trained:
        print("\n".join(trained_speed(x, args)), flush=True)
        print()
    if not args.no_train:
        print("\n".join(train_step(x, args)))
