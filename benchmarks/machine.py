r"""What the benchmarks print about the machine they ran on."""

import platform


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
