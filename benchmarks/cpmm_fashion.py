r"""A HierarchicalCPMM trained directly on Fashion-MNIST (784-D), with the recipe of
docs/benchmarks/cpmm_training.md, within a budget of these CPUs; checkpointed.

``HierarchicalCPMM(784, trajectories=10, components=25, rank=4)`` with MLP dynamics
(``--hidden``; with ``--spherical``, the paper's constant diagonal, :math:`D = d I`), or
with ``--dynamics cnn`` the paper's configuration (the state in image
shape, three 3x3 convolutions of 64 channels with sines, the pseudotime as an extra
channel, the state augmented four-fold, log-diagonals soft-clipped at -6);
``initialize(x)`` (the "em" start: Ward's groups of k-means clusters, an MFA fitted by EM
per group, the trajectories regressed on them; ``--strategy kmeans``: the trajectories
regressed on ordered k-means centres, the paper's Table 2 start; ``--groups CHECKPOINT``:
the groups of the start are the clusters of the training images by the model of another
run, e.g. a ``--spherical`` one), then Adam at 3e-4 on
batches of 256 (``--schedule cosine``: the rate falls to 0 along a half cosine over
``--steps``), the loss plus ``--penalty`` times :meth:`~contmix.CPMM.penalty`. Every
``--every`` steps: test bits/dim of the 256-level pixels (all 10,000 test images, the
logit transform's Jacobian included) and the clustering accuracy of p(c | x) (Hungarian
matching), with the same for k-means with 10 clusters (10 restarts) on the same training
images. The run is written to ``--checkpoint`` after the start and every ``--every``
steps; the same command resumes it. ``--figures DIR`` draws the trajectories' means (the
paper's Figure 5), samples and the confusion matrix of the last checkpoint, and scores
its out-of-distribution detection of the digits in MNIST's layout (Table 3: AUROC and
AUPR of the log-likelihood, the outliers of ``evaluation.py``).

    python benchmarks/cpmm_fashion.py --limit 10000 --steps 2000 --checkpoint cpmm_fashion.pt
    python benchmarks/cpmm_fashion.py --checkpoint cpmm_fashion.pt --figures docs/_static
"""

import argparse
import json
import math
import time

from pathlib import Path

import torch

from evaluation import data_log_prob, outliers
from machine import describe, reset_peak, resident

import contmix

from contmix.cluster import assign, kmeans
from contmix.metrics import aupr, auroc, clustering_accuracy
from contmix.transforms import LogitTransform, logit_bits_per_dim


def evaluate(model, x_test, y_test, x_train) -> dict:
    with torch.no_grad():
        d = model()
        log_prob = torch.cat([d.log_prob(b) for b in x_test.split(1000)])
        clusters = torch.cat([model.predict(b) for b in x_test.split(1000)])
        train = torch.cat([d.log_prob(b) for b in x_train[:2000].split(1000)])
    return {
        "test_bpd": logit_bits_per_dim(log_prob, x_test).mean().item(),
        "train_bpd": logit_bits_per_dim(train, x_train[:2000]).mean().item(),
        "accuracy": clustering_accuracy(y_test, clusters),
        "clusters_used": clusters.unique().numel(),
    }


def kmeans_accuracy(x, x_test, y_test, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    centers, _ = kmeans(x, 10, n_init=10, generator=generator)
    return clustering_accuracy(y_test, assign(x_test, centers))


def model_of(args) -> contmix.HierarchicalCPMM:
    if args.dynamics == "cnn":  # the paper's: depth 3, width 64, sines, four-fold, log d >= -6
        return contmix.HierarchicalCPMM(
            (1, 28, 28),
            trajectories=10,
            components=args.components,
            rank=4,
            hidden_features=(64, 64),
            augment=4.0,
            log_diag_min=-6.0,
        )
    return contmix.HierarchicalCPMM(
        784,
        trajectories=10,
        components=args.components,
        rank=4,
        hidden_features=args.hidden,
        spherical=getattr(args, "spherical", False),  # absent from older checkpoints
    )


def clusters_of(checkpoint: str, x: torch.Tensor) -> torch.Tensor:
    r"""The clusters that the model of another run's checkpoint gives the samples."""

    state = torch.load(checkpoint, weights_only=False)
    model = model_of(argparse.Namespace(**state["run"]["args"]))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        return torch.cat([model.predict(b) for b in x.split(1000)])


def start(args, x, x_test, y_test) -> dict:
    torch.manual_seed(args.seed)
    model = model_of(args)
    reset_peak()
    clock = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    y = None if args.groups is None else clusters_of(args.groups, x)
    model.initialize(
        x, args.strategy, y, steps=args.init_steps, generator=generator, progress=True
    )
    run = {"args": vars(args), "device": describe("cpu"), "samples": len(x)}
    run["initialize_s"] = time.perf_counter() - clock
    run["initialize_peak_gib"] = resident()
    run["kmeans_accuracy"] = kmeans_accuracy(x, x_test, y_test, args.seed)
    run["curve"] = [{"step": 0, "seconds": 0.0} | evaluate(model, x_test, y_test, x)]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    return {"run": run, "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def rate(args, step: int) -> float:
    if args.schedule == "cosine":  # from --lr at the first step to 0 at --steps
        return args.lr * (1 + math.cos(math.pi * step / args.steps)) / 2
    return args.lr


def train(args, state, x, x_test, y_test) -> None:
    model = model_of(args)
    model.load_state_dict(state["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    optimizer.load_state_dict(state["optimizer"])
    run = state["run"]
    step = run["curve"][-1]["step"]
    generator = torch.Generator().manual_seed(args.seed)
    if "generator" in state:  # a resumed run draws the batches of an uninterrupted one
        generator.set_state(state["generator"])

    while step < args.steps:
        clock = time.perf_counter()
        for _ in range(args.every):
            for group in optimizer.param_groups:  # --lr, not the saved rate
                group["lr"] = rate(args, step)
            step += 1
            batch = x[torch.randint(len(x), (256,), generator=generator)]
            d = model()
            loss = -d.log_prob(batch).mean() + args.penalty * model.penalty(d)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds = run["curve"][-1]["seconds"] + time.perf_counter() - clock
        point = {"step": step, "seconds": seconds} | evaluate(model, x_test, y_test, x)
        run["curve"].append(point)
        print(run["curve"][-1], flush=True)
        state.update(model=model.state_dict(), optimizer=optimizer.state_dict())
        state["generator"] = generator.get_state()
        torch.save(state, args.checkpoint)


def figures(args, state, x_test, y_test) -> None:
    import matplotlib.pyplot as plt

    from scipy.optimize import linear_sum_assignment

    model = model_of(args)
    model.load_state_dict(state["model"])
    model.eval()
    mixture = model.extract()
    pixels = LogitTransform(0.05).inv
    folder = Path(args.figures)

    with torch.no_grad():
        clusters = torch.cat([mixture.predict(b) for b in x_test.split(1000)])
        d, x_digits = mixture(), outliers(x_test)  # Table 3: digits in MNIST's layout
        inside, outside = (
            data_log_prob(torch.cat([d.log_prob(b) for b in z.split(1000)]), z)
            for z in (x_test, x_digits)
        )
    state["run"]["digits_auroc"] = auroc(inside, outside)
    state["run"]["digits_aupr"] = aupr(inside, outside)
    print({k: state["run"][k] for k in ("digits_auroc", "digits_aupr")}, flush=True)
    counts = torch.zeros(10, 10, dtype=torch.long)
    counts.index_put_((y_test, clusters), torch.ones_like(y_test), accumulate=True)
    _, order = linear_sum_assignment(counts.numpy(), maximize=True)  # trajectory of class

    fig = contmix.figures.plot_trajectories(mixture, (28, 28), transform=pixels, order=order)
    fig.savefig(folder / "cpmm_fashion_trajectories.png", dpi=80, bbox_inches="tight")

    torch.manual_seed(0)
    samples = mixture().sample((40,))
    ax = contmix.figures.image_grid(samples, (28, 28), nrow=10, transform=pixels, vmin=0, vmax=1)
    ax.figure.savefig(folder / "cpmm_fashion_samples.png", dpi=80, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(counts[:, order].numpy(), cmap="Blues")
    for i in range(10):
        for j in range(10):
            ax.text(j, i, int(counts[i, order[j]]), ha="center", va="center", fontsize=6)
    ax.set_xticks(range(10), [f"c{c}" for c in order], fontsize=7)
    ax.set_yticks(range(10), contmix.datasets.FASHION_MNIST_CLASSES, fontsize=7)
    ax.set_xlabel("trajectory (matched to the class of its row)")
    fig.savefig(folder / "cpmm_fashion_confusion.png", dpi=100, bbox_inches="tight")


def main(args) -> None:
    torch.set_num_threads(args.threads)
    x, x_test, _, y_test = contmix.datasets.fashion_mnist(limit=args.limit, seed=args.seed)
    path = Path(args.checkpoint)

    if path.exists():
        state = torch.load(path, weights_only=False)
    else:
        state = start(args, x, x_test, y_test)
        print(json.dumps({k: v for k, v in state["run"].items() if k != "args"}), flush=True)
        torch.save(state, path)

    if args.figures:
        figures(args, state, x_test, y_test)
    else:
        train(args, state, x, x_test, y_test)

    if args.out:
        Path(args.out).write_text(json.dumps(state["run"], indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="training images (all)")
    parser.add_argument("--components", type=int, default=25, help="per trajectory")
    parser.add_argument("--dynamics", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256], help="of the MLP")
    parser.add_argument("--spherical", action="store_true", help="D = d I (MLP dynamics)")
    parser.add_argument("--strategy", choices=("em", "kmeans"), default="em", help="start")
    parser.add_argument("--groups", type=str, default=None, help="a checkpoint's clusters")
    parser.add_argument("--init-steps", type=int, default=None, help="regression (1000)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--penalty", type=float, default=0.0, help="weight of model.penalty")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=str, required=True)
    parser.add_argument("--figures", type=str, default=None, help="draw into this folder")
    parser.add_argument("--out", type=str, default=None, help="JSON file of the run")
    main(parser.parse_args())
