r"""Fits a CWM to an unnormalized 2-D density by maximizing the ELBO, estimated with the
Rao-Blackwellized estimator of the CWM (no sampling of the discrete component).

The target is a ring, :math:`\log \tilde{p}(x) = -\frac{1}{2} ((\|x\| - 2) / 0.2)^2`. The
same CWM with its classifier frozen to constant weights (a Gaussian mixture with learnable
weights) is trained alongside for comparison. Run from the repository root:

    python examples/cwm_variational.py --out docs/_static/cwm_variational.png
"""

import argparse
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

import contmix

from contmix.figures import plot_density


def log_target(x):
    return -0.5 * ((x.norm(dim=-1) - 2) / 0.2).square()


def elbo(q: contmix.CWM, n: int) -> torch.Tensor:
    r"""E_q[log p~(X) - log q(X)], Rao-Blackwellized and differentiable."""

    d = q()
    return d.expectation(lambda x: log_target(x) - d.log_prob(x), n)


def fit(q: contmix.CWM, steps: int, n: int, lr: float) -> list[float]:
    params = [p for p in q.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    history = []

    for _ in range(steps):
        loss = -elbo(q, n)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(-loss.item())

    return history


@torch.no_grad()
def log_evidence(q: contmix.CWM, n: int = 20000) -> float:
    r"""The importance-sampling estimate of log Z = log \int p~(x) dx."""

    x = q().sample((n,))
    log_w = log_target(x) - q().log_prob(x)
    return (torch.logsumexp(log_w, dim=0) - math.log(n)).item()


def main(args):
    models = {}

    for name in ("CWM", "constant weights"):
        torch.manual_seed(args.seed)
        q = contmix.CWM(2, components=args.components, hidden_features=(32, 32))
        q.initialize(2 * torch.randn(2000, 2), strategy="kmeans")
        if name == "constant weights":
            for p in q.classifier.parameters():
                p.requires_grad_(False)
            q.classifier[-1].bias.requires_grad_(True)
        history = fit(q, args.steps, args.n, args.lr)
        models[name] = q
        print(
            f"{name}: ELBO {sum(history[-50:]) / 50:.3f} (mean of the last 50 steps), "
            f"log Z by importance sampling {log_evidence(q):.3f}"
        )

    # exact log Z by quadrature, for reference
    axis = torch.linspace(-4, 4, 801)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    log_z = torch.logsumexp(log_target(grid).flatten(), dim=0) + 2 * math.log(8 / 800)
    print(f"exact log Z (quadrature): {log_z:.3f}")

    if args.out is not None:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
        panels = [("target", log_target), *models.items()]
        for ax, (title, density) in zip(axes, panels, strict=True):
            plot_density(density, ax, extent=(-4, 4, -4, 4), scale=None, cmap="viridis")
            ax.set_title(title)
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(args.out, dpi=80)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=6)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n", type=int, default=128, help="base samples per step")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    main(parser.parse_args())
