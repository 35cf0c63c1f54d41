r"""Tables 1 and 3 of Bender et al. (2023) on scikit-learn's digits, Fashion-MNIST or MNIST.

The paper's evaluation rebuilt on scikit-learn's 8x8 digits, on Fashion-MNIST at its own
scale (60,000 + 10,000 images of 784 pixels, from the Debian package
dataset-fashion-mnist: ``--data fashion-mnist``) or, from local idx files, on MNIST.

Table 1 (bits per dimension and clustering accuracy on the test set), for each seed:

1. matched GMM: one full-covariance component per class, EM from k-means++;
2. GMM with many diagonal components (EM) and spectral clustering of the components
   with the Fréchet affinity (:func:`contmix.cluster.cluster_components`);
3. GMM with the curriculum: one component per class, random start on the Gaussian
   space, one epoch per space, then fine-tuning;
4. hierarchical CPMM with the curriculum: one trajectory per class, clusters by Bayes'
   rule over the trajectories;
5. the CNF teacher itself (trained once, on seed 0; exact trace for the evaluation);
6. a zuko masked autoregressive flow trained by maximum likelihood;
7. for reference, the hierarchical CPMM of ``benchmarks/cpmm_digits.py`` trained from a
   k-means start without the curriculum (with its entropy term across trajectories);
8. beyond the paper, the direct fits a user would reach for: the matched GMM with
   diagonal covariances (EM), the MFA with as many components as the many-component GMM
   (EM), and k-means itself (clustering only).

The CNF teacher is trained only when a selected model trains through its spaces (or with
``--teacher``); each row records its fit time and the peak resident memory of the process
during the fit (Linux).

Table 3 (out-of-distribution detection): the same models trained on some classes
(``--inliers``, 0 to 4 by default) score the test samples of all classes by their
log-likelihood; AUROC and AUPR of telling the held-out classes from the others. On 784-D
images, also the paper's own Table 3 task (``--ood-digits-seeds``): the models of Table 1,
trained on all classes, tell their test images from scikit-learn's digits in MNIST's
layout (:func:`contmix.datasets.digits_28x28`), preprocessed alike.

Bits per dimension are those of the discrete pixels (17 levels for the digits, 256 for
MNIST), the logit transform's log-determinant and the dequantization included, as in
``benchmarks/cpmm_digits.py``. The teachers' spaces are cached with ``--cache``.

One PyTorch thread by default: on a machine shared with other jobs, two threads on two
cores were much slower (see docs/benchmarks/evaluation.md).

Usage:
    python benchmarks/evaluation.py --out evaluation.json --cache spaces/
    python benchmarks/evaluation.py --quick
    python benchmarks/evaluation.py --data mnist --root ~/data/mnist --limit 5000
    python benchmarks/evaluation.py --data fashion-mnist --setting fashion \
        --models gmm-diagonal gmm-many mfa kmeans --out fashion.json
"""

import argparse
import hashlib
import json
import math
import statistics
import sys
import time

from pathlib import Path

import torch
import zuko

from cpmm_digits import fit_cpmm
from cpmm_digits import metrics as digits_metrics
from curriculum_quality import TEACHERS
from machine import add_device_argument, describe, reset_peak, resident
from tqdm.auto import tqdm

from contmix import GMM, MFA, Curriculum, HierarchicalCPMM
from contmix.cluster import cluster_components, kmeans, labeller, predict_clusters
from contmix.curriculum import Settings, Spaces
from contmix.datasets import digits, digits_28x28, fashion_mnist, mnist
from contmix.metrics import aupr, auroc, bits_per_dim, clustering_accuracy
from contmix.transforms import LogitTransform, dequantize_logit

ALPHA = 0.05  # the logit transform's squeeze, as in contmix.datasets.digits

SETTINGS = {
    "full": {
        "seeds": [0, 1, 2],
        "ood_seeds": [0],
        "teacher": {**TEACHERS["digits"], "batch_size": 256, "atol": 1e-4, "rtol": 1e-3},
        "steps": 51,
        "finetune": 25,
        "batch_size": 128,
        "many": 100,
        "gmm_lr": 1e-2,
        "cpmm": {"components": 10, "rank": 2, "hidden_features": (128,)},
        "cnn_channels": (32, 32),
        "cpmm_lr": 1e-3,
        "kmeans_cpmm": {  # as in docs/benchmarks/cpmm.md
            "components": 10,
            "rank": 2,
            "hidden": 256,
            "augment": 2.0,
            "steps": 500,
            "init_steps": 100,
            "batch": 256,
            "lr": 1e-3,
            "noise": 0.01,
            "entropy": 1.0,
        },
        "flow": {"transforms": 3, "hidden_features": (256, 256)},
        "flow_epochs": 60,
        "flow_lr": 1e-3,
    },
    "quick": {
        "seeds": [0],
        "ood_seeds": [0],
        "teacher": {
            "hidden_features": (64, 64),
            "epochs": 5,
            "lr": 1e-3,
            "exact": False,
            "batch_size": 256,
            "atol": 1e-4,
            "rtol": 1e-3,
            "probes": 1,  # the exact trace costs D products: a minute at 784-D
        },
        "steps": 11,
        "finetune": 5,
        "batch_size": 128,
        "many": 50,
        "curriculum_gmm": {"components": 10, "covariance_type": "diagonal"},
        "mfa": {"components": 10, "rank": 2},
        "gmm_lr": 1e-2,
        "cpmm": {"components": 5, "rank": 2, "hidden_features": (64,)},
        "cnn_channels": (16, 16),
        "cpmm_lr": 1e-3,
        "kmeans_cpmm": {
            "components": 5,
            "rank": 2,
            "hidden": 64,
            "augment": 2.0,
            "steps": 50,
            "init_steps": 10,
            "batch": 256,
            "lr": 1e-3,
            "noise": 0.01,
            "entropy": 1.0,
        },
        "flow": {"transforms": 2, "hidden_features": (64, 64)},
        "flow_epochs": 20,
        "flow_lr": 1e-3,
    },
    "fashion": {  # Fashion-MNIST at the paper's scale: the direct rows, three seeds
        "seeds": [0, 1, 2],
        "ood_seeds": [0],
        "ood_digits_seeds": [0, 1, 2],
        "teacher": {  # the budget of 2 CPU cores: see docs/benchmarks/fashion_mnist.md
            **TEACHERS["digits"],
            "epochs": 20,
            "batch_size": 256,
            "atol": 1e-3,  # the same losses as 1e-4 / 1e-3 over the first 70 steps,
            "rtol": 1e-2,  # with 118 evaluations per step instead of 183
            "storage": "float16",
            "probes": 4,
        },
        "steps": 51,
        "finetune": 25,
        "batch_size": 256,
        "many": 250,
        "curriculum_gmm": {"components": 250, "covariance_type": "diagonal"},
        "mfa": {"components": 250, "rank": 4},
        "gmm_lr": 1e-2,
        "cpmm": {"components": 25, "rank": 4, "hidden_features": (256,)},
        "cnn_channels": (64, 64),  # the paper's: three convolutions of width 64, sines,
        "image_cpmm": {"augment": 4.0, "log_diag_min": -6.0},  # four-fold, log d >= -6
        "cpmm_lr": 3e-4,
        "kmeans_cpmm": {},
        "flow": {"transforms": 3, "hidden_features": (1024, 1024)},
        "flow_epochs": 20,
        "flow_lr": 1e-3,
    },
}


# data


def load(args):
    r"""Returns the train and test samples and labels, and the number of levels."""

    if args.data == "digits":
        x, x_test, y, y_test = digits(alpha=ALPHA)
        return x, x_test, y, y_test, 17

    if args.data == "fashion-mnist":  # the Debian package's folder unless --root
        try:
            return (*fashion_mnist(args.root, args.limit, alpha=ALPHA), 256)
        except FileNotFoundError as error:
            raise SystemExit(f"--data fashion-mnist: {error}") from None

    if args.root is None:
        raise SystemExit(f"--data {args.data} needs --root, the folder with its idx files.")

    try:
        return (*mnist(args.root, args.limit, alpha=ALPHA), 256)
    except FileNotFoundError as error:
        raise SystemExit(f"--data {args.data}: {error}") from None


def outliers(x: torch.Tensor) -> torch.Tensor:
    r"""scikit-learn's digits in MNIST's layout, dequantized and in logit space as the
    images, the outliers of the paper's Table 3 (in the dtype and on the device of x)."""

    images, _ = digits_28x28()
    generator = torch.Generator().manual_seed(0)
    out = dequantize_logit(images.flatten(1), 256, ALPHA, generator, torch.float64)

    return out.to(x)


def data_log_prob(log_prob: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""log p(y) of the dequantized pixels y in [0, 1] from log p(x) in logit space."""

    return log_prob + LogitTransform(ALPHA).log_abs_det_jacobian(None, x).sum(dim=-1)


def bpd(log_prob: torch.Tensor, x: torch.Tensor, levels: int) -> float:
    return bits_per_dim(data_log_prob(log_prob, x), x.shape[-1], levels).mean().item()


# models


def teacher(x, x_test, settings, cache, name, bar):
    r"""Trains the CNF teacher (seed 0) and computes its spaces, with the teacher's test
    log-likelihoods in their ``meta``; loads both from the cache if there.

    With a cache, the training checkpoints after every epoch (``*.teacher.pt``) and a
    run that finds the checkpoint resumes from it: at 784-D an interrupted run is
    started again with the same command. The teacher's settings may train it on the
    first ``samples`` images only (its budget), store the spaces in ``storage``
    (``"float16"`` halves their memory) and estimate the test log-likelihoods with
    ``probes`` Hutchinson probes per image instead of the exact trace (784
    vector-Jacobian products per evaluation at 784-D)."""

    t = settings["teacher"]
    key = json.dumps([t, settings["steps"], x.shape, x.sum().item()])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = None if cache is None else Path(cache) / f"{name}_{digest}.pt"

    torch.manual_seed(0)
    cnf = zuko.flows.CNF(
        x.shape[-1],
        hidden_features=t["hidden_features"],
        atol=t["atol"],
        rtol=t["rtol"],
        exact=t["exact"],
    )
    curriculum = Curriculum(cnf)

    if path is not None and path.exists():
        cnf.load_state_dict(torch.load(path.with_suffix(".cnf.pt"), weights_only=True))
        return curriculum, Spaces.load(path)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    bar.set_postfix(stage=f"{name}: CNF teacher")
    curriculum.fit_teacher(
        x[: t.get("samples")],
        epochs=t["epochs"],
        lr=t["lr"],
        batch_size=t["batch_size"],
        checkpoint=None if path is None else path.with_suffix(".teacher.pt"),
    )
    train_time = time.perf_counter() - start

    start = time.perf_counter()
    bar.set_postfix(stage=f"{name}: spaces")
    storage = getattr(torch, t.get("storage", "float32"))
    spaces = curriculum.spaces(x, steps=settings["steps"], dtype=storage)
    spaces_time = time.perf_counter() - start

    probes = t.get("probes")
    bar.set_postfix(stage=f"{name}: CNF evaluation")
    cnf.transform.exact = probes is None
    with torch.no_grad():
        log_prob = torch.stack(
            [
                torch.cat([cnf().log_prob(chunk) for chunk in x_test.split(512)])
                for _ in range(probes or 1)
            ]
        ).mean(dim=0)
    cnf.transform.exact = t["exact"]

    spaces.meta |= {
        "test_log_prob": log_prob,
        "train_time": train_time,
        "spaces_time": spaces_time,
        "trace": "exact" if probes is None else f"Hutchinson, {probes} probes",
    }

    if path is not None:
        spaces.save(path)
        torch.save(cnf.state_dict(), path.with_suffix(".cnf.pt"))

    return curriculum, spaces


def matched_gmm(x, settings, k):
    gmm = GMM(x.shape[-1], components=k)
    gmm.initialize(x, strategy="em")
    return gmm, lambda x: gmm().predict(x)


def many_gmm(x, settings, k):
    gmm = GMM(x.shape[-1], components=settings["many"], covariance_type="diagonal")
    gmm.initialize(x, strategy="em")

    with torch.no_grad():
        labels = cluster_components(gmm(), k)

    return gmm, lambda x: predict_clusters(gmm(), labels, x)


def diagonal_gmm(x, settings, k):
    gmm = GMM(x.shape[-1], components=k, covariance_type="diagonal")
    gmm.initialize(x, strategy="em")
    return gmm, lambda x: gmm().predict(x)


def mfa(x, settings, k):
    r"""The MFA by EM with as many components as the trajectories extract (no clusters:
    the Fréchet distances of its low-rank covariances in 784-D would take hours)."""

    model = MFA(x.shape[-1], **settings["mfa"])
    model.initialize(x, strategy="em")
    return model, None


def kmeans_clusters(x, settings, k):
    r"""k-means (greedy k-means++ start): clusters only, no density."""

    centers, _ = kmeans(x, k)
    return None, labeller(x, centers)


def curriculum_gmm(x, settings, k, curriculum, spaces):
    r"""A GMM through the spaces: one component per class (full covariances), or the
    setting's ``curriculum_gmm`` (e.g. 250 diagonal components on Fashion-MNIST, as
    the paper's), its components then grouped by spectral clustering as ``gmm-many``."""

    options = settings.get("curriculum_gmm", {"components": k})
    gmm = GMM(x.shape[-1], **options)
    train_curriculum(gmm, curriculum, spaces, settings, settings["gmm_lr"])

    if gmm.components == k:
        return gmm, lambda x: gmm().predict(x)

    with torch.no_grad():
        labels = cluster_components(gmm(), k)

    return gmm, lambda x: predict_clusters(gmm(), labels, x)


def entropy(settings):
    r"""The k-means reference's entropy term across trajectories, as a regularizer (none
    where the setting has no weight for it: Fashion-MNIST's, as benchmarks/cpmm_fashion.py)."""

    weight = settings["kmeans_cpmm"].get("entropy")
    if weight is None:
        return None
    return lambda model, d, xb: -weight * model.entropy(xb, d=d)


def curriculum_cpmm(x, settings, k, curriculum, spaces):
    r"""A HierarchicalCPMM through the spaces, with the entropy term across trajectories
    of the k-means reference."""

    cpmm = HierarchicalCPMM(x.shape[-1], trajectories=k, **settings["cpmm"])
    train_curriculum(cpmm, curriculum, spaces, settings, settings["cpmm_lr"], entropy(settings))
    cpmm.eval()
    model = cpmm.extract()  # the same log_prob and predict, without the ODE
    return model, model.predict


def curriculum_image_cpmm(x, settings, k, curriculum, spaces):
    r"""The same through the spaces, with the state in image shape and CNN dynamics."""

    side = math.isqrt(x.shape[-1])
    options = settings["cpmm"] | {"hidden_features": settings["cnn_channels"]}
    options |= settings.get("image_cpmm", {})
    cpmm = HierarchicalCPMM((1, side, side), trajectories=k, **options)
    train_curriculum(cpmm, curriculum, spaces, settings, settings["cpmm_lr"], entropy(settings))
    cpmm.eval()
    model = cpmm.extract()
    return model, model.predict


def kmeans_cpmm(x, settings, k):
    r"""The reference without the curriculum: benchmarks/cpmm_digits.py's hierarchical
    CPMM (10 trajectories, k-means start, Adam with an entropy term across trajectories)."""

    args = argparse.Namespace(**settings["kmeans_cpmm"])
    model = fit_cpmm(x, args, torch.initial_seed()).extract()
    return model, model.predict


def train_curriculum(model, curriculum, spaces, settings, lr, regularizer=None):
    r"""Random start on the Gaussian space, one epoch per space, then fine-tuning."""

    options = Settings(
        finetune_epochs=settings["finetune"],
        lr=lr,
        batch_size=settings["batch_size"],
        strategy="random",
        regularizer=regularizer,
    )
    curriculum.train(model, spaces, settings=options)
    model.eval()


def flow(x, settings, k):
    r"""A masked autoregressive flow by maximum likelihood, early stopped on 10% of the
    train set."""

    n = len(x) // 10
    order = torch.randperm(len(x))
    x_val, x_fit = x[order[:n]], x[order[n:]]

    model = zuko.flows.MAF(x.shape[-1], **settings["flow"])
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["flow_lr"])
    best, state = math.inf, None

    for _ in tqdm(range(settings["flow_epochs"]), desc="MAF", leave=False):
        model.train()
        for index in torch.randperm(len(x_fit)).split(settings["batch_size"]):
            loss = -model().log_prob(x_fit[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        model.eval()
        with torch.no_grad():
            val = -model().log_prob(x_val).mean().item()
        if val < best:
            best, state = val, {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(state)
    return model, None


MODELS = {  # --models key: row name, fit, whether it trains through the spaces
    "gmm": ("GMM matched (EM)", matched_gmm, False),
    "gmm-many": ("GMM many diagonal (EM) + spectral clustering", many_gmm, False),
    "gmm-curriculum": ("GMM with curriculum", curriculum_gmm, True),
    "cpmm-curriculum": ("HierarchicalCPMM with curriculum", curriculum_cpmm, True),
    "cpmm-image-curriculum": (
        "HierarchicalCPMM with curriculum, image-shaped (CNN dynamics)",
        curriculum_image_cpmm,
        True,
    ),
    "cpmm-kmeans": ("HierarchicalCPMM, k-means start (no curriculum)", kmeans_cpmm, False),
    "maf": ("MAF (zuko, max. likelihood)", flow, False),
    "gmm-diagonal": ("GMM matched, diagonal (EM)", diagonal_gmm, False),
    "mfa": ("MFA (EM), as many components as the CPMM", mfa, False),
    "kmeans": ("k-means (clusters only)", kmeans_clusters, False),
}


# the two tables


def figures(row, log_prob, x_test, inside_test, levels):
    r"""Turns the test log-likelihoods of a row into its figures."""

    if row["task"] == "table1":
        row["bits_per_dim"] = bpd(log_prob, x_test, levels)
    else:  # scores: log p(y) of the pixels, the logit transform included
        scores = data_log_prob(log_prob, x_test)
        inside, outside = scores[inside_test], scores[~inside_test]
        row["bits_per_dim_inliers"] = bpd(log_prob[inside_test], x_test[inside_test], levels)
        row["auroc"], row["aupr"] = auroc(inside, outside), aupr(inside, outside)

    return row


def run(args) -> dict:
    settings = dict(SETTINGS[args.setting])
    settings.setdefault("ood_digits_seeds", [])
    for key in ("seeds", "ood_seeds", "ood_digits_seeds", "finetune"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.teacher_epochs is not None:
        settings["teacher"] = {**settings["teacher"], "epochs": args.teacher_epochs}
    if args.cpmm_hidden is not None:
        settings["cpmm"] = {**settings["cpmm"], "hidden_features": tuple(args.cpmm_hidden)}
    models = {key: MODELS[key] for key in args.models}

    x, x_test, y, y_test, levels = load(args)
    # the data is made on the CPU (seeded), then every tensor and module on the device
    x, x_test, y, y_test = (t.to(args.device) for t in (x, x_test, y, y_test))
    torch.set_default_device(args.device)
    k = int(y.max()) + 1
    inside = torch.isin(y, torch.tensor(args.inliers))
    inside_test = torch.isin(y_test, torch.tensor(args.inliers))

    if args.data == "digits":  # the same bits/dim as benchmarks/cpmm_digits.py
        log_prob = -x_test.square().sum(-1)
        reference = digits_metrics(log_prob, x_test)["bits_per_dim"]
        assert math.isclose(bpd(log_prob, x_test, levels), reference, rel_tol=1e-5)

    images = x.shape[-1] == 784  # the paper's Table 3 outliers need MNIST's layout
    x_digits = outliers(x) if images and settings["ood_digits_seeds"] else None

    tasks = {"table1": (x, k), "ood": (x[inside], len(args.inliers))}
    jobs = [(seed, "table1") for seed in settings["seeds"]]
    jobs += [(seed, "ood") for seed in settings["ood_seeds"]]
    tasks = {task: tasks[task] for task in dict.fromkeys(task for _, task in jobs)}
    jobs.sort(key=lambda job: job[0])  # seed by seed: a cut run has whole seeds

    results = {
        "data": args.data,
        "setting": args.setting,
        "settings": settings,
        "inliers": args.inliers,
        "threads": args.threads,
        "device": describe(args.device),
        "samples": {"train": len(x), "test": len(x_test), "train_inliers": int(inside.sum())},
        "rows": [],
    }
    rows = results["rows"]
    needs_teacher = args.teacher or any(spaces for _, _, spaces in models.values())
    teaching = tasks if needs_teacher else {}
    bar = tqdm(total=len(teaching) + len(jobs) * len(models), desc="evaluation", position=0)
    teachers = {}

    def save():
        if args.out is not None:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)

    for task, (x_fit, _) in teaching.items():  # one teacher per training set, seed 0
        start = time.perf_counter()
        name = f"{args.data}_{task}"
        teachers[task] = teacher(x_fit, x_test, settings, args.cache, name, bar)
        meta = teachers[task][1].meta
        row = {
            "task": task,
            "model": "CNF teacher (zuko, seed 0)",
            "seed": 0,
            "seconds": meta["train_time"],
            "spaces_seconds": meta["spaces_time"],
            "wall_seconds": time.perf_counter() - start,
        }
        rows.append(figures(row, meta["test_log_prob"], x_test, inside_test, levels))
        bar.update()
        save()

    for seed, task in jobs:
        x_fit, classes = tasks[task]

        for name, fit, needs_spaces in models.values():
            bar.set_postfix(stage=f"{task}: {name}, seed {seed}")
            torch.manual_seed(seed)
            reset_peak()
            start = time.perf_counter()
            extra = teachers[task] if needs_spaces else ()
            model, predict = fit(x_fit, settings, classes, *extra)
            row = {"task": task, "model": name, "seed": seed}
            row["seconds"] = time.perf_counter() - start
            row["peak_gib"] = resident()

            with torch.no_grad():
                log_prob = None if model is None else model().log_prob(x_test)
                if task == "table1" and predict is not None:
                    clusters = predict(x_test)
                    row["accuracy"] = clustering_accuracy(y_test, clusters)
                    row["clusters_used"] = clusters.unique().numel()
                    row["predictions"] = clusters.tolist()  # the confusion matrix's
                digits_ood = task == "table1" and seed in settings["ood_digits_seeds"]
                if model is not None and x_digits is not None and digits_ood:
                    inside, outside = (
                        data_log_prob(model().log_prob(z), z) for z in (x_test, x_digits)
                    )
                    row["digits_auroc"] = auroc(inside, outside)
                    row["digits_aupr"] = aupr(inside, outside)

            if log_prob is not None:
                figures(row, log_prob, x_test, inside_test, levels)
            rows.append(row)
            bar.update()
            save()

    bar.close()

    return results


def stat(rows, key, scale=1.0, digits=3):
    values = [r[key] * scale for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


COLUMNS = {  # task: the header and the figures of a row
    "table1": (
        "bits/dim | accuracy (%) | clusters used",
        lambda rows: [
            stat(rows, "bits_per_dim"),
            stat(rows, "accuracy", 100, 1),
            stat(rows, "clusters_used", digits=1),
        ],
    ),
    "digits": (
        "AUROC | AUPR",
        lambda rows: [stat(rows, "digits_auroc", 100, 2), stat(rows, "digits_aupr", 100, 2)],
    ),
    "ood": (
        "AUROC | AUPR | bits/dim (test inliers)",
        lambda rows: [
            stat(rows, "auroc", 100, 1),
            stat(rows, "aupr", 100, 1),
            stat(rows, "bits_per_dim_inliers"),
        ],
    ),
}


def table(groups: dict, task: str) -> list[str]:
    r"""The markdown lines of one table: a row per model, mean ± std over seeds."""

    header, figures = COLUMNS[task]
    columns = 4 + header.count("|") + 1
    lines = [f"| model | seeds | {header} | train time (s) | peak memory (GiB) |"]
    lines.append("| --- " * columns + "|")
    kind_of = {"digits": "table1"}.get(task, task)
    key = {"digits": "digits_auroc"}.get(task)

    for (kind, model), rows in groups.items():
        rows = [r for r in rows if key is None or key in r]
        if kind == kind_of and rows:
            cells = [model, str(len(rows)), *figures(rows), stat(rows, "seconds", digits=0)]
            lines.append("| " + " | ".join(cells) + f" | {stat(rows, 'peak_gib', digits=2)} |")

    return lines


def tables(results: dict) -> str:
    groups = {}
    for row in results["rows"]:
        groups.setdefault((row["task"], row["model"]), []).append(row)

    inliers = "".join(map(str, results["inliers"]))
    lines = [
        "Table 1: test bits/dim and clustering accuracy (%), mean ± std over seeds",
        "",
        *table(groups, "table1"),
        "",
        f"Table 3: OOD detection by log-likelihood, trained on classes {inliers}, "
        "the other classes out (%)",
        "",
        *table(groups, "ood"),
    ]
    if any("digits_auroc" in row for row in results["rows"]):
        lines += [
            "",
            "Table 3: OOD detection by log-likelihood, trained on all classes, scikit-learn's "
            "digits in MNIST's layout out (%)",
            "",
            *table(groups, "digits"),
        ]

    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=["digits", "mnist", "fashion-mnist"], default="digits")
    parser.add_argument("--root", default=None, help="the folder of the idx files (MNIST)")
    parser.add_argument("--limit", type=int, default=None, help="at most N train/test samples")
    parser.add_argument("--quick", action="store_true", help="1 seed, small models, few epochs")
    parser.add_argument("--setting", choices=list(SETTINGS), default=None, help="default: full")
    parser.add_argument("--teacher", action="store_true", help="train the CNF teacher anyway")
    parser.add_argument("--ood-digits-seeds", type=int, nargs="*", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Table 1 seeds")
    parser.add_argument("--ood-seeds", type=int, nargs="*", default=None, help="Table 3 seeds")
    parser.add_argument("--inliers", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--finetune", type=int, default=None, help="epochs on the data")
    parser.add_argument("--cpmm-hidden", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None, help="a folder for the teachers' spaces")
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    add_device_argument(parser)
    args = parser.parse_args()
    args.setting = args.setting or ("quick" if args.quick else "full")

    torch.set_num_threads(args.threads)
    print("device:", describe(args.device))
    start = time.perf_counter()
    results = run(args)
    results["total_seconds"] = time.perf_counter() - start
    results["command"] = " ".join(sys.argv)

    if args.out is not None:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    print()
    print(tables(results))
    print(f"\ntotal: {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
