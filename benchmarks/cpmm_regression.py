r"""The start of a HierarchicalCPMM at 784-D: how close the regression of
:meth:`~contmix.HierarchicalCPMM.initialize` lays the trajectories onto the MFAs fitted by
EM, for each kind of dynamics, number of steps and rate.

``HierarchicalCPMM(784, trajectories=10, components=25, rank=4)`` with the dynamics of
``cpmm_fashion.py`` (``--dynamics mlp``: one hidden layer of 256; ``cnn``: the paper's
configuration), ``initialize(x, "em", steps=..., lr=...)`` on ``--limit`` Fashion-MNIST
training images. It prints the regression's loss at the end (the mean over components of
log(1 + KL per feature) from the EM fits to the trajectories,
:func:`contmix.mixtures.regression.divergence`; zero when the trajectories pass through
the fits), the time of ``initialize``, and the test bits/dim and clustering accuracy of
the start on the first 2,000 test images.

    python benchmarks/cpmm_regression.py --dynamics mlp --steps 300
    python benchmarks/cpmm_regression.py --dynamics cnn --steps 300
"""

import argparse
import json
import time

import torch

from cpmm_fashion import model_of
from machine import describe
from torch.distributions import LowRankMultivariateNormal

import contmix

from contmix.metrics import clustering_accuracy
from contmix.mixtures.paths import path_components, path_groups
from contmix.mixtures.regression import divergence
from contmix.transforms import logit_bits_per_dim


def regression_loss(model, x: torch.Tensor, seed: int) -> float:
    r"""The loss against the paths that ``initialize`` fitted (the same draws)."""

    generator = torch.Generator().manual_seed(seed)
    C, G, R = model.trajectories, model.components, model.rank
    labels = path_groups(x, C, G, None, generator)
    paths = path_components(x, labels, C, G, R, 1, generator)
    target = LowRankMultivariateNormal(*(p.double() for p in paths[2:]))
    with torch.no_grad():
        grid = torch.linspace(0, 1, G)
        return divergence(model, target, paths.log_weights, grid).item()


def main(args) -> None:
    torch.set_num_threads(args.threads)
    x, x_test, _, y_test = contmix.datasets.fashion_mnist(limit=args.limit, seed=args.seed)
    x_test, y_test = x_test[:2000], y_test[:2000]
    torch.manual_seed(args.seed)
    model = model_of(args)
    lr = model.regression_lr() if args.lr is None else args.lr
    clock = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    model.initialize(x, "em", steps=args.steps, lr=lr, generator=generator)
    seconds = time.perf_counter() - clock

    with torch.no_grad():
        d = model()
        log_prob = torch.cat([d.log_prob(b) for b in x_test.split(500)])
        clusters = torch.cat([model.predict(b) for b in x_test.split(500)])
    run = {
        "device": describe("cpu"),
        "dynamics": args.dynamics,
        "steps": args.steps,
        "lr": lr,
        "initialize_s": seconds,
        "loss": regression_loss(model, x, args.seed),
        "test_bpd": logit_bits_per_dim(log_prob, x_test).mean().item(),
        "accuracy": clustering_accuracy(y_test, clusters),
    }
    print(json.dumps(run), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dynamics", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256], help="of the MLP")
    parser.add_argument("--components", type=int, default=25, help="per trajectory")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=None, help="model.regression_lr()")
    parser.add_argument("--limit", type=int, default=10000, help="training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
