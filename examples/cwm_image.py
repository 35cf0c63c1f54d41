r"""Fits a CWM and a GMM to a 2-D density drawn from a photograph (a small version of
benchmarks/cwm_image.py, the experiment of the CWM paper).

Points are drawn from the pixels of scikit-learn's ``china.jpg`` with probability
proportional to the square of their darkness and jittered within their pixel. A GMM is
fitted by EM; the CWM (full affine maps) starts from the same EM fit, so that it equals
the GMM, and is then trained by maximum likelihood. Run from the repository root:

    python examples/cwm_image.py --out docs/_static/cwm_image_tutorial.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

import contmix

from contmix.figures import plot_density


def image_density(pool: int = 8) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    grey = torch.tensor(load_sample_image("china.jpg"), dtype=torch.float64).mean(dim=-1) / 255
    grey = torch.nn.functional.avg_pool2d(grey[None, None], pool).squeeze()
    dark = (1 - grey) ** 2
    return dark / dark.sum()


def to_plane(rows: torch.Tensor, cols: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return torch.stack((4 * cols / H - 2 * W / H, 2 - 4 * rows / H), dim=-1).float()


def sample(density: torch.Tensor, n: int) -> torch.Tensor:
    H, W = density.shape
    index = torch.multinomial(density.flatten(), n, replacement=True)
    u = torch.rand(n, 2, dtype=density.dtype)
    return to_plane(index // W + u[:, 0], index % W + u[:, 1], H, W)


def main(args):
    torch.manual_seed(args.seed)
    density = image_density(args.pool)
    x, x_test = sample(density, args.n), sample(density, args.n // 2)

    gmm = contmix.GMM(2, components=args.components, covariance_type="full")
    gmm.initialize(x, strategy="em")

    cwm = contmix.CWM(2, components=args.components, maps="affine", hidden_features=(64, 64))
    cwm.initialize(x, strategy="em")  # the same full-covariance EM: at first, CWM = GMM
    optimizer = torch.optim.Adam(cwm.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)

    for step in range(args.steps):
        batch = x[torch.randint(len(x), (256,))]
        loss = -cwm().log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 100 == 0:
            print(f"step {step}: train log-likelihood {-loss.item():.3f}")

    with torch.no_grad():
        scores = {
            name: m().log_prob(x_test).mean().item() for name, m in [("GMM", gmm), ("CWM", cwm)]
        }
    print(f"test log-likelihood: GMM {scores['GMM']:.3f}, CWM {scores['CWM']:.3f}")

    if args.out is not None:
        H, W = density.shape
        extent = (-2 * W / H, 2 * W / H, -2, 2)  # the plane of to_plane
        fig, axes = plt.subplots(1, 3, figsize=(12, 3))
        axes[0].imshow(density, cmap="gray_r", extent=extent)  # the target: pixels
        axes[0].set_title("image density")
        for ax, (name, m) in zip(axes[1:], [("GMM", gmm), ("CWM", cwm)], strict=True):
            plot_density(m, ax, extent=extent, bins=(2 * W, 2 * H), scale=None, cmap="gray_r")
            ax.set_title(f"{name}, test LL {scores[name]:.3f}")
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(args.out, dpi=80)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--components", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    main(parser.parse_args())
