r"""CPMM and HierarchicalCPMM trained as a user would: the defaults and a plain loop.

For each data set and seed: the model with its defaults, ``initialize(x)`` (the "em"
start), then Adam at the recommended learning rate on batches of 256, nothing else (no
schedule, no clipping, no noise), in the module's default (training) mode. Every
``--every`` steps the model is evaluated on a fresh test set of the same size; the
largest fall of the test log-likelihood between two checkpoints is reported. References,
fitted by EM on the same training set: a GMM with as many components (full
covariances), an MFA with as many components and the same rank, and for the digits the
10-cluster k-means (clustering accuracy): contmix's ``kmeans`` with 1 and 10 restarts and,
when installed, scikit-learn's ``KMeans(10, n_init=10)``, all on the same logit features.

    python benchmarks/cpmm_training.py --data circles spiral digits --seeds 0 1 2 \
        --out cpmm_training.json
    python benchmarks/cpmm_training.py --plot cpmm_training.json   # the curves, a PNG

Data: ``two_circles(3600)`` (radii 1 and 1.1, noise 0.02) with CPMM(2, components=25,
rank=1); ``spiral(4000)`` with HierarchicalCPMM(2, trajectories=5, components=10); the
8x8 digits (``contmix.datasets.digits()``, logit space, 1437 train, 360 test) with
HierarchicalCPMM(64, trajectories=10, components=25, rank=4), its figures in bits/dim of
the 17-level pixels (``--components`` per trajectory, 25 by default). The 2-D test sets
are drawn with another seed. ``--diag-penalty w`` adds to the loss w times
``model.penalty(d)``, the squared shift of the components' log-variances from the start's
(the recipe where components have few samples: on the digits the diagonals shrink as the
model overfits, with ``--components 10 --diag-penalty 1``); ``--swap`` evaluates the
trained model with the start's diagonals, and the start with the trained ones.
"""

import argparse
import itertools
import json
import time

import torch

from machine import describe

import contmix

from contmix.datasets import digits, spiral, two_circles
from contmix.distributions import GaussianMixture, LowRankNormal
from contmix.metrics import clustering_accuracy
from contmix.transforms import logit_bits_per_dim

LR = 3e-4  # the learning rate the CPMM docstring recommends
REFERENCE = {"circles": "GMM", "spiral": "GMM", "digits": "GMM"}  # what the curves are less


def load(name: str, seed: int) -> tuple:
    r"""Train and test samples (and test labels for the digits)."""

    if name == "circles":
        return two_circles(3600, seed=2 * seed)[0], two_circles(3600, seed=2 * seed + 1)[0], None
    if name == "spiral":
        return spiral(4000, seed=2 * seed)[0], spiral(4000, seed=2 * seed + 1)[0], None

    x, x_test, _, y_test = digits()
    return x, x_test, y_test


def model_of(name: str, other: bool = False, components: int = 25) -> torch.nn.Module:
    if name == "circles" and other:  # one trajectory per circle
        return contmix.HierarchicalCPMM(2, trajectories=2, components=13, rank=1)
    if name == "circles":
        return contmix.CPMM(2, components=25, rank=1)
    if name == "spiral" and other:  # one trajectory through every arm
        return contmix.CPMM(2, components=50)
    if name == "spiral":
        return contmix.HierarchicalCPMM(2, trajectories=5, components=10)

    return contmix.HierarchicalCPMM(64, trajectories=10, components=components, rank=4)


def score(name: str, log_prob: torch.Tensor, x: torch.Tensor) -> float:
    r"""The mean test log-likelihood in nats, or bits/dim for the digits."""

    if name == "digits":
        return logit_bits_per_dim(log_prob, x, levels=17).mean().item()
    return log_prob.mean().item()


@torch.no_grad()
def references(name: str, model, x, x_test, y_test, seed: int) -> dict:
    K, M = model.trajectories * model.components, x.shape[-1]
    covariance = "diagonal" if name == "digits" else "full"  # full: 250 x 64-D on 1437
    generator = torch.Generator().manual_seed(seed)
    gmm = contmix.GMM(M, components=K, covariance_type=covariance)
    gmm.initialize(x, "em", generator=generator)
    mfa = contmix.MFA(M, components=K, rank=model.rank)
    mfa.initialize(x, "em", generator=generator)
    refs = {
        f"GMM({K}, {covariance}) EM": score(name, gmm().log_prob(x_test), x_test),
        f"MFA({K}, rank {model.rank}) EM": score(name, mfa().log_prob(x_test), x_test),
    }

    if y_test is not None:  # k-means on the same features, test samples to the nearest centre
        for n_init in (1, 10):
            km = torch.Generator().manual_seed(seed)
            centers, _ = contmix.cluster.kmeans(x, 10, n_init=n_init, generator=km)
            clusters = contmix.cluster.assign(x_test, centers)
            refs[f"k-means(10, n_init={n_init}) accuracy"] = clustering_accuracy(y_test, clusters)
        try:
            from sklearn.cluster import KMeans
        except ImportError:  # scikit-learn is optional
            return refs
        km = KMeans(10, n_init=10, random_state=seed).fit(x.numpy())
        clusters = torch.as_tensor(km.predict(x_test.numpy())).long()
        refs["sklearn KMeans(10, n_init=10) accuracy"] = clustering_accuracy(y_test, clusters)

    return refs


def diagonal(d) -> torch.Tensor:
    r"""The diagonals of the low-rank components of a mixture (of mixtures) of them."""

    while not hasattr(d, "cov_diag"):
        d = d.component_distribution
    return d.cov_diag


def with_diagonal(d, diag: torch.Tensor) -> GaussianMixture:
    r"""The mixture (of mixtures) of low-rank components ``d`` with other diagonals."""

    if hasattr(d, "cov_diag"):
        return LowRankNormal(d.loc, d.cov_factor, diag)
    inner = with_diagonal(d.component_distribution, diag)
    return GaussianMixture(inner, d.mixture_distribution.logits)


def train(name: str, seed: int, args: argparse.Namespace) -> dict:
    x, x_test, y_test = load(name, seed)
    torch.manual_seed(seed)
    model = model_of(name, args.other, args.components)
    steps, every, lr, entropy = args.steps, args.every, args.lr, args.entropy
    row = {"data": name, "seed": seed, "lr": lr, "entropy": entropy}
    row["diag_penalty"] = args.diag_penalty
    row["model"] = type(model).__name__
    row["components"] = model.components
    row["references"] = references(name, model, x, x_test, y_test, seed)

    start = time.perf_counter()
    model.initialize(x, generator=torch.Generator().manual_seed(seed))
    row["initialize_s"] = time.perf_counter() - start

    def evaluate() -> dict:
        with torch.no_grad():
            d = model()
            point = {"test": score(name, d.log_prob(x_test), x_test)}
            point["train"] = score(name, d.log_prob(x), x)
            if y_test is not None:
                point["accuracy"] = clustering_accuracy(y_test, d.predict(x_test))
        return point

    if args.swap:
        with torch.no_grad():
            first = model()

    curve = [{"step": 0} | evaluate()]
    print(name, seed, curve[-1], flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()

    for step in range(1, steps + 1):
        batch = x[torch.randint(len(x), (256,))]
        d = model()
        loss = -d.log_prob(batch).mean()
        if entropy:  # the paper's regularizer across trajectories, for clustering
            loss = loss - entropy * model.entropy(batch, d=d)
        if args.diag_penalty:  # keeps the diagonals near the start's (they shrink as it overfits)
            loss = loss + args.diag_penalty * model.penalty(d)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        if step % every == 0:
            curve.append({"step": step} | evaluate())
            print(name, seed, curve[-1], flush=True)

    row["train_s"] = time.perf_counter() - start
    if args.swap:  # the trained model with the start's diagonals, and the other way round
        with torch.no_grad():
            last = model()
            for key, d in (
                ("trained, start's diagonals", with_diagonal(last, diagonal(first))),
                ("start, trained diagonals", with_diagonal(first, diagonal(last))),
            ):
                row[key] = {"test": score(name, d.log_prob(x_test), x_test)}
                if y_test is not None:
                    row[key]["accuracy"] = clustering_accuracy(y_test, d.predict(x_test))
                print(name, seed, key, row[key], flush=True)
    row["curve"] = curve
    sign = 1 if name == "digits" else -1  # bits/dim fall, nats rise
    falls = [sign * (b["test"] - a["test"]) for a, b in itertools.pairwise(curve)]
    row["largest_fall"] = max(falls)

    return row


def plot(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        rows = json.load(f)["rows"]

    names = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)

    for ax, name in zip(axes[0], names, strict=True):
        for row in (r for r in rows if r["data"] == name):
            key = next(k for k in row["references"] if k.startswith(REFERENCE[name]))
            steps = [p["step"] for p in row["curve"]]
            gap = [p["test"] - row["references"][key] for p in row["curve"]]
            ax.plot(steps, gap, label=f"seed {row['seed']}")
        ax.axhline(0.0, color="black", lw=0.8, label=key)
        if name != "digits":
            ax.axhline(-0.05, color="gray", ls="--", lw=0.8, label="0.05 nats below it")
        ax.set_title(name)
        ax.set_xlabel("Adam steps")
        unit = "bits/dim" if name == "digits" else "log-likelihood (nats)"
        ax.set_ylabel(f"test {unit}, less {key.split(' EM')[0]}'s")
        ax.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(path.replace(".json", ".png"), dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["circles", "spiral", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--entropy", type=float, default=0.0, help="weight of the entropy")
    parser.add_argument(
        "--other", action="store_true", help="HierarchicalCPMM(2 x 13) / CPMM(50) on the 2-D sets"
    )
    parser.add_argument(
        "--components", type=int, default=25, help="components per trajectory on the digits"
    )
    parser.add_argument(
        "--diag-penalty",
        type=float,
        default=0.0,
        help="weight of the squared shift of log d from the start's, summed over features",
    )
    parser.add_argument(
        "--swap", action="store_true", help="evaluate the trained model with the start's diagonals"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=str, default=None, help="JSON file for the rows")
    parser.add_argument("--plot", type=str, default=None, help="plot a JSON file")
    args = parser.parse_args()

    if args.plot:
        plot(args.plot)
        raise SystemExit

    torch.set_num_threads(args.threads)
    print(f"device: {describe('cpu')}", flush=True)
    rows = []
    for name in args.data:
        for seed in args.seeds:
            rows.append(train(name, seed, args))
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"args": vars(args), "rows": rows}, f, indent=1)

    for row in rows:
        last = row["curve"][-1]
        print(
            f"{row['data']} seed {row['seed']}: start {row['curve'][0]['test']:.4f}, "
            f"end {last['test']:.4f}, largest fall {row['largest_fall']:.4f}, "
            f"references {row['references']}, init {row['initialize_s']:.0f} s, "
            f"train {row['train_s']:.0f} s"
        )
