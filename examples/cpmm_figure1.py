r"""Figure 1 of the CPMM paper: trajectories of components over the density.

(a) A CPMM, one trajectory of 25 components, on the two broken circles; (b) a
HierarchicalCPMM, five trajectories of 10 components, on the five-armed spiral. Both with
the documented recipe: the defaults, ``initialize(x)`` (the "em" start), then Adam at a
learning rate of 3e-4 on batches of 256. Each component is drawn as its ellipse at two
standard deviations, coloured by pseudotime, over the model's density. Run from the
repository root:

    python examples/cpmm_figure1.py --steps 2000 --out docs/_static/cpmm_figure1.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from cpmm_spiral import draw_trajectories, train  # the recipe, shared with the tutorial

import contmix

from contmix.figures import plot_density


def draw(ax, model: torch.nn.Module, x: torch.Tensor, title: str) -> None:
    mixture = model.extract()
    with torch.no_grad():
        print(f"{title}: mean log-likelihood {mixture().log_prob(x).mean().item():.3f}")
        plot_density(mixture, ax=ax, extent=(-1.6, 1.6, -1.6, 1.6), scale=None)
    draw_trajectories(ax, mixture)
    ax.set_title(title)
    ax.set_aspect("equal")


def main(args) -> None:
    torch.manual_seed(args.seed)
    circles, _ = contmix.datasets.two_circles(3600, seed=args.seed)
    spiral, _ = contmix.datasets.spiral(4000, seed=args.seed)

    cpmm = train(contmix.CPMM(2, components=25, rank=1), circles, args.steps, args.seed)
    hierarchical = contmix.HierarchicalCPMM(2, trajectories=5, components=10)
    hierarchical = train(hierarchical, spiral, args.steps, args.seed)

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    draw(axes[0], cpmm, circles, "(a) CPMM, 25 components")
    draw(axes[1], hierarchical, spiral, "(b) HierarchicalCPMM, 5 x 10 components")
    scalar = plt.cm.ScalarMappable(cmap="viridis")
    fig.colorbar(scalar, ax=axes, label="pseudotime t", fraction=0.025)
    fig.savefig(args.out, dpi=args.dpi, bbox_inches="tight")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument("--out", type=str, default="cpmm_figure1.png")
    main(parser.parse_args())
