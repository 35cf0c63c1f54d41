r"""Trains a HierarchicalCPMM on the five-armed spiral and draws its components.

The documented recipe: the defaults, ``initialize(x)`` (an MFA fitted by EM in each of
five groups, laid along five paths, the trajectories regressed on them), then Adam at a
learning rate of 3e-4 on batches of 256 in a plain loop. Each trajectory is drawn as a
sequence of Gaussian components (ellipses at two standard deviations) coloured by
pseudotime, over the data; a second picture shows the clusters p(c | x) and samples.
Run from the repository root:

    python examples/cpmm_spiral.py --steps 2000 --out docs/_static/cpmm_spiral.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

import contmix

from contmix.figures import ellipse


def train(model: torch.nn.Module, x: torch.Tensor, steps: int, seed: int) -> torch.nn.Module:
    r"""The recipe: the "em" start, then Adam at 3e-4 on batches of 256."""

    model.initialize(x, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    for step in range(steps):
        loss = -model().log_prob(x[torch.randint(len(x), (256,))]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)

    return model.eval()


def components(mixture: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The means and covariances of a (hierarchical) mixture, with shapes (C, G, 2) and
    (C, G, 2, 2)."""

    base = mixture().base
    while hasattr(base, "base"):  # the components of a mixture of mixtures
        base = base.base
    G, loc, cov = base.loc.shape[-2], base.loc.detach(), base.covariance_matrix.detach()
    return loc.reshape(-1, G, 2), cov.reshape(-1, G, 2, 2)


def draw_trajectories(ax, mixture: torch.nn.Module) -> None:
    with torch.no_grad():
        loc, cov = components(mixture)

    colors = plt.get_cmap("viridis")(torch.linspace(0, 1, loc.shape[1]).tolist())
    for c in range(len(loc)):
        for j in range(loc.shape[1]):
            ax.add_patch(ellipse(loc[c, j], cov[c, j], color=colors[j], lw=1.0))
        ax.plot(*loc[c].T, color="black", lw=0.5, alpha=0.6)
        ax.annotate(str(c), loc[c, 0].tolist(), fontsize=9, weight="bold")


def main(args) -> None:
    torch.manual_seed(args.seed)
    x, labels = contmix.datasets.spiral(args.samples, seed=args.seed)
    model = contmix.HierarchicalCPMM(2, trajectories=args.trajectories, components=10)
    mixture = train(model, x, args.steps, args.seed).extract()

    with torch.no_grad():
        print(f"mean log-likelihood after training: {mixture().log_prob(x).mean().item():.3f}")
        cluster = mixture.predict(x)
        samples = mixture().sample((2000,))

    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    axes[0].scatter(*x.T, s=2, c=labels, cmap="tab10", vmin=-1, vmax=9)
    axes[0].set_title("data (outliers in blue)")
    axes[1].scatter(*x.T, s=2, c="lightgray")
    draw_trajectories(axes[1], mixture)
    fig.colorbar(plt.cm.ScalarMappable(cmap="viridis"), ax=axes[1], label="pseudotime t")
    axes[1].set_title(f"{args.trajectories} trajectories of 10 components")
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(*x.T, s=2, c=cluster, cmap="tab10", vmin=0, vmax=9)
    ax.scatter(*samples.T, s=1, c="black", alpha=0.3)
    ax.set_title("clusters p(c | x) and samples (black)")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out.replace(".png", "_clusters.png"), dpi=args.dpi)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--trajectories", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument("--out", type=str, default="cpmm_spiral.png")
    main(parser.parse_args())
