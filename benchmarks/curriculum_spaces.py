r"""All curriculum spaces from one ODE solve vs one solve per space.

A zuko CNF is trained briefly on the two broken circles; then the 51 spaces u_v(x),
v = 1, 0.98, ..., 0, are computed (a) by :meth:`contmix.Curriculum.spaces`, one solve
with every v as an output time, and (b) by 51 separate solves from 0 to v, with zuko's
own solver (:meth:`contmix.Curriculum.transform`, what ``cnf().transform`` does with
t1 = v) and with torchdiffeq's dopri5. Runs are interleaved; medians are reported.

Usage:
    python benchmarks/curriculum_spaces.py [--samples 2048] [--repeats 3] [--device cuda]

The CNF, the data and every solve live on ``--device`` (default: cuda when available).
"""

import argparse
import copy
import statistics

from functools import partial

import torch
import zuko

from machine import add_device_argument, describe, timed
from torchdiffeq import odeint

from contmix import Curriculum
from contmix.curriculum import max_norm
from contmix.datasets import two_circles


def separate_torchdiffeq(curriculum: Curriculum, x, v):
    r"""One torchdiffeq dopri5 solve from 0 to v per space."""

    transform = curriculum.cnf.transform
    f = partial(transform.f, c=None)
    options = {"norm": max_norm}
    spaces = []

    with torch.no_grad():
        for vi in v.tolist():
            if vi == 0:
                spaces.append(x.clone())
                continue
            t = torch.tensor([0.0, vi], dtype=x.dtype, device=x.device)
            u = odeint(f, x, t, rtol=transform.rtol, atol=transform.atol, options=options)
            spaces.append(u[-1])

    return torch.stack(spaces)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=51)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    add_device_argument(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x, _ = two_circles(args.samples)
    x = ((x - x.mean(dim=0)) / x.std(dim=0)).to(args.device)

    cnf = zuko.flows.CNF(2, hidden_features=(64, 64), atol=1e-5, rtol=1e-4).to(args.device)
    curriculum = Curriculum(cnf)
    curriculum.fit_teacher(x, epochs=args.teacher_epochs, lr=5e-3, progress=False)

    times = {"one solve": [], "separate (zuko)": [], "separate (torchdiffeq)": []}

    v = torch.linspace(1, 0, args.steps)

    for _ in range(args.repeats):
        t, spaces = timed(lambda: curriculum.spaces(x, steps=args.steps), x.device)
        times["one solve"].append(t)
        t, zuko_u = timed(
            lambda: torch.stack([curriculum.transform(x, vi) for vi in v.tolist()]), x.device
        )
        times["separate (zuko)"].append(t)
        t, tdq_u = timed(lambda: separate_torchdiffeq(curriculum, x, v), x.device)
        times["separate (torchdiffeq)"].append(t)

    with torch.no_grad():
        latent = cnf().transform(x)

    # A reference: the same field in float64 with tight tolerances
    reference = copy.deepcopy(cnf).double()
    reference.transform.atol, reference.transform.rtol = 1e-10, 1e-9
    truth = Curriculum(reference).spaces(x.double(), steps=args.steps).u

    one = statistics.median(times["one solve"])
    print(f"N = {args.samples}, D = 2, {args.steps} spaces, atol = 1e-5, rtol = 1e-4")
    print(f"threads = {args.threads}, repeats = {args.repeats}, device: {describe(x.device)}\n")
    print(
        "| method | median time (s) | ratio to one solve | max abs diff to one solve "
        "| max abs error (float64 reference) |"
    )
    print("| --- | --- | --- | --- | --- |")
    error = (spaces.u - truth).abs().max().item()
    print(f"| one solve, all v as output times | {one:.3f} | 1.0 | 0 | {error:.2e} |")
    for name, u in [("separate (zuko)", zuko_u), ("separate (torchdiffeq)", tdq_u)]:
        median = statistics.median(times[name])
        diff = (spaces.u - u).abs().max().item()
        error = (u - truth).abs().max().item()
        print(
            f"| {args.steps} solves 0 -> v, {name[10:-1]} | {median:.3f} | {median / one:.1f} "
            f"| {diff:.2e} | {error:.2e} |"
        )

    print(f"\nmax |u_1 - cnf().transform(x)| = {(spaces.u[0] - latent).abs().max().item():.2e}")
    print(f"u_0 == x exactly: {torch.equal(spaces.u[-1], x)}")
    print(f"max |u| = {spaces.u.abs().max().item():.2f}")


if __name__ == "__main__":
    main()
