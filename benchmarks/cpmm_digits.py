r"""Quality of the (hierarchical) CPMM on scikit-learn's digits against GMMs fitted by EM.

Both models see `contmix.datasets.digits()` (dequantized, logit space, 80/20 split). For
each seed:

* a HierarchicalCPMM with C = 10 trajectories and G components each, from a k-means
  start (no curriculum), trained by Adam on the log-likelihood (plus an entropy term
  across trajectories), then extracted;
* a GMM with K = 10 components (EM) for clustering accuracy, and GMMs with C * G
  components (EM; full covariance, and diagonal) for the likelihood.

Reported on the test set: clustering accuracy (Hungarian matching of clusters to
labels), the negative log-likelihood in nats per dimension in logit space, and bits per
dimension in the data space (the logit transform's log-determinant included, 17 levels).

    python benchmarks/cpmm_digits.py --seeds 0 1 2
    python benchmarks/cpmm_digits.py --seeds 0 1 2 --device cuda   # on the GPU

Every model (the CPMM and the GMM baselines, all contmix) runs on ``--device`` (default:
cuda when available); the rows say which.
"""

import argparse
import json
import math

import torch

from machine import add_device_argument, clock, describe
from scipy.optimize import linear_sum_assignment

import contmix

ALPHA = 0.05  # the logit transform of contmix.datasets.digits
LEVELS = 17  # pixel values 0..16


def logit_log_det(x: torch.Tensor) -> torch.Tensor:
    r"""log |dx/dy| of x = logit(a + (1 - 2a) y), summed over dimensions.

    With s = sigmoid(x), dx/dy = (1 - 2a) / (s (1 - s)).
    """

    log_s = torch.nn.functional.logsigmoid(x)
    log_1ms = torch.nn.functional.logsigmoid(-x)
    return (math.log(1 - 2 * ALPHA) - log_s - log_1ms).sum(dim=-1)


def metrics(log_prob: torch.Tensor, x: torch.Tensor) -> dict:
    r"""Nats per dimension in logit space and bits per dimension in data space."""

    D = x.shape[-1]
    nats = -log_prob.mean().item() / D
    # log p(y) = log p(x) + log |dx/dy|, y in [0, 1]; bpd of the 17-level pixels
    log_py = log_prob + logit_log_det(x)
    bpd = ((-log_py + D * math.log(LEVELS)) / (D * math.log(2))).mean().item()
    return {"nats_per_dim": nats, "bits_per_dim": bpd}


def accuracy(labels: torch.Tensor, clusters: torch.Tensor, k: int) -> float:
    r"""Clustering accuracy under the best one-to-one map (Hungarian matching)."""

    labels, clusters = labels.cpu(), clusters.cpu()  # a small table, for scipy
    confusion = torch.zeros(k, k)
    confusion.index_put_((clusters, labels), torch.ones(len(labels)), accumulate=True)
    rows, cols = linear_sum_assignment(-confusion.numpy())
    return confusion[rows, cols].sum().item() / len(labels)


def fit_cpmm(x, args, seed) -> contmix.HierarchicalCPMM:
    torch.manual_seed(seed)
    model = contmix.HierarchicalCPMM(
        64,
        trajectories=10,
        components=args.components,
        rank=args.rank,
        hidden_features=(args.hidden,) * 2,
        augment=args.augment,
    ).to(x.device)
    model.initialize(x, strategy="kmeans", steps=args.init_steps)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    model.train()

    for _ in range(args.steps):
        batch = x[torch.randint(len(x), (args.batch,), device=x.device)]
        x_noisy = batch + args.noise * torch.randn_like(batch)
        loss = -model().log_prob(x_noisy).mean() - args.entropy * model.entropy(x_noisy)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()

    return model.eval()


def train_cpmm(x, args, seed) -> contmix.HierarchicalMFA:
    return fit_cpmm(x, args, seed).extract()


def run(args) -> list[dict]:
    x, x_test, _, y_test = contmix.datasets.digits()
    x, x_test, y_test = x.to(args.device), x_test.to(args.device), y_test.to(args.device)
    device = str(args.device)
    rows = []

    for seed in args.seeds:
        if not args.baselines_only:
            start = clock(device)
            cpmm = train_cpmm(x, args, seed)
            elapsed = clock(device) - start

            with torch.no_grad():
                row = {"model": f"HierarchicalCPMM C=10 G={args.components}", "seed": seed}
                row["device"] = device
                row |= metrics(cpmm().log_prob(x_test), x_test)
                row["accuracy"] = accuracy(y_test, cpmm.predict(x_test), 10)
                row["seconds"] = elapsed
            rows.append(row)
            print(row, flush=True)

        K = 10 * args.components
        baselines = [
            ("GMM K=10 full (EM)", 10, "full", 1e-6),
            (f"GMM K={K} full (EM)", K, "full", 1e-6),
            (f"GMM K={K} full (EM, reg=0.05)", K, "full", 0.05),
            (f"GMM K={K} diagonal (EM)", K, "diagonal", 1e-6),
        ]

        for name, k, covariance, reg in baselines:
            torch.manual_seed(seed)
            start = clock(device)
            gmm = contmix.GMM(64, components=k, covariance_type=covariance).to(device)
            try:
                gmm.initialize(x, strategy="em", reg=reg)
            except ValueError as error:  # EM collapses a component
                print({"model": name, "seed": seed, "failed": str(error)}, flush=True)
                continue
            elapsed = clock(device) - start

            with torch.no_grad():
                row = {"model": name, "seed": seed, "device": device}
                row |= metrics(gmm().log_prob(x_test), x_test)
                row["accuracy"] = accuracy(y_test, gmm().predict(x_test), 10) if k == 10 else None
                row["seconds"] = elapsed
            rows.append(row)
            print(row, flush=True)

    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| model | device | test accuracy | test nats/dim (logit space) | "
        "test bits/dim (data) | train time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]

        def stat(key, fmt, group=group):
            values = torch.tensor([r[key] for r in group if r[key] is not None])
            if len(values) == 0:
                return "-"
            std = values.std().item() if len(values) > 1 else 0.0
            return f"{values.mean().item():{fmt}} ± {std:{fmt}}"

        lines.append(
            f"| {name} | {group[0]['device']} | {stat('accuracy', '.3f')} | "
            f"{stat('nats_per_dim', '.3f')} | {stat('bits_per_dim', '.3f')} | "
            f"{stat('seconds', '.0f')} |"
        )

    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--components", type=int, default=10, help="G per trajectory")
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--augment", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--init-steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--entropy", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baselines-only", action="store_true")
    parser.add_argument("--out", type=str, default=None, help="JSON file for the rows")
    add_device_argument(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = str(args.device)
    print(f"device: {describe(device)}", flush=True)
    rows = run(args)
    print(summary(rows))

    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args) | {"device": device}, "rows": rows}, f, indent=1)
