r"""What the benchmarks share: the machine they ran on, the device they run on, and how
they time and measure memory on it.

Every script takes ``--device`` (:func:`add_device_argument`): ``cuda`` when a CUDA
device is present, ``cpu`` otherwise. On CUDA, kernels run asynchronously: the clock is
read after :func:`torch.cuda.synchronize` (:func:`clock`), and the peak memory comes from
the CUDA caching allocator's statistics (:func:`cuda_peak_memory`).
"""

import argparse
import os
import platform
import statistics
import time

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"

    return "; ".join(
        f"{i['internal_api']} {i.get('version') or ''} ({i['num_threads']} threads)"
        for i in threadpool_info()
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"not a torch device: {name!r} ({error})") from None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    r"""Adds ``--device`` to ``parser``: where the contmix models and their data live."""

    parser.add_argument(
        "--device",
        type=parse_device,
        default=torch.device(default_device()),
        help="torch device of the contmix models and their data (default: cuda when "
        "available, else cpu); scikit-learn references always run on the CPU",
    )


def describe(device: torch.device | str) -> str:
    r"""One line that says what ``device`` is: the GPU's name, memory and CUDA version,
    or the CPU's model, cores and torch threads."""

    device = torch.device(device)

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        memory = torch.cuda.get_device_properties(index).total_memory / 2**30
        return (
            f"cuda:{index} ({torch.cuda.get_device_name(index)}, {memory:.0f} GiB, "
            f"CUDA {torch.version.cuda}), torch {torch.__version__}"
        )

    if device.type == "cpu":
        return (
            f"cpu ({cpu_model()}, {os.cpu_count()} logical cores, "
            f"torch.get_num_threads() = {torch.get_num_threads()}), torch {torch.__version__}"
        )

    return f"{device}, torch {torch.__version__}"


def synchronize(device: torch.device | str) -> None:
    r"""Waits for the kernels queued on ``device`` (a no-op on the CPU)."""

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device | str) -> float:
    r"""``time.perf_counter()`` once the work queued on ``device`` is done."""

    synchronize(device)
    return time.perf_counter()


def timed(f: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    r"""Calls ``f`` once; returns the seconds it took on ``device`` and its result."""

    start = clock(device)
    result = f()
    return clock(device) - start, result


def median_times(
    fns: dict[str, Callable[[], Any]],
    repeat: int,
    device: torch.device | str,
    warmup: int = 1,
) -> dict[str, float]:
    r"""Median seconds of each function over ``repeat`` interleaved rounds (each
    function once per round, in order), after ``warmup`` untimed rounds."""

    for _ in range(warmup):
        for f in fns.values():
            f()

    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, f in fns.items():
            times[name].append(timed(f, device)[0])

    return {name: statistics.median(t) for name, t in times.items()}


def timeit(
    f: Callable[[], Any], repeat: int, device: torch.device | str, warmup: int = 1
) -> float:
    r"""Median seconds of ``f`` over ``repeat`` calls, after ``warmup`` untimed calls."""

    return median_times({"f": f}, repeat, device, warmup)["f"]


def cuda_peak_memory(f: Callable[[], Any], device: torch.device | str) -> int:
    r"""The largest number of bytes the CUDA caching allocator had allocated at once
    while ``f`` ran, beyond what was allocated before."""

    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    f()
    synchronize(device)

    return torch.cuda.max_memory_allocated(device) - before


def peak_memory(
    f: Callable[[], Any], device: torch.device | str, cpu: Callable[[Callable[[], Any]], int]
) -> int:
    r"""Peak bytes allocated while ``f`` runs beyond what was allocated before: from the
    CUDA allocator's statistics on CUDA, by ``cpu(f)`` (the script's own measure, from
    :mod:`torch.profiler` memory events) elsewhere."""

    if torch.device(device).type == "cuda":
        return cuda_peak_memory(f, device)

    return cpu(f)


def reset_peak() -> None:
    r"""Resets the peak resident memory of this process (Linux ``clear_refs``; nothing
    elsewhere)."""

    if os.path.exists("/proc/self/clear_refs"):
        Path("/proc/self/clear_refs").write_text("5")


def resident(field: str = "VmHWM") -> float:
    r"""A memory field of this process in GiB: ``VmHWM``, the peak resident memory since
    :func:`reset_peak`, or ``VmRSS``, the resident memory now (NaN without /proc)."""

    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return float("nan")

    lines = (line for line in status if line.startswith(field + ":"))
    return next((int(line.split()[1]) / 2**20 for line in lines), float("nan"))
