r"""Data larger than memory: GMM.em over a DataLoader of a memory-mapped array.

D = 64 features, K = 64 components, diagonal covariances, float32 samples of a random
mixture written to a memory-mapped .npy file in a temporary folder (10^7 rows: 2.56 GB),
read by a DataLoader in batches of 65,536 rows (16 MiB). Each batch is copied out of a
fresh memory map that is closed at once, so that the pages of the file read so far do not
stay mapped into the process (they would count in its resident memory, though the kernel
can drop them at any time).

Measured, for N = 10^5, 10^6, 10^7:

- peak memory: the peak resident set size (VmHWM of ``/proc/self/status``;
  ``resource.getrusage(...).ru_maxrss`` where there is no /proc) of a fresh process that
  builds the model and runs ``em()`` for 3 iterations, over the DataLoader and, at the
  sizes that fit, on the whole array loaded as one tensor. It
  includes the interpreter and torch (the baseline row: a process that only imports them);
- time per pass: ``(t(max_iter=4) - t(max_iter=1)) / 3``, the time of one EM iteration
  without the passes that come first (the check of the batches, the data mean, N), for the
  DataLoader and the tensor alternately in the same process, median over the repeats.

Run (about 10 minutes on 2 idle cores, 2.6 GB of free disk in the temporary folder):

    python benchmarks/out_of_core.py           # the figures of docs/benchmarks/gmm.md
    python benchmarks/out_of_core.py --quick   # 10^4 and 10^5 rows, a smoke run

It prints markdown tables.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from torch.utils.data import DataLoader, Dataset

from contmix import GMM
from contmix.report import ConvergenceWarning

D, K, BATCH = 64, 64, 65536


class Rows(Dataset):
    r"""Contiguous batches of rows of a .npy file, each read through its own memory map."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
        self.rows = len(np.load(path, mmap_mode="r"))

    def __len__(self) -> int:
        return -(-self.rows // self.size)

    def __getitem__(self, i: int) -> torch.Tensor:
        array = np.load(self.path, mmap_mode="r")
        batch = np.array(array[i * self.size : (i + 1) * self.size])
        del array  # unmapped: the pages read do not stay in this process

        return torch.from_numpy(batch)


def write(path: str, N: int, seed: int = 0) -> None:
    r"""Writes N samples of a random mixture of K diagonal Gaussians, chunk by chunk."""

    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(K, D, generator=g)
    scales = torch.empty(K, D).uniform_(0.5, 1.5, generator=g)
    array = np.lib.format.open_memmap(path, "w+", np.float32, (N, D))

    for start in range(0, N, 2**20):
        n = min(2**20, N - start)
        k = torch.randint(K, (n,), generator=g)
        array[start : start + n] = (means[k] + scales[k] * torch.randn(n, D, generator=g)).numpy()

    array.flush()
    del array


def model(seed: int = 1) -> GMM:
    r"""A GMM started from random samples (the same start for both fits)."""

    torch.manual_seed(seed)
    return GMM(D, components=K, covariance_type="diagonal")


def start(gmm: GMM, path: str) -> None:
    r"""Sets the parameters from K rows of the file (no pass through the data)."""

    array = np.load(path, mmap_mode="r")
    rows = torch.from_numpy(np.array(array[:: len(array) // K][:K]))
    with torch.no_grad():
        gmm.phi[1].copy_(rows)
        gmm.phi[2].zero_()
        gmm.phi[0].zero_()


def fit(data, path: str, iterations: int) -> float:
    gmm = model()
    start(gmm, path)
    begin = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.em(data, tol=0.0, max_iter=iterations, progress=False)

    return time.perf_counter() - begin


def loader(path: str) -> DataLoader:
    return DataLoader(Rows(path, BATCH), batch_size=None)


def in_memory(path: str) -> torch.Tensor:
    return torch.from_numpy(np.load(path))


def child(mode: str, path: str) -> None:
    r"""In a fresh process: em() for 3 iterations, then the peak resident memory."""

    if mode != "baseline":
        fit(loader(path) if mode == "batches" else in_memory(path), path, 3)
    print(json.dumps({"peak": high_water()}))


def high_water() -> int:
    r"""The peak resident set size of this process, in bytes: VmHWM of /proc/self/status
    on Linux (ru_maxrss would count the parent's memory, kept across fork and exec)."""

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak(mode: str, path: str) -> float:
    command = [sys.executable, __file__, "--child", mode, path]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"] / 2**20


def per_pass(data, path: str, repeats: int) -> list[float]:
    return [(fit(data, path, 4) - fit(data, path, 1)) / 3 for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit", type=float, default=2e9, help="in-memory up to")
    args = parser.parse_args()

    if args.child:
        return child(*args.child)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    sizes = [10**4, 10**5] if args.quick else [10**5, 10**6, 10**7]
    folder = tempfile.mkdtemp()
    free = shutil.disk_usage(folder).free
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {folder}: "
        f"{free / 1e9:.0f} GB free"
    )

    rows = [f"| baseline (import torch, contmix) | | {peak('baseline', '-'):.0f} | | |"]
    try:
        for N in sizes:
            if N * D * 4 * 1.1 > free:
                print(f"N = {N}: not enough disk, stopped at the previous size")
                break
            path = os.path.join(folder, f"x{N}.npy")
            write(path, N)
            fits = N * D * 4 * 3 < args.memory_limit  # the tensor, its float64 copy
            repeats = 3 if N < 10**7 else 1
            batches, tensor = [], []
            x = in_memory(path) if fits else None
            for _ in range(repeats):  # alternately, side by side
                batches += per_pass(loader(path), path, 1)
                if fits:
                    tensor += per_pass(x, path, 1)
            del x
            b, t = statistics.median(batches), statistics.median(tensor) if fits else None
            memory = (peak("batches", path), peak("tensor", path) if fits else None)
            ratio = f"{b / t:.2f}" if fits else "-"
            rows.append(
                f"| {N:.0e} | {b:.3g} | {memory[0]:.0f} | "
                + (f"{t:.3g} | {memory[1]:.0f} |" if fits else "- | - |")
                + f" {ratio} |"
            )
            os.remove(path)
    finally:
        shutil.rmtree(folder)

    print()
    print(
        "| N | s per pass, DataLoader | peak RSS MiB, DataLoader | s per pass, tensor "
        "| peak RSS MiB, tensor | time ratio |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
