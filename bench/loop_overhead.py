"""The training loop's own cost per step (issue #13: <= 1 ms/step), resolved to well under 1 ms.

A step that costs almost nothing (embedded task, batch 8, lengths 16 / 4 / 8, a T5 with d_model 8, one layer
and one head each side) is timed two ways on the same in-memory host batches: the compiled step alone on
batches placed beforehand, and `Trainer.run` fed those host batches (prefetcher, placement, async metrics,
progress bar, metrics.jsonl, checkpoint cadence; no validation). The two are interleaved `--repeats` times
(alone, trainer, alone, trainer, ...) so that a change of the machine's load hits both, and the medians of
wall and process-CPU ms/step are reported; overhead = trainer - alone. Each step is compiled once for all
repeats. The loop's bookkeeping alone (`StepLoop` with a step that does nothing) is timed too.
`--profile` prints the loop's per-step Python by cProfile (one extra trainer run).

    python -m bench.loop_overhead --repeats 5 --steps 300 --out /tmp/loop_overhead
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

LENGTHS = {"inputs": 16, "targets": 4, "rationales": 8}


def near_free_model(vocab_size: int):
    from sbs_jax.model import get_config

    return get_config("t5_1_1_tiny", vocab_size=max(512, vocab_size), d_model=8, d_kv=4, num_heads=1, d_ff=8,
                      num_layers=1, num_decoder_layers=1)


def step_alone(trainer, compiled, host_batches) -> tuple[float, float]:
    """(wall s/step, process CPU s/step) of `compiled` on `host_batches` placed beforehand; the first step
    is not timed (as the trainer's timer)."""
    import jax

    from sbs_jax.train import inputs

    state, _ = trainer.initial_state()
    placed = [inputs.to_global(b, trainer.mesh) for b in host_batches]
    state, metrics = compiled(state, placed[0])
    jax.block_until_ready((state, metrics))
    t0, c0 = time.perf_counter(), time.process_time()
    for b in placed[1:]:
        state, metrics = compiled(state, b)
    jax.block_until_ready((state, metrics))
    n = len(placed) - 1
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def measure(*, repeats: int, steps: int, workdir: str, batch_size: int = 8, log_every: int = 50,
            profile: bool = False) -> dict:
    import jax

    from bench import pipeline_bench
    from sbs_jax.data.registry import register
    from sbs_jax.train import trainer as trainer_lib

    task = pipeline_bench.register_task("arith", None, os.path.join(workdir, "vocab"))
    model = near_free_model(register.get_vocabulary(task).vocab_size)
    host = list(pipeline_bench._take(pipeline_bench.input_batches(task, "unpacked", LENGTHS, batch_size),
                                     steps + 1))
    compiled_steps: dict = {}

    class InMemoryTrainer(trainer_lib.Trainer):
        """The trainer without its input pipeline, its step compiled once for every repeat."""

        def train_batches(self, start):  # noqa: D102
            return iter(host[start:])

        def compile_step(self, local):  # noqa: D102
            if "step" not in compiled_steps:
                compiled_steps["step"] = super().compile_step(local)
            return compiled_steps["step"]

    runs = iter(range(10 ** 6))

    def trainer():
        return InMemoryTrainer(trainer_lib.TrainConfig(
            model_dir=os.path.join(workdir, f"run{next(runs)}"), mixture_or_task_name=task,
            task_feature_lengths=LENGTHS, train_steps=steps + 1, batch_size=batch_size, model=model,
            validation_split=None, test_split=None, log_every=log_every, save_every=10 ** 9, tensorboard=False))

    first = trainer()
    compiled = first.compile_step(host[0])
    alone_wall, alone_cpu, loop_wall, loop_cpu = [], [], [], []
    for _ in range(repeats):
        wall, cpu = step_alone(first, compiled, host)
        alone_wall.append(wall)
        alone_cpu.append(cpu)
        summary = trainer().run()
        loop_wall.append(1.0 / summary["train_steps_per_s"])
        loop_cpu.append(summary["train_cpu_s_per_step"])
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    result = {"steps": steps, "repeats": repeats, "batch_size": batch_size, "lengths": LENGTHS,
              "devices": jax.device_count(), "load_average": os.getloadavg(),
              "step_alone_ms": ms(alone_wall), "trainer_ms": ms(loop_wall),
              "step_alone_cpu_ms": ms(alone_cpu), "trainer_cpu_ms": ms(loop_cpu),
              "overhead_ms": ms(loop_wall) - ms(alone_wall), "overhead_cpu_ms": ms(loop_cpu) - ms(alone_cpu),
              # per-repeat differences: how far the interleaved pairs spread
              "overhead_ms_pairs": [1e3 * (a - b) for a, b in zip(loop_wall, alone_wall)],
              "overhead_cpu_ms_pairs": [1e3 * (a - b) for a, b in zip(loop_cpu, alone_cpu)]}
    os.makedirs(os.path.join(workdir, "python_only"), exist_ok=True)
    result["loop_python_ms"], result["loop_python_cpu_ms"] = loop_python_ms(10 * steps, workdir, log_every)
    if profile:
        result["profile"] = profile_run(trainer())
    return result


def loop_python_ms(steps: int, workdir: str, log_every: int = 50) -> tuple[float, float]:
    """(wall, process CPU) ms/step of `loop.StepLoop`'s own Python with a step that does nothing (returns
    ready arrays) and batches handed over ready: the loop's bookkeeping alone (cadence, timer, async metrics,
    progress bar, metrics.jsonl), without dispatch or placement."""
    import io

    import jax.numpy as jnp

    from sbs_jax.train import loop, progress

    state, metrics = jnp.zeros(()), {"loss": jnp.ones(()), "accuracy": jnp.ones(())}
    feed = iter([({"label": {}}, {})] * steps)
    steps_loop = loop.StepLoop(
        lambda local: (lambda s, b: (s, metrics)), cadence=loop.Cadence(end=steps, log_every=log_every),
        writer=progress.MetricWriter(os.path.join(workdir, "python_only"), tensorboard=False),
        bar=progress.ProgressBar(steps, 0, 8, log_every=log_every, stream=io.StringIO(), enabled=True),
        validate=lambda s, d: {}, save=lambda d, s, m: None)
    t0, c0 = time.perf_counter(), time.process_time()
    steps_loop.run(state, 0, feed)
    return 1e3 * (time.perf_counter() - t0) / steps, 1e3 * (time.process_time() - c0) / steps


def profile_run(trainer, top: int = 25) -> str:
    """cProfile of one trainer run's loop (`Trainer.train_loop`), the top functions by own time."""
    import cProfile
    import io
    import pstats

    state, start = trainer.initial_state()
    profiler = cProfile.Profile()
    profiler.enable()
    result = trainer.train_loop(state, start)
    profiler.disable()
    trainer.finish(result)  # waits for the last checkpoint
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def markdown(r: dict, commit: str, date_utc: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in r["load_average"])
    return (f"Loop overhead, {date_utc} UTC, commit `{commit}`, load average {load}: near-free step (batch "
            f"{r['batch_size']}, lengths {r['lengths']['inputs']}/{r['lengths']['targets']}/"
            f"{r['lengths']['rationales']}, d_model 8, one layer and head), {r['steps']} steps x {r['repeats']} "
            f"interleaved repeats, medians: compiled step alone {r['step_alone_ms']:.3f} ms/step wall "
            f"({r['step_alone_cpu_ms']:.3f} ms CPU), trainer on in-memory batches {r['trainer_ms']:.3f} ms/step "
            f"({r['trainer_cpu_ms']:.3f} ms CPU) -> **loop overhead {r['overhead_ms']:.3f} ms/step wall, "
            f"{r['overhead_cpu_ms']:.3f} ms/step process CPU** (per-repeat wall "
            f"{', '.join(f'{x:.2f}' for x in r['overhead_ms_pairs'])}; CPU "
            f"{', '.join(f'{x:.2f}' for x in r['overhead_cpu_ms_pairs'])}). The loop's own Python alone (a step "
            f"that does nothing): {r['loop_python_ms']:.4f} ms/step wall, {r['loop_python_cpu_ms']:.4f} ms CPU.\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=300, help="timed steps per run (one more is run first)")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one trainer run's loop")
    p.add_argument("--out", default=None, help="write loop_overhead.md and loop_overhead.json here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        p.error("--repeats and --steps must be positive")
    from bench.pipeline_bench import environment

    env = environment()  # before the runs: the commit that was measured
    with tempfile.TemporaryDirectory() as workdir:
        r = measure(repeats=args.repeats, steps=args.steps, workdir=workdir, profile=args.profile)
    text = markdown(r, env["commit"], env["date_utc"])
    if "profile" in r:
        print(r["profile"])
    print(text)
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "loop_overhead.json").write_text(json.dumps({"env": env, **r}, indent=1))
        (out / "loop_overhead.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
