r"""Curriculum through spaces on the two broken circles (the paper's Figure 2).

A zuko CNF maps the data to a standard Gaussian; a GMM is fitted there, then trained on
the intermediate spaces u_v(x) from v = 1 to v = 0, and fine-tuned on the data. The
figure shows the data in evenly spaced spaces with the GMM fitted along the way.

Usage:
    python examples/curriculum.py [--out docs/_static]
"""

import argparse
import copy
import math

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
import zuko

from contmix import GMM, Curriculum
from contmix.curriculum import Settings, Spaces
from contmix.datasets import two_circles


def ellipses(ax, gmm, color="k"):
    r"""Draws the 2-sigma ellipse of each component, darker for heavier ones."""

    with torch.no_grad():
        dist = gmm()
        cov = dist.component_distribution.covariance_matrix
        weights = dist.mixture_distribution.probs
        values, vectors = torch.linalg.eigh(cov)
        angle = torch.linspace(0, 2 * math.pi, 64)
        circle = torch.stack((angle.cos(), angle.sin()), dim=-1)  # (64, 2)
        scaled = circle * values.sqrt()[:, None]  # (K, 64, 2)
        curves = dist.component_distribution.loc[:, None] + 2 * scaled @ vectors.mT

    for curve, w in zip(curves, weights, strict=True):
        alpha = 0.3 + 0.7 * float(w / weights.max())
        ax.plot(curve[:, 0], curve[:, 1], color=color, lw=1, alpha=alpha)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/_static")
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--finetune", type=int, default=25)
    parser.add_argument("--spaces", default=None, help="a file to save the spaces to, or load")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    x, labels = two_circles(1024)
    x_test, _ = two_circles(1024, seed=1)
    mean, std = x.mean(dim=0), x.std(dim=0)
    x, x_test = (x - mean) / std, (x_test - mean) / std

    # The teacher: a small CNF trained by maximum likelihood
    cnf = zuko.flows.CNF(2, hidden_features=(64, 64), atol=1e-4, rtol=1e-3)
    curriculum = Curriculum(cnf)

    if args.spaces is not None and Path(args.spaces).exists():
        spaces = Spaces.load(args.spaces)  # the CNF ran before: no need to run it again
    else:
        curriculum.fit_teacher(x, epochs=args.teacher_epochs, batch_size=256, lr=1e-2)
        spaces = curriculum.spaces(x, steps=51)  # the 51 spaces, from one ODE solve
        if args.spaces is not None:
            spaces.save(args.spaces)

    # The student: a GMM initialized on the Gaussian space, snapshotted after each space
    snapshots = {}

    def snapshot(model, info):
        snapshots[info["space"]] = copy.deepcopy(model.state_dict())

    gmm = GMM(features=2, components=12)
    settings = Settings(finetune_epochs=args.finetune, lr=1e-2, batch_size=64)
    curriculum.train(gmm, spaces, settings=settings, callbacks=[snapshot])

    # Figure 2: evenly spaced spaces, from the Gaussian (v = 1) to the data (v = 0)
    shown = [0, 7, 14, 21, 29, 36, 43, 50]
    fig, axes = plt.subplots(2, 4, figsize=(10, 5.2))
    student = GMM(features=2, components=12)

    for ax, t in zip(axes.flat, shown, strict=True):
        u = spaces.u[t]
        ax.scatter(u[:, 0], u[:, 1], s=1, c=labels, cmap="coolwarm", alpha=0.5)
        student.load_state_dict(snapshots[t])
        ellipses(ax, student)
        ax.set_title(f"v = {spaces.v[t]:.2f}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")

    fig.suptitle("From the CNF's Gaussian (v = 1) to the data (v = 0), GMM fitted along the way")
    fig.tight_layout()
    fig.savefig(out / "curriculum_spaces.png", dpi=80)

    # The final GMM with and without the curriculum, same number of epochs
    torch.manual_seed(0)
    direct = GMM(features=2, components=12)
    curriculum.train(
        direct,
        Spaces(torch.zeros(1), x[None]),  # the data alone: a schedule of one space
        settings=Settings(
            epochs_per_space=len(spaces) + args.finetune,
            finetune_epochs=0,
            lr=1e-2,
            batch_size=64,
            strategy="kmeans",
        ),
    )

    grid = torch.linspace(-2.2, 2.2, 200)
    mesh = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), dim=-1)

    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, model, title in [(axes[0], gmm, "curriculum"), (axes[1], direct, "k-means start")]:
        with torch.no_grad():
            density = model().log_prob(mesh).exp()
            test_ll = model().log_prob(x_test).mean()
        ax.imshow(density, origin="lower", extent=(-2.2, 2.2, -2.2, 2.2), cmap="magma")
        ellipses(ax, model, color="w")
        ax.set_title(f"{title}: test log-likelihood {test_ll:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])

    fig.tight_layout()
    fig.savefig(out / "curriculum_density.png", dpi=80)


if __name__ == "__main__":
    main()
