"""Wall-clock timing and peak-memory probes shared by the reference (torch) and our (JAX) benchmarks."""
from __future__ import annotations

import dataclasses
import pathlib
import statistics
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Timing:
    warmup_s: float           # first call(s): compilation / autotuning / allocator warm-up
    step_s: float             # median seconds per step over the timed windows
    windows_s: tuple          # seconds per step of each window (spread = noise)


def time_steps(step: Callable[[], object], sync: Callable[[object], None], *, warmup: int, steps: int,
               windows: int) -> Timing:
    """Runs `warmup` steps, then `windows` windows of `steps` steps each, syncing only at window ends.

    Syncing once per window (not per step) measures steady-state throughput, with asynchronous dispatch
    overlapping host work with device work as a training loop does.
    """
    t0 = time.perf_counter()
    out = None
    for _ in range(max(warmup, 1)):
        out = step()
    sync(out)
    warmup_s = time.perf_counter() - t0
    per_step = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            out = step()
        sync(out)
        per_step.append((time.perf_counter() - t0) / steps)
    return Timing(warmup_s, statistics.median(per_step), tuple(per_step))


# ---------------------------------------------------------------------------------------------------------
# Peak memory. On CPU both frameworks allocate from process memory, so the probe is the process's peak RSS
# (VmHWM), reset before each variant through /proc/self/clear_refs (Linux >= 4.0).

def reset_host_peak() -> None:
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def host_peak_bytes() -> int | None:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def limit_cpu_threads(threads: int) -> None:
    """Caps torch's and XLA's CPU thread pools; call before torch/jax run anything.

    On a shared, oversubscribed CPU, OpenMP threads that spin-wait on each other made torch ~10x slower than
    one thread (27 s vs 2.2 s per tiny step measured here), so CPU runs use a fixed small count for both.
    """
    import os
    if threads <= 0:
        return
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    import torch
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable once per process, before any inter-op work
        pass
