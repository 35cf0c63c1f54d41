r"""Image density: CWM vs GMM (EM) vs NSF on a 2-D density drawn from a photograph.

The paper's experiment (Classifier Weighted Mixtures, Sec. III-C): points are drawn
from the pixels of a grey-scale image with probability proportional to their darkness,
jittered uniformly within their pixel. Three models see the same data and split:

* ``contmix.CWM`` with K=50 diagonal maps, EM pre-training, then Adam on the likelihood;
* ``contmix.GMM`` with K=50 full covariances, fitted by EM;
* ``zuko.flows.NSF``, with more parameters than the CWM, trained by Adam like the CWM.

Run (about 5 minutes on 2 idle cores with the defaults):

    python benchmarks/cwm_image.py --out docs/_static/cwm_densities.png
    python benchmarks/cwm_image.py --device cuda   # the three models on the GPU

The data are drawn on the CPU (the same points on every device); the three models train
on ``--device`` (default: cuda when available). It prints the test log-likelihoods (mean
and standard deviation over the seeds) and the parameter counts, as a markdown table for
docs/benchmarks/cwm.md.
"""

import argparse
import math

import torch
import zuko

from machine import add_device_argument, clock, describe
from torch import Tensor

import contmix


def image_density(name: str = "china.jpg", pool: int = 4, gamma: float = 2.0) -> Tensor:
    r"""Returns the darkness of scikit-learn's sample image ``name``, average-pooled by
    ``pool``, raised to the power ``gamma`` (more contrast), normalized to sum to one,
    with shape :math:`(H, W)`."""

    from sklearn.datasets import load_sample_image

    grey = torch.as_tensor(load_sample_image(name), dtype=torch.float64).mean(dim=-1) / 255
    grey = torch.nn.functional.avg_pool2d(grey[None, None], pool).squeeze()
    dark = (1 - grey) ** gamma

    return dark / dark.sum()


def pixels_to_points(rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> Tensor:
    r"""Maps (jittered) pixel coordinates to the plane: the image spans
    :math:`[-2 W / H, 2 W / H] \times [-2, 2]`, the first row at the top."""

    H, W = shape
    return torch.stack((4 * cols / H - 2 * W / H, 2 - 4 * rows / H), dim=-1)


def sample_image(density: Tensor, n: int, generator: torch.Generator) -> Tensor:
    r"""Draws :math:`n` points with probability proportional to ``density``, jittered
    uniformly within their pixel."""

    H, W = density.shape
    index = torch.multinomial(density.flatten(), n, replacement=True, generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=density.dtype)
    rows, cols = index // W + u[:, 0], index % W + u[:, 1]

    return pixels_to_points(rows, cols, (H, W)).float()


def true_log_density(density: Tensor) -> float:
    r"""The entropy bound: the mean log-density of the image density itself, i.e. the
    best test log-likelihood any model can reach in expectation."""

    pixel_area = (4 / density.shape[0]) ** 2
    p = density[density > 0]

    return float((p * (p / pixel_area).log()).sum())


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train(model, x: Tensor, steps: int, batch: int, lr: float, seed: int) -> None:
    r"""Maximizes the likelihood by Adam with a cosine learning-rate schedule."""

    generator = torch.Generator(x.device).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

    for _ in range(steps):
        index = torch.randint(len(x), (batch,), generator=generator, device=x.device)
        loss = -model().log_prob(x[index]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


@torch.no_grad()
def evaluate(model, x: Tensor) -> float:
    return float(torch.cat([model().log_prob(chunk) for chunk in x.split(4096)]).mean())


@torch.no_grad()
def grid_density(
    model, shape: tuple[int, int], device: torch.device, resolution: int = 2
) -> Tensor:
    r"""The model's density at the centres of a grid ``resolution`` times finer than
    the image, on the CPU (for the figure)."""

    H, W = shape[0] * resolution, shape[1] * resolution
    rows, cols = torch.meshgrid(
        (torch.arange(H) + 0.5) / resolution, (torch.arange(W) + 0.5) / resolution, indexing="ij"
    )
    points = pixels_to_points(rows.flatten(), cols.flatten(), shape).float().to(device)
    log_p = torch.cat([model().log_prob(chunk) for chunk in points.split(4096)])

    return log_p.exp().reshape(H, W).cpu()


def build(args, seed: int):
    torch.manual_seed(seed)
    hidden = tuple(args.hidden)

    cwm = contmix.CWM(2, components=args.components, hidden_features=hidden)
    gmm = contmix.GMM(2, components=args.components, covariance_type="full")
    nsf = zuko.flows.NSF(
        2, transforms=args.nsf_transforms, hidden_features=tuple(args.nsf_hidden), bins=args.bins
    )

    return cwm.to(args.device), gmm.to(args.device), nsf.to(args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="china.jpg")
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--nsf-transforms", type=int, default=3)
    parser.add_argument("--nsf-hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="where to save the density figure")
    add_device_argument(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = args.device
    print(f"device: {describe(device)}", flush=True)

    density = image_density(args.image, args.pool, args.gamma)
    generator = torch.Generator().manual_seed(0)
    data = sample_image(density, args.n_train + args.n_test, generator)
    x, x_test = data[: args.n_train].to(device), data[args.n_train :].to(device)

    names = ("CWM", "GMM", "NSF")
    scores = {name: [] for name in names}
    seconds = {name: [] for name in names}
    grids = {}

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cwm, gmm, nsf = build(args, seed)

        start = clock(device)
        torch.manual_seed(seed)
        gmm.initialize(x, strategy="em", max_iter=300)
        seconds["GMM"].append(clock(device) - start)

        start = clock(device)
        torch.manual_seed(seed)
        cwm.initialize(x, strategy="em", max_iter=300)
        pretrained = evaluate(cwm, x_test)
        train(cwm, x, args.steps, args.batch, args.lr, seed)
        seconds["CWM"].append(clock(device) - start)

        print(f"  GMM {seconds['GMM'][-1]:.0f} s, CWM {seconds['CWM'][-1]:.0f} s", flush=True)
        start = clock(device)
        train(nsf, x, args.steps, args.batch, args.lr, seed)
        seconds["NSF"].append(clock(device) - start)

        for name, model in zip(names, (cwm, gmm, nsf), strict=True):
            scores[name].append(evaluate(model, x_test))

        print(
            f"seed {seed}: CWM {scores['CWM'][-1]:.4f} (after EM {pretrained:.4f}), "
            f"GMM {scores['GMM'][-1]:.4f}, NSF {scores['NSF'][-1]:.4f}",
            flush=True,
        )

        if seed == args.first_seed:
            grids = {
                name: grid_density(m, density.shape, device)
                for name, m in zip(names, (cwm, gmm, nsf), strict=True)
            }
            params = {name: count(m) for name, m in zip(names, (cwm, gmm, nsf), strict=True)}

    print()
    print(
        f"image {args.image} pooled by {args.pool} -> {tuple(density.shape)} pixels, "
        f"N train {args.n_train}, N test {args.n_test}, steps {args.steps}, "
        f"batch {args.batch}, lr {args.lr}, seeds {args.seeds}, threads {args.threads}, "
        f"device {device}"
    )
    print(
        f"entropy bound (mean log-density of the image density): {true_log_density(density):.4f}"
    )
    print()
    print("| model | parameters | test log-likelihood (mean ± std) | seconds per seed |")
    print("| --- | --- | --- | --- |")

    for name in names:
        s = torch.tensor(scores[name])
        std = s.std().item() if len(s) > 1 else math.nan
        time_ = sum(seconds[name]) / len(seconds[name])
        print(f"| {name} | {params[name]} | {s.mean():.4f} ± {std:.4f} | {time_:.0f} |")

    if args.out is not None:
        plot(density, grids, scores, params, args.out)


def plot(density: Tensor, grids: dict, scores: dict, params: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.3))
    panels = [("image density", density)] + [
        (f"{name} ({params[name]} params), test LL {scores[name][0]:.3f}", grid)
        for name, grid in grids.items()
    ]

    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(image.numpy(), cmap="gray_r", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()

    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
