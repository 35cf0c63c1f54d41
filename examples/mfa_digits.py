r"""Fits a mixture of factor analyzers to the 8x8 digits by EM, shows its means and
loadings, and in-paints the bottom half of test digits.

    python examples/mfa_digits.py [--output docs/_static]
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from contmix import MFA
from contmix.datasets import digits
from contmix.figures import image_grid

ALPHA = 0.05  # the logit transform of contmix.datasets.digits


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    r"""Maps logit space back to intensities in [0, 1], as 8x8 images."""

    return ((torch.sigmoid(x) - ALPHA) / (1 - 2 * ALPHA)).clamp(0, 1).reshape(*x.shape[:-1], 8, 8)


def show(images: torch.Tensor, titles: list[str], path: str, **kwargs) -> None:
    r"""Writes a grid of images :math:`(R, C, 8, 8)`, one titled row per :math:`r`."""

    ax = image_grid(images.flatten(0, 1), nrow=images.shape[1], labels=titles, size=1.1, **kwargs)
    ax.tick_params(labelsize=8)
    ax.figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(ax.figure)


def main(output: str) -> None:
    torch.manual_seed(0)
    x, x_test, _, _ = digits(dtype=torch.float64)

    mfa = MFA(features=64, components=10, rank=6).double()
    mfa.initialize(x, strategy="em", max_iter=300)

    with torch.no_grad():
        d = mfa()
        print(f"train log-likelihood {d.log_prob(x).mean():.2f}")
        print(f"test log-likelihood  {d.log_prob(x_test).mean():.2f}")

        # means, then the first three loadings of each component (red +, blue -)
        order = d.logits.argsort(descending=True)
        means = to_pixels(d.base.loc[order])
        show(means.unsqueeze(0), ["means"], os.path.join(output, "mfa_means.png"), vmin=0, vmax=1)

        # A and A Q give the same covariance for any rotation Q: show the principal
        # directions A V = U S of each component, by decreasing variance
        u, s, _ = torch.linalg.svd(d.base.cov_factor[order], full_matrices=False)
        loadings = (u * s.unsqueeze(-2))[..., :3].movedim(-1, 0).reshape(3, 10, 8, 8)
        loadings = loadings / loadings.abs().amax(dim=(-2, -1), keepdim=True)  # each in [-1, 1]
        show(
            loadings,
            ["loading 1", "loading 2", "loading 3"],
            os.path.join(output, "mfa_loadings.png"),
            cmap="RdBu_r",
            vmin=-1,
            vmax=1,
        )

        # in-painting: observe the top half (rows 0-3), infer the bottom half
        top = torch.arange(32)
        truth = x_test[:8]
        inpainted = d.condition(top, truth[:, top])
        weights = inpainted.logits.exp()  # (8, K)
        mean = (weights.unsqueeze(-1) * inpainted.base.mean).sum(dim=-2)
        samples = inpainted.sample((2,))

        def complete(bottom):
            return torch.cat((truth[:, top].expand(*bottom.shape[:-1], 32), bottom), dim=-1)

        observed = to_pixels(truth).clone()
        observed[:, 4:] = float("nan")
        rows = torch.stack(
            (
                to_pixels(truth),
                observed,
                to_pixels(complete(mean)),
                to_pixels(complete(samples[0])),
                to_pixels(complete(samples[1])),
            )
        )
        show(
            rows,
            ["truth", "observed", "cond. mean", "sample", "sample"],
            os.path.join(output, "mfa_inpainting.png"),
            vmin=0,
            vmax=1,
        )

        error = (mean - truth[:, 32:]).square().mean()
        print(
            f"in-painting mean squared error (logit space) {error:.3f}, "
            f"predicting the training mean: {(x.mean(0)[32:] - truth[:, 32:]).square().mean():.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=os.path.join("docs", "_static"))
    main(parser.parse_args().output)
