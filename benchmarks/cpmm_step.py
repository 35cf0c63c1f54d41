r"""One training step of a HierarchicalCPMM against an MFA of the same size.

HierarchicalCPMM(64, trajectories=10, components=25, rank=4) on the 8x8 digits
(``contmix.datasets.digits()``), initialized by its default ("em") start, against
MFA(64, components=250, rank=4) initialized by EM. A step is the forward pass on a batch
of 256, the backward pass and an Adam step, medians of interleaved repetitions measured
side by side in one run; for each ODE solver, the number of dynamics evaluations (NFE)
of the step, counted with a forward hook, and the time of the solve alone (forward and
backward of the states).

    python benchmarks/cpmm_step.py --threads 2
    python benchmarks/cpmm_step.py --threads 2 --device cuda
"""

import argparse
import copy

import torch

from machine import add_device_argument, describe, median_times

import contmix

METHODS = ("euler", "midpoint", "rk4", "dopri5")


def step_of(model: torch.nn.Module, x: torch.Tensor):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-12)  # times, not training

    def step() -> None:
        batch = x[torch.randint(len(x), (256,), device=x.device)]
        loss = -model().log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def solve_of(model: contmix.HierarchicalCPMM):
    grid = torch.linspace(0, 1, model.components)
    return lambda: model.solve(grid).square().mean().backward()


def main(args) -> None:
    device = torch.device(args.device)
    x = contmix.datasets.digits()[0].to(device)
    generator = torch.Generator().manual_seed(0)

    mfa = contmix.MFA(64, components=250, rank=4).to(device)
    mfa.initialize(x, "em", generator=generator)
    cpmm = contmix.HierarchicalCPMM(64, trajectories=10, components=25, rank=4).to(device)
    cpmm.initialize(x, generator=generator)

    models = {}
    for method in METHODS:
        model = copy.deepcopy(cpmm)
        model.solver = contmix.Solver(method)
        models[method] = model

    steps = {"MFA(250, rank 4)": step_of(mfa, x)}
    steps |= {f"HierarchicalCPMM, {m}": step_of(model, x) for m, model in models.items()}
    steps |= {f"solve alone, {m}": solve_of(model) for m, model in models.items()}

    counts = {}
    for method, model in models.items():
        calls = []
        hook = model.dynamics.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        step_of(model, x)()
        hook.remove()
        counts[method] = len(calls)

    times = median_times(steps, args.repeat, device)
    reference = times["MFA(250, rank 4)"]

    print(f"device: {describe(str(device))}")
    print("| step | median (ms) | ratio to the MFA step | NFE |")
    print("| --- | --- | --- | --- |")
    for name, seconds in times.items():
        method = name.split(", ")[-1]
        nfe = counts.get(method, "-") if name.startswith("Hier") else "-"
        print(f"| {name} | {1e3 * seconds:.1f} | {seconds / reference:.1f} | {nfe} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    add_device_argument(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    main(args)
