r"""Trains a HierarchicalCPMM on the five-armed spiral and draws its components.

Each trajectory is a sequence of Gaussian components (ellipses at two standard
deviations) coloured by pseudotime, drawn over the data, as in Figure 1 of the CPMM
paper. Run from the repository root:

    python examples/cpmm_spiral.py --steps 1500 --out docs/_static/cpmm_spiral.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from matplotlib.patches import Ellipse

import contmix


def ellipse(loc, cov, color):
    values, vectors = torch.linalg.eigh(cov)
    angle = torch.rad2deg(torch.atan2(vectors[1, 1], vectors[0, 1])).item()
    width, height = (4 * values.clamp(min=0).sqrt()).tolist()[::-1]
    return Ellipse(loc.tolist(), width, height, angle=angle, fill=False, color=color, lw=1.2)


def main(args):
    torch.manual_seed(args.seed)
    x, labels = contmix.datasets.spiral(args.samples, seed=args.seed)

    model = contmix.HierarchicalCPMM(
        2,
        trajectories=args.trajectories,
        components=args.components,
        rank=1,
        hidden_features=(64, 64),
    )
    model.initialize(x, strategy="kmeans", steps=200)
    model.eval()
    start = model().log_prob(x).mean().item()

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    model.train()

    for step in range(args.steps):
        batch = x[torch.randint(len(x), (512,))]
        loss = -model().log_prob(batch).mean() - 0.1 * model.entropy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if args.cosine:
            decay.step()

        if step % 500 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)

    mixture = model.eval().extract()
    end = mixture().log_prob(x).mean().item()
    print(f"mean log-likelihood: {start:.3f} at initialization, {end:.3f} after training")

    _, _, loc, factor, log_diag = (p.detach() for p in mixture.phi)
    cov = factor @ factor.mT + torch.diag_embed(log_diag.exp() + mixture.epsilon)
    cluster = mixture.predict(x)

    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    axes[0].scatter(*x.T, s=2, c=labels, cmap="tab10", vmin=-1, vmax=9)
    axes[0].set_title("data (outliers in blue)")
    axes[1].scatter(*x.T, s=2, c="lightgray")

    colors = plt.get_cmap("viridis")(torch.linspace(0, 1, args.components).tolist())
    for c in range(args.trajectories):
        for j in range(args.components):
            axes[1].add_patch(ellipse(loc[c, j], cov[c, j], colors[j]))
        axes[1].plot(*loc[c].T, color="black", lw=0.6, alpha=0.6)
        axes[1].annotate(str(c), loc[c, 0].tolist(), fontsize=9, weight="bold")

    scalar = plt.cm.ScalarMappable(cmap="viridis")
    fig.colorbar(scalar, ax=axes[1], label="pseudotime t", fraction=0.046)
    axes[1].set_title(f"{args.trajectories} trajectories of {args.components} components")
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(*x.T, s=2, c=cluster, cmap="tab10", vmin=0, vmax=9)
    ax.scatter(*mixture().sample((2000,)).T, s=1, c="black", alpha=0.3)
    ax.set_title("clusters p(c | x) and samples (black)")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out.replace(".png", "_clusters.png"), dpi=args.dpi)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2500)
    parser.add_argument("--trajectories", type=int, default=5)
    parser.add_argument("--components", type=int, default=25)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cosine", action="store_true", help="cosine decay of the learning rate")
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument("--out", type=str, default="cpmm_spiral.png")
    main(parser.parse_args())
