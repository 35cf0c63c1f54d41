r"""Curriculum through spaces vs direct training from a k-means start.

For each data set, one zuko CNF teacher is trained (seed 0) and the 51 spaces are
computed once. Each student model is then trained, for several seeds, (a) with the
curriculum: initialized on the Gaussian space with the "random" strategy, one epoch
per space from v = 1 to v = 0, then ``--finetune`` epochs on the data; (b) directly:
initialized by k-means on the data, then trained on the data for the same total number
of epochs. Both use the same loop (:meth:`contmix.Curriculum.train`), optimizer,
learning rate, batch size and input noise (0.01). Reported: test log-likelihood (mean,
standard deviation and per-seed values) and, on the digits, clustering accuracy of the
models with one component (or trajectory) per class and of k-means on every fifth space.
With ``--em-finish``, the GMMs are also evaluated after EM to convergence from where
their training ended (the basin each regime reached, apart from what Adam had left).

Usage:
    python benchmarks/curriculum_quality.py --datasets circles spiral digits \
        --models gmm mfa cpmm hcpmm --seeds 0 1 2
    python benchmarks/curriculum_quality.py --device cuda   # everything on the GPU

The teacher, the spaces, the students and the data live on ``--device`` (default: cuda
when available); the times are read after synchronizing it.
"""

import argparse
import json
import math
import statistics

from functools import partial
from pathlib import Path

import torch
import zuko

from machine import add_device_argument, clock, describe

from contmix import CPMM, GMM, MFA, Curriculum, HierarchicalCPMM
from contmix.cluster import kmeans
from contmix.curriculum import Settings, Spaces
from contmix.datasets import digits, spiral, two_circles
from contmix.metrics import clustering_accuracy


def load(name: str, device: torch.device):
    r"""Returns train and test samples (and test labels for the digits) on ``device``."""

    if name == "digits":
        x, x_test, _, y_test = digits()
        return x.to(device), x_test.to(device), y_test.to(device)

    make = {"circles": two_circles, "spiral": spiral}[name]
    x, _ = make(2048, seed=0)
    x_test, _ = make(2048, seed=1)
    mean, std = x.mean(dim=0), x.std(dim=0)  # the same affine map for both

    return ((x - mean) / std).to(device), ((x_test - mean) / std).to(device), None


TEACHERS = {
    "circles": {"hidden_features": (64, 64), "epochs": 40, "lr": 1e-2, "exact": True},
    "spiral": {"hidden_features": (64, 64), "epochs": 40, "lr": 1e-2, "exact": True},
    "digits": {"hidden_features": (256, 256), "epochs": 40, "lr": 1e-3, "exact": False},
}


def students(name: str, features: int) -> dict:
    r"""The student models of a data set: constructor and learning rate."""

    if name == "digits":
        return {
            "gmm": (lambda: GMM(features, components=10), 1e-2),
            "mfa": (lambda: MFA(features, components=10, rank=4), 1e-2),
            "cpmm": (
                lambda: CPMM(features, components=25, rank=2, hidden_features=(128,)),
                1e-3,
            ),
            "hcpmm": (
                lambda: HierarchicalCPMM(
                    features, trajectories=10, components=10, rank=2, hidden_features=(128,)
                ),
                1e-3,
            ),
        }

    return {
        "gmm": (lambda: GMM(features, components=16), 1e-2),
        "cpmm": (lambda: CPMM(features, components=25, rank=1, hidden_features=(32,)), 1e-3),
        "cpmm64": (
            lambda: CPMM(features, components=25, rank=1, hidden_features=(64, 64)),
            1e-2,
        ),
        "hcpmm": (  # one trajectory per circle (or a few arms)
            lambda: HierarchicalCPMM(
                features, trajectories=2, components=12, rank=1, hidden_features=(64, 64)
            ),
            1e-2,
        ),
    }


def evaluate(name, model, x_test, y_test):
    r"""Test log-likelihood, and the clustering accuracy of the models with one
    component (GMM, MFA) or one trajectory (hierarchical CPMM) per class."""

    model.eval()

    with torch.no_grad():
        dist = model()
        result = {"test_ll": dist.log_prob(x_test).mean().item()}

        if y_test is not None and name == "hcpmm":
            result["accuracy"] = clustering_accuracy(y_test, model.predict(x_test))
        elif y_test is not None and name in ("gmm", "mfa"):
            result["accuracy"] = clustering_accuracy(y_test, dist.predict(x_test))

    return result


def space_kmeans(spaces: Spaces, y: torch.Tensor, seeds: list[int], every: int = 5) -> list[dict]:
    r"""The clustering accuracy of k-means (as many clusters as classes) on every
    ``every``-th space: how much of the class structure each space keeps."""

    rows = []
    k = int(y.max()) + 1

    for i in range(0, len(spaces), every):
        accuracy = []
        for seed in seeds:
            torch.manual_seed(seed)
            _, labels = kmeans(spaces.u[i], k)
            accuracy.append(clustering_accuracy(y, labels))
        rows.append({"v": spaces.v[i].item(), "accuracy": accuracy})
        print(rows[-1], flush=True)

    return rows


def schedule(args, finetune: int):
    r"""The learning-rate schedule of both regimes, by epoch: constant; cosine decay over
    the whole schedule (``--cosine``); or constant, then cosine decay over the last
    ``finetune`` epochs (``--decay-finetune``)."""

    if args.cosine:
        return lambda optimizer, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, epochs
        )

    if args.decay_finetune:

        def factor(epochs: int, epoch: int) -> float:
            t = max(epoch - (epochs - finetune), 0) / finetune
            return 0.5 * (1 + math.cos(math.pi * t))

        return lambda optimizer, epochs: torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(factor, epochs)
        )

    return None


def run(dataset: str, models: list[str], args: argparse.Namespace) -> dict:
    r"""Trains the teacher of a data set (or loads its spaces) and every student."""

    device = torch.device(args.device)
    seeds, finetune, every = args.seeds, args.finetune, args.every
    per_space = args.epochs_per_space or every
    scheduler = schedule(args, finetune)

    x, x_test, y_test = load(dataset, device)
    y = digits()[2].to(device) if dataset == "digits" else None
    features = x.shape[-1]
    settings = dict(TEACHERS[dataset])

    if args.teacher_epochs is not None:
        settings["epochs"] = args.teacher_epochs

    cache = None if args.cache is None else Path(args.cache) / f"{dataset}_spaces.pt"

    torch.manual_seed(0)
    cnf = zuko.flows.CNF(
        features,
        hidden_features=settings["hidden_features"],
        atol=1e-4,
        rtol=1e-3,
        exact=settings["exact"],
    ).to(device)
    curriculum = Curriculum(cnf)

    if cache is not None and cache.exists():  # the teacher ran before
        spaces = Spaces.load(cache, map_location=device)
        teacher = spaces.meta["teacher"]
    else:
        start = clock(device)
        curriculum.fit_teacher(
            x, epochs=settings["epochs"], lr=settings["lr"], batch_size=256, progress=False
        )
        teacher = {**settings, "time": clock(device) - start}

        with torch.no_grad():
            cnf.transform.exact = True
            teacher["test_ll_512"] = cnf().log_prob(x_test[:512]).mean().item()

        start = clock(device)
        spaces = curriculum.spaces(x, steps=51)
        teacher["spaces_time"] = clock(device) - start
        spaces.meta["teacher"] = teacher

        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            spaces.save(cache)

    kept = None if y is None else space_kmeans(spaces, y, seeds)  # class structure

    if every > 1:  # every k-th space (the data included), k epochs on each
        keep = torch.arange(len(spaces) - 1, -1, -every).flip(0)
        spaces = Spaces(spaces.v[keep], spaces.u[keep], spaces.c, spaces.meta)

    data = Spaces(torch.zeros(1, device=device), x[None])
    total = len(spaces) * per_space + finetune

    print(dataset, "teacher:", teacher, flush=True)

    results = {
        "dataset": dataset,
        "teacher": teacher,
        "epochs": total,
        "rows": [],
    }

    if kept is not None:
        results["space_kmeans"] = kept

    for name in models:
        make, lr = students(dataset, features)[name]

        for regime in ("curriculum", "direct"):
            for seed in seeds:
                torch.manual_seed(seed)
                model = make().to(device)
                start = clock(device)

                if regime == "curriculum":
                    settings = Settings(
                        epochs_per_space=per_space,
                        finetune_epochs=finetune,
                        lr=lr,
                        batch_size=args.batch_size,
                        strategy=args.start,
                        scheduler=scheduler,
                    )
                    curriculum.train(model, spaces, settings=settings, progress=False)
                else:
                    settings = Settings(
                        epochs_per_space=total,
                        finetune_epochs=0,
                        lr=lr,
                        batch_size=args.batch_size,
                        strategy="kmeans",
                        scheduler=scheduler,
                    )
                    curriculum.train(model, data, settings=settings, progress=False)

                row = {"model": name, "regime": regime, "seed": seed}
                row.update(evaluate(name, model, x_test, y_test))
                row["time"] = clock(device) - start

                if args.em_finish and name == "gmm":
                    model.em(x, tol=1e-7, max_iter=5000)  # the basin it ended in
                    after = evaluate(name, model, x_test, y_test)
                    row.update({f"{key}_em": value for key, value in after.items()})

                results["rows"].append(row)
                print(row, flush=True)

    return results


def summary(results: list[dict]) -> str:
    lines = [
        "| data | model | regime | test LL (mean ± std) | per seed | accuracy | time/run (s) "
        "| test LL after EM (per seed) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    for result in results:
        groups = {}
        for row in result["rows"]:
            groups.setdefault((row["model"], row["regime"]), []).append(row)

        for (model, regime), rows in groups.items():
            ll = [row["test_ll"] for row in rows]
            spread = statistics.stdev(ll) if len(ll) > 1 else 0.0
            seeds = ", ".join(f"{v:.3f}" for v in ll)
            accuracy = ""
            if "accuracy" in rows[0]:
                acc = [row["accuracy"] for row in rows]
                accuracy = f"{statistics.mean(acc):.3f} ± {statistics.pstdev(acc):.3f}"
            run_time = statistics.mean(row["time"] for row in rows)
            finished = ""
            if "test_ll_em" in rows[0]:
                em = [row["test_ll_em"] for row in rows]
                finished = f"{statistics.mean(em):.3f} ({', '.join(f'{v:.3f}' for v in em)})"
            lines.append(
                f"| {result['dataset']} | {model} | {regime} | "
                f"{statistics.mean(ll):.3f} ± {spread:.3f} | {seeds} | {accuracy} | "
                f"{run_time:.0f} | {finished} |"
            )

        for row in result.get("space_kmeans", []):
            accuracy = statistics.mean(row["accuracy"])
            lines.append(
                f"| {result['dataset']} | k-means on u_v, v = {row['v']:.1f} | | | | "
                f"{accuracy:.3f} | | |"
            )

    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["circles", "spiral", "digits"])
    parser.add_argument("--models", nargs="+", default=["gmm", "mfa", "cpmm", "hcpmm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--finetune", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--cache", default=None, help="a folder to save the spaces to, or load")
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    parser.add_argument("--cosine", action="store_true", help="cosine learning-rate decay")
    parser.add_argument(
        "--start", default="random", help="the initialization on the Gaussian space"
    )
    parser.add_argument("--every", type=int, default=1, help="every k-th space, k epochs each")
    parser.add_argument(
        "--epochs-per-space",
        type=int,
        default=None,
        help="epochs on each space (default: --every)",
    )
    parser.add_argument(
        "--decay-finetune",
        action="store_true",
        help="cosine learning-rate decay over the last --finetune epochs only",
    )
    parser.add_argument(
        "--em-finish",
        action="store_true",
        help="also report the GMMs after EM to convergence from where training ended",
    )
    add_device_argument(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"device: {describe(args.device)}", flush=True)
    results = []

    for dataset in args.datasets:
        models = [
            m for m in args.models if m in students(dataset, 2 if dataset != "digits" else 64)
        ]
        results.append(run(dataset, models, args))

    if args.out is not None:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    print()
    print(summary(results))


if __name__ == "__main__":
    main()
