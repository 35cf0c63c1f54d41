r"""Trains mixtures by gradient descent on data sharded across processes.

Each process holds one shard of the two broken circles. Run from the repository root,
on CPU:

    torchrun --nproc-per-node 2 examples/distributed_train.py

or without torchrun, as a single process. Two trainings:

1. A CWM, initialized by EM on all the shards (``sharded()``), then trained by Adam
   under ``DistributedDataParallel``: each step, every process takes its part of the
   batch and DDP averages the gradients. Rank 0 repeats the steps in one process on the
   whole batches and prints the largest difference.
2. The curriculum (``Curriculum``) inside ``sharded()``: the CNF teacher is fitted on
   the shards, each process maps its own shard through it, and a GMM is initialized
   by EM on the Gaussian space of all shards and trained through the spaces, its
   gradients summed over the processes; rank 0 writes the checkpoint.

Every process prints a checksum of its models: they are the same on every process.
"""

import argparse
import copy
import os

import torch
import torch.distributed as dist
import zuko

from torch.nn.parallel import DistributedDataParallel

import contmix

from contmix.datasets import two_circles
from contmix.distributed import all_reduce, sharded


def checksum(model: torch.nn.Module) -> str:
    r"""The sum of the parameters, to the last digit."""

    return repr(sum(p.sum().item() for p in model.parameters()))


def adam_steps(model, shards, steps: int, size: int, lr: float = 1e-2) -> None:
    r"""Adam steps on ``size`` samples of each shard, drawn by the same permutation on
    every process: a process of DDP passes its shard, the single-process check all of
    them (the whole batches)."""

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)

    for _ in range(steps):
        index = torch.randperm(len(shards[0]), generator=generator)[:size]
        xb = torch.cat([shard[index] for shard in shards])
        loss = -model().log_prob(xb).mean()

        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main(args):
    distributed = "RANK" in os.environ  # launched by torchrun
    if distributed:
        dist.init_process_group("gloo")

    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    # Each process keeps its own shard (in practice, it would load only that), all of
    # the same size for DDP: the mean loss of the whole batch is the mean of theirs
    x, _ = two_circles(args.samples, dtype=torch.float64)
    shard = x.tensor_split(world)[rank]

    # 1. DistributedDataParallel
    torch.manual_seed(args.seed)  # alike on every process
    cwm = contmix.CWM(2, components=8, hidden_features=(32, 32)).double()

    with sharded():
        cwm.initialize(shard, strategy="em")

    start = copy.deepcopy(cwm)
    ddp = DistributedDataParallel(cwm) if distributed else cwm
    adam_steps(ddp, [shard], args.steps, args.batch_size // world)

    with torch.no_grad(), sharded():
        log_lik = all_reduce(cwm().log_prob(shard).sum()) / len(x)

    print(f"process {rank}/{world}: CWM checksum {checksum(cwm)}", flush=True)

    if rank == 0:
        adam_steps(start, x.tensor_split(world), args.steps, args.batch_size // world)
        pairs = zip(cwm.parameters(), start.parameters(), strict=True)
        error = max((a - b).abs().max().item() for a, b in pairs)
        print(f"CWM mean log-likelihood {log_lik:.4f}")
        print(f"largest difference to a single-process run: {error:.1e}")

    # 2. The curriculum on shards
    torch.manual_seed(args.seed)
    cnf = zuko.flows.CNF(2, hidden_features=(32, 32), atol=1e-5, rtol=1e-4).double()
    curriculum = contmix.Curriculum(cnf)
    gmm = contmix.GMM(2, components=8).double()

    with sharded():
        curriculum.fit_teacher(shard, epochs=args.teacher_epochs, lr=1e-2, progress=False)
        spaces = curriculum.spaces(shard, steps=11)  # this shard's samples only
        history = curriculum.train(
            gmm,
            spaces,
            settings=contmix.curriculum.Settings(finetune_epochs=5, lr=1e-2, strategy="em"),
            checkpoint=args.checkpoint,
            progress=False,
        )

        with torch.no_grad():
            log_lik = all_reduce(gmm().log_prob(shard).sum()) / len(x)

    print(f"process {rank}/{world}: curriculum GMM checksum {checksum(gmm)}", flush=True)

    if rank == 0:
        print(f"curriculum loss {history[0]:.4f} (Gaussian space) -> {history[-1]:.4f} (data)")
        print(f"curriculum GMM mean log-likelihood {log_lik:.4f}")

    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seed", type=int, default=0)

    main(parser.parse_args())
