"""The cores this process may use, and torch's thread count chosen from them.

torch defaults to one thread per core of the machine in every process: two ``bench`` processes on
a 2-core machine then fight over the cores (17-25 s per step instead of ~1 s). We use the cores the
process is allowed to run on (its CPU affinity, a cgroup CPU quota), and an explicit
``OMP_NUM_THREADS`` or ``BENCH_THREADS`` always wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 quota when one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")


def cpu_identity() -> dict:
    """The CPU's model name and which of :data:`CPU_FLAGS_OF_INTEREST` it has (``/proc/cpuinfo``; the
    flags are ``None`` where that file is absent). Timings depend on them: without avx512_bf16 or AMX,
    bf16 matmuls are emulated and far slower, and the CPU model differs between sessions of one machine
    name, so every record carries them beside its wall time."""
    import platform

    model, flags = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's lines
            if line.startswith("flags") and flags is None:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu_model": model or platform.processor() or None,
            "cpu_flags": None if flags is None else {f: f in flags for f in CPU_FLAGS_OF_INTEREST}}


def busy_elsewhere(samples: int = 5, interval: float = 0.02) -> float:
    """Processes running right now besides this one: the fewest runnable tasks seen over a few samples
    of ``/proc/loadavg`` (an instantaneous count, unlike the lagging load average), minus ourselves."""
    import time

    counts = []
    for _ in range(samples):
        try:
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            try:
                return float(os.getloadavg()[0])
            except (AttributeError, OSError):
                return 0.0
        time.sleep(interval)
    return float(max(0, min(counts) - 1))


def idle_cores() -> tuple[int, float]:
    """(cores this process may use that other processes are not busy on right now, that busy count):
    the cores of :func:`available_cores` minus the tasks running elsewhere, at least 1."""
    n = available_cores()
    busy = busy_elsewhere()
    return max(1, min(n, n - int(busy + 0.5))), busy


def thread_count() -> tuple[int, str]:
    """(threads, why): ``BENCH_THREADS``, else ``OMP_NUM_THREADS``, else the cores not already busy
    (two processes that each take every core run many times slower than one that shares)."""
    for var in ("BENCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                continue
            if n >= 1:
                return n, f"${var}"
    n, load = idle_cores()
    return n, f"idle cores ({n} of {available_cores()} available; {load:.0f} busy elsewhere)"


_CHOSEN: dict | None = None


def configure_threads(recheck: bool = False) -> dict:
    """Set torch's intra-op thread count (the CLI's start and every run_grid call this; run_grid again
    with ``recheck`` before each cell, since other jobs come and go: the idle cores are counted anew
    unless $BENCH_THREADS or $OMP_NUM_THREADS fixes the count); returns what was chosen (recorded in
    the run log)."""
    global _CHOSEN
    if _CHOSEN is None or (recheck and not _CHOSEN["threads_from"].startswith("$")):
        import torch

        n, why = thread_count()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        _CHOSEN = {"threads": n, "threads_from": why, "available_cores": available_cores()}
    return _CHOSEN
