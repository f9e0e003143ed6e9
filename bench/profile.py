"""Where a step's time goes: kernel-time profiles of our step (jax.profiler) and the reference (torch.profiler).

    python -m bench.profile --shape paper --variant ours_bf16_fused --reference bf16 --out /tmp/bench

For ours: device kernel time per step (or, on CPU, XLA thread time) split into matmul kernels and the rest,
against the wall time of a step: busy < wall means the device waits on the host; matmul share < 1 means
elementwise/fusion work, not the tensor cores, bounds the step. For the reference: torch's own kernel table.
Writes `<out>/profile_<shape>.md` and the raw traces under `<out>/traces/`.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import collections  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from bench.shapes import SHAPES, get_shape  # noqa: E402
from bench.timing import limit_cpu_threads  # noqa: E402

# cuBLAS/cuBLASLt (xmma, nvjet), CUTLASS and Triton GEMM fusions on GPU; dot thunks on CPU.
_MATMUL = re.compile(r"gemm|xmma|nvjet|cutlass|cublas|wgmma|matmul|\bdot|dot_|convolution", re.I)
_HOST_XLA = re.compile(r"XLAPjRtCpuClient|XLAEigen")
# CPU events that enclose the per-op events (counting them would count each op twice) or are idle waits.
_CPU_WRAPPERS = re.compile(r"^ThunkExecutor|Await")


def _self_times(events: list[dict]) -> dict[str, float]:
    """Exclusive time per name on one thread: an enclosing event (a while loop, an executor) is charged only
    for what its children do not cover, so nested events are not counted twice."""
    times: dict[str, float] = collections.Counter()
    stack: list[list] = []  # [end, name, self_time]
    for e in sorted(events, key=lambda e: (e["ts"], -e.get("dur", 0.0))):
        start, dur = e["ts"], e.get("dur", 0.0)
        while stack and stack[-1][0] <= start:
            _, name, own = stack.pop()
            times[name] += own
        if stack:
            stack[-1][2] -= min(dur, stack[-1][0] - start)
        stack.append([start + dur, e["name"], dur])
    for _, name, own in stack:
        times[name] += own
    return times


def kernel_times(trace_file: pathlib.Path) -> tuple[dict[str, float], str]:
    """Microseconds per kernel name from a perfetto trace: device kernels if any, else XLA CPU threads."""
    data = json.load(gzip.open(trace_file))
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device_pids = {pid for pid, name in procs.items() if name.startswith("/device:")}
    stream_threads = {key for key, name in threads.items() if key[0] in device_pids and "Stream" in name}
    by_thread: dict[tuple, list] = collections.defaultdict(list)
    for e in events:
        if e.get("ph") != "X":
            continue
        if device_pids:
            # GPU traces repeat the kernels on "XLA Modules"/"XLA Ops" lines; the stream lines hold them once.
            if e["pid"] in device_pids and (not stream_threads or (e["pid"], e["tid"]) in stream_threads):
                by_thread[(e["pid"], e["tid"])].append(e)
        elif _HOST_XLA.search(threads.get((e["pid"], e["tid"]), "")) and not _CPU_WRAPPERS.search(e["name"]):
            by_thread[(e["pid"], e["tid"])].append(e)
    times: dict[str, float] = collections.Counter()
    for thread_events in by_thread.values():
        times.update(_self_times(thread_events))
    return dict(times), ("device kernels" if device_pids else "XLA CPU thread time")


def summarize(times: dict[str, float], steps: int, wall_step_s: float, source: str, top: int = 12) -> list[str]:
    busy = sum(times.values()) / steps / 1e6
    head = (f"- wall {1e3 * wall_step_s:.1f} ms/step; {source}: {1e3 * busy:.1f} ms/step "
            f"({100 * busy / wall_step_s:.0f}% of wall; above 100% when threads or streams overlap)")
    if source == "device kernels":
        matmul = sum(t for name, t in times.items() if _MATMUL.search(name)) / steps / 1e6
        head += f", of which matmul kernels {1e3 * matmul:.1f} ms ({100 * matmul / max(busy, 1e-12):.0f}%)"
    else:  # XLA:CPU fusions do not say whether they hold a dot
        head += "; matmul share not identifiable from CPU op names"
    lines = [head, "",
             "| kernel | ms/step | share |", "|---|---|---|"]
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| `{name[:90]}` | {t / steps / 1e3:.2f} | {100 * t / max(sum(times.values()), 1e-9):.1f}% |")
    return lines


def profile_ours(shape, variant: str, steps: int, trace_dir: pathlib.Path) -> list[str]:
    import jax

    from bench.ours import VARIANTS, OursStep
    ours = OursStep(shape, VARIANTS[variant])
    for _ in range(3):
        out = ours.step()
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = ours.step()
    jax.block_until_ready(out)
    wall = (time.perf_counter() - t0) / steps
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(steps):
            out = ours.step()
        jax.block_until_ready(out)
    trace = sorted(trace_dir.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)[-1]
    times, source = kernel_times(trace)
    return [f"#### ours `{variant}`", ""] + summarize(times, steps, wall, source) + [""]


def profile_reference(shape, mode: str, steps: int) -> list[str]:
    import torch

    from bench.ours import model_config
    from bench.reference import ReferenceStep
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ref = ReferenceStep(model_config(shape).to_hf_dict(), batch=shape.batch, inputs=shape.inputs,
                        targets=shape.targets, rationales=shape.rationales, mode=mode, device=device)
    for _ in range(3):
        out = ref.step()
    ref.sync(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = ref.step()
    ref.sync(out)
    wall = (time.perf_counter() - t0) / steps
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            out = ref.step()
        ref.sync(out)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=15)
    ref.release()
    return [f"#### reference `hf_{mode}`", "", f"- wall {1e3 * wall:.1f} ms/step; torch.profiler over {steps} "
            "steps:", "", "```", table, "```", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="kernel-time profile of our step and the reference step")
    p.add_argument("--shape", default="cpu_tiny", choices=sorted(SHAPES))
    p.add_argument("--variant", default="ours_bf16_fused")
    p.add_argument("--reference", default="bf16", help="reference mode to profile ('' for none)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--cpu_threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        limit_cpu_threads(args.cpu_threads)
    shape = get_shape(args.shape)
    lines = [f"### Profile, shape `{shape.name}`", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    lines += profile_ours(shape, args.variant, args.steps, args.out / "traces" / shape.name)
    # Written after each part: a run cut short by its time limit keeps ours.
    (args.out / f"profile_{shape.name}.md").write_text("\n".join(lines) + "\n")
    if args.reference:
        lines += profile_reference(shape, args.reference, args.steps)
    text = "\n".join(lines)
    print(text)
    (args.out / f"profile_{shape.name}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
