r"""Fits a Gaussian mixture to the two moons and draws its density.

The mixture is initialized by expectation-maximization (EM), then trained a little
further by gradient descent in a zuko-style loop, exactly as a `zuko.flows.GMM` would
be. The script prints the train and test log-likelihoods after each stage and writes a
density plot, with the components' ellipses.

    python examples/gmm_2d.py --out gmm_2d.png
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from sklearn.datasets import make_moons

import contmix

from contmix.figures import plot_density


def moons(n: int, seed: int) -> torch.Tensor:
    r"""Returns :math:`n` samples of the two moons, standardized."""

    x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    x = torch.as_tensor(x, dtype=torch.float32)

    return (x - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])


def log_likelihood(gmm: contmix.GMM, x: torch.Tensor) -> float:
    with torch.no_grad():
        return gmm().log_prob(x).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gmm_2d.png", help="where to write the plot (PNG)")
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)

    x, x_test = moons(4096, seed=args.seed), moons(4096, seed=args.seed + 1)

    # contmix.GMM takes zuko's arguments
    gmm = contmix.GMM(features=2, components=args.components, covariance_type="full")

    # Expectation-maximization from k-means++ centres
    start = time.perf_counter()
    gmm.initialize(x, strategy="em")
    seconds = time.perf_counter() - start

    print(f"EM ({seconds:.2f} s)")
    print(f"  train log-likelihood: {log_likelihood(gmm, x):.4f}")
    print(f"  test log-likelihood:  {log_likelihood(gmm, x_test):.4f}")

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))

    axes[0].scatter(*x[:1024].T, s=2, c="k")
    axes[0].set_xlim(-2.5, 2.5)
    axes[0].set_ylim(-2.5, 2.5)
    axes[0].set_aspect("equal")
    axes[0].set_title("Data (two moons)")
    axes[0].set_xticks([])
    axes[0].set_yticks([])

    # p(x) on a grid, each component's 2-sigma ellipse on top (opacity: its weight)
    plot_density(gmm, axes[1], extent=(-2.5, 2.5, -2.5, 2.5))
    axes[1].set_title("After EM")

    # A zuko-style training loop: -log p(x) by Adam on mini-batches
    optimizer = torch.optim.Adam(gmm.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(x, batch_size=256, shuffle=True)

    start = time.perf_counter()

    for _ in range(args.epochs):
        for batch in loader:
            loss = -gmm().log_prob(batch).mean()

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    seconds = time.perf_counter() - start

    print(f"EM + Adam, {args.epochs} epochs ({seconds:.2f} s)")
    print(f"  train log-likelihood: {log_likelihood(gmm, x):.4f}")
    print(f"  test log-likelihood:  {log_likelihood(gmm, x_test):.4f}")

    plot_density(gmm, axes[2], extent=(-2.5, 2.5, -2.5, 2.5))
    axes[2].set_title(f"After EM + {args.epochs} epochs of Adam")

    fig.tight_layout()
    fig.savefig(args.out, dpi=100, bbox_inches="tight")

    print(f"density plot written to {args.out}")


if __name__ == "__main__":
    main()
