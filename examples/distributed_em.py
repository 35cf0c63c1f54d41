r"""Fits a GMM by EM on data sharded across processes, with torch.distributed.

Each process holds one shard of the samples; within ``contmix.distributed.sharded()``,
k-means++, k-means and EM sum their statistics over the processes, so that every process ends
with the mixture fitted to the whole data. Run from the repository root, on CPU:

    torchrun --nproc_per_node=2 examples/distributed_em.py

or without torchrun, as a single process. Rank 0 then checks the result against a fit
of the whole data in one process.
"""

import argparse
import os

import torch
import torch.distributed as dist

import contmix

from contmix.distributed import sharded
from contmix.em import fit_gmm, gmm_m_step
from contmix.mixtures.start import hard_responsibilities


def blobs(n: int, seed: int = 0) -> torch.Tensor:
    r"""The whole data set: ``n`` samples of 8 Gaussian blobs in 5 dimensions."""

    generator = torch.Generator().manual_seed(seed)
    centers = 6 * torch.randn(8, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(8, (n,), generator=generator)

    return centers[labels] + torch.randn(n, 5, generator=generator, dtype=torch.float64)


def main(args):
    distributed = "RANK" in os.environ  # launched by torchrun
    if distributed:
        dist.init_process_group("gloo")

    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    # Each process keeps its own shard (in practice, it would load only that)
    x = blobs(args.samples)
    shard = x.tensor_split(world)[rank]

    gmm = contmix.GMM(features=5, components=8).double()
    torch.manual_seed(args.seed)  # alike on every process: k-means++ draws the same centres

    with sharded():
        centers = contmix.cluster.kmeans_plusplus(shard, 8)
        torch.manual_seed(args.seed)
        gmm.initialize(shard, strategy="em", tol=1e-6)
        log_lik = contmix.distributed.all_reduce(gmm().log_prob(shard).sum())

    print(
        f"process {rank}/{world}: {len(shard)} samples, mean log-likelihood {log_lik / len(x):.6f}"
    )

    if rank == 0:  # the same EM on the whole data, in one process
        clusters = contmix.cluster.kmeans(x, 8, centers=centers)[0]
        start = gmm_m_step(x, hard_responsibilities(x, clusters))
        fit = fit_gmm(x, *start, tol=1e-6)
        expected = gmm._layout(*fit[:3])
        error = max(
            ((p - e).abs().max() / e.abs().max()).item()
            for p, e in zip(gmm.phi, expected, strict=True)
        )
        print(f"largest relative difference to a single-process fit: {error:.1e}")

    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)

    main(parser.parse_args())
