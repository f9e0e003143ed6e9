"""Host input pipeline and training-loop throughput (issue #13), against what the paper-shape step consumes.

Input: paired examples/s of `sbs_jax.train.inputs.train_batches` exactly as `Trainer.run` consumes it
(unpacked, packed, or unpacked then cut by `length_buckets.BatchCutter`), one process, pinned to N cores (each
measurement runs in a child process whose CPU affinity is set before TensorFlow starts, so tf.data's
AUTOTUNE and thread pools see N cores). Steady state, first epoch (tokenization included, after `--warmup`
batches) and second epoch separately. Packed batches count examples as label segments.

Loop: with a model so small its step costs ~nothing, ms/step the trainer's loop spends outside the compiled
step (the trainer fed from in-memory batches vs the compiled step alone on the same batches); and the trainer
end to end on the real input pipeline vs the compiled step alone on the same batches, side by side in one run.

Consumption: one accelerator at the `paper` shape (T5-v1.1-base, batch 64) needs
batch / (paired_step_flops / (MFU x peak)) examples/s (`bench/flops.py`); every input rate is printed as a
multiple of it.

    python -m bench.pipeline_bench --task cqa --data_dir ../shared/datasets --out /tmp/pipe
    python -m bench.pipeline_bench --task arith --variants unpacked --cores 1 --loop
    python -m bench.pipeline_bench --task cqa --backend numpy --cores 2 --workers 2   # worker processes
    python -m bench.pipeline_bench --variants unpacked,packed --cores 1,2,2 --workers 0,0,2 --repeats 5 \
        --later_epochs 30 --batches 100000   # core scaling: interleaved rounds, medians, per-round ratios

`--workers N` runs the numpy back end's unit work in N worker processes (`host_workers`), which share the
pinned cores with the main process (the child's CPU affinity is inherited); the table's `workers` column.
`--workers 0,2` gives one count per `--cores` entry. `--repeats R` measures every config R times in interleaved
rounds; the table gives medians and the epoch-2 range, and each multi-core config's rate over the 1-core one
(ratio of medians, and per round: configs of a round run back to back, so they see about the same load).
`main CPU ms/batch`: the main process's own CPU time per later-epoch batch (its threads, not the workers): all
of the work at 0 workers, the share workers cannot take over otherwise; other load on the machine moves it
far less than the rates.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("unpacked", "packed", "bucketed")
# The measurement lengths for CQA (inputs / targets / rationales); the embedded task uses its gin's.
TASK_LENGTHS = {"cqa": {"inputs": 128, "targets": 8, "rationales": 80},
                "arith": {"inputs": 48, "targets": 4, "rationales": 20}}
INPUT_COLUMNS = ("task", "backend", "variant", "cores", "workers", "epoch 1 ex/s", "epoch 2 ex/s", "x paper step",
                 "batches", "startup s", "main CPU ms/batch", "epoch 2 range (rounds)")


def paper_consumption(mfu: float = 0.35, peak_tflops: float = 989.0) -> dict:
    """Paired examples/s one accelerator consumes at the `paper` shape and MFU `mfu` of `peak_tflops`."""
    from bench import flops, shapes
    from sbs_jax.model import get_config

    shape = shapes.get_shape("paper")
    config = get_config(shape.model, **shape.config_overrides())
    step_flops = flops.paired_step_flops(config, shape.batch, shape.inputs, shape.targets, shape.rationales)
    step_s = step_flops / (mfu * peak_tflops * 1e12)
    return {"step_tflop": step_flops / 1e12, "mfu": mfu, "peak_tflops": peak_tflops, "step_ms": 1e3 * step_s,
            "examples_per_s": shape.batch / step_s}


# ------------------------------------------------------------------------------------------------ tasks
def register_task(task: str, data_dir: str | None, cache_dir: str | None) -> str:
    """Registers the benchmark task; returns the paired (`_sbs`) task name."""
    if task == "arith":
        from sbs_jax.tasks import register_arith_tasks

        register_arith_tasks(vocab_cache_dir=cache_dir, variants=("sbs",))
        return "arith_sbs"
    if task == "cqa":
        from sbs_jax.data.records import data_dir as records
        from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib
        from sbs_jax.tasks import register_paper_tasks

        if not data_dir:
            raise ValueError("--task cqa needs --data_dir (the folder holding cqa/)")
        train = records.read_split(data_dir, "cqa", "train")
        # No T5 SentencePiece model exists offline: an 8,000-piece model trained on CQA (as bench/shapes.py).
        vocab = vocab_lib.cached_vocabulary(vocab_lib.model_texts(train.examples), vocab_size=8000,
                                            cache_dir=cache_dir, tag="cqa")
        register_paper_tasks(data_dir, datasets=["cqa"], vocabulary=vocab, variants=("sbs",))
        return "cqa_sbs"
    raise ValueError(f"--task: expected cqa or arith, got {task!r}")


def _train_examples(task_name: str) -> int:
    import seqio

    return int(seqio.get_mixture_or_task(task_name).num_input_examples("train"))


def batch_examples(batch: dict) -> int:
    """Paired examples in one batch: rows, or label segments of packed rows."""
    import numpy as np

    if "packed" in batch:
        rows = batch["packed"]
        return int(np.sum((rows["decoder_positions"] == 0) & (rows["decoder_stream_ids"] == 1)))
    return int(next(iter(next(iter(batch.values())).values())).shape[0])


def input_batches(task_name: str, variant: str, lengths: dict, batch_size: int, seed: int = 0,
                  backend: str = "auto", workers: int = 0):
    """The trainer's host batches for `variant` (what `Trainer.run` feeds `to_global`)."""
    from sbs_jax.train import inputs, length_buckets

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    it = inputs.train_batches(task_name, task_feature_lengths=lengths, batch_size=batch_size, seed=seed,
                              streams=("label", "rationale"), pack=variant == "packed", backend=backend,
                              workers=workers)
    if variant != "bucketed":
        return it
    cutter = length_buckets.BatchCutter(16)
    return (cutter(b) for b in it)


def measure_input(task_name: str, variant: str, lengths: dict, *, batch_size: int, warmup: int,
                  max_batches: int, backend: str = "auto", workers: int = 0, later_epochs: int = 1) -> dict:
    """Examples/s over epoch 1 (after `warmup` batches) and the later epochs ("epoch2": `later_epochs` times
    as many batches as counted in epoch 1, at most `max_batches`; several epochs give a window long enough to
    compare core counts): epochs split by examples served, since shuffling crosses epoch boundaries."""
    t0 = time.perf_counter()
    it = input_batches(task_name, variant, lengths, batch_size, backend=backend, workers=workers)
    epoch_examples = _train_examples(task_name)
    served, marks = 0, []  # (examples served so far, time, this process's CPU time) after each batch
    n1 = 0  # batches served within epoch 1 (a prefix of marks: served only grows); counted, not rescanned, so
    first = None  # the harness's own cost per batch stays constant (a rescan grew to ~0.2 ms/batch)
    while True:
        b = next(it)
        now, cpu = time.perf_counter(), time.process_time()
        if first is None:
            first = now - t0
        served += batch_examples(b)
        marks.append((served, now, cpu))
        n1 += served <= epoch_examples
        if served > epoch_examples and len(marks) - n1 >= min(max_batches, later_epochs * max(n1 - warmup, 1)):
            break

    def rate(lo: int, hi: int) -> float:
        return (marks[hi][0] - marks[lo][0]) / (marks[hi][1] - marks[lo][1])

    end1 = max(i for i, (s, _, _) in enumerate(marks) if s <= epoch_examples)
    if end1 <= warmup:
        raise ValueError(f"--warmup {warmup} leaves no batch of epoch 1 to time ({end1 + 1} batches per epoch)")
    last = len(marks) - 1
    # CPU of this (the main) process per later-epoch batch, worker processes excluded: the share that workers
    # cannot take over, and a number the machine's other load barely moves.
    main_cpu_ms = 1e3 * (marks[last][2] - marks[end1][2]) / (last - end1)
    return {"epoch1": rate(warmup, end1), "epoch2": rate(end1, last), "main_cpu_ms_per_batch": main_cpu_ms,
            "batches": len(marks), "startup_s": first, "epoch_examples": epoch_examples}


# ------------------------------------------------------------------------------------------------ loop
def tiny_model():
    """A T5 so small that its compiled step costs (close to) nothing."""
    from sbs_jax.model import get_config

    return get_config("t5_1_1_tiny", vocab_size=512, d_model=8, d_kv=4, num_heads=1, d_ff=8, num_layers=1,
                      num_decoder_layers=1)


def measure_loop(task_name: str, lengths: dict, *, batch_size: int, steps: int, workdir: str) -> dict:
    """(1) the trainer fed from in-memory batches vs the compiled step alone: the loop's own ms/step;
    (2) the trainer end to end on the real pipeline vs the compiled step alone on the same batches."""
    import jax

    from sbs_jax.data.registry import register
    from sbs_jax.train import trainer as trainer_lib

    model = tiny_model().replace(vocab_size=max(512, register.get_vocabulary(task_name).vocab_size))

    def config(name: str):
        return trainer_lib.TrainConfig(model_dir=os.path.join(workdir, name), mixture_or_task_name=task_name,
                                       task_feature_lengths=lengths, train_steps=steps + 1, batch_size=batch_size,
                                       model=model, validation_split=None, test_split=None, log_every=50,
                                       save_every=10 ** 9, tensorboard=False)

    host = list(_take(input_batches(task_name, "unpacked", lengths, batch_size), steps + 1))

    class InMemoryTrainer(trainer_lib.Trainer):
        def train_batches(self, start):  # noqa: D102 - the loop without the input pipeline
            return iter(host[start:])

    alone, alone_cpu = _step_alone(trainer_lib.Trainer(config("alone")), host)
    in_memory = InMemoryTrainer(config("loop")).run()
    end_to_end = trainer_lib.Trainer(config("e2e")).run()
    return {"step_alone_ms": 1e3 / alone, "trainer_in_memory_ms": 1e3 / in_memory["train_steps_per_s"],
            "loop_overhead_ms": 1e3 / in_memory["train_steps_per_s"] - 1e3 / alone,
            # CPU time per step: what the loop itself costs, whatever else the machine runs
            "step_alone_cpu_ms": 1e3 * alone_cpu, "trainer_in_memory_cpu_ms": 1e3 * in_memory["train_cpu_s_per_step"],
            "loop_overhead_cpu_ms": 1e3 * (in_memory["train_cpu_s_per_step"] - alone_cpu),
            "trainer_e2e_ms": 1e3 / end_to_end["train_steps_per_s"],
            "e2e_vs_step": end_to_end["train_steps_per_s"] / alone, "steps": steps, "devices": jax.device_count()}


def _take(it, n):
    for _ in range(n):
        yield next(it)


def _step_alone(trainer, host_batches) -> tuple[float, float]:
    """(steps/s, process CPU s/step) of the trainer's compiled step on these batches, placed on device
    beforehand (step 0 compiles)."""
    import jax

    from sbs_jax.train import inputs

    state, _ = trainer.initial_state()
    compiled = trainer.compile_step(host_batches[0])
    placed = [inputs.to_global(b, trainer.mesh) for b in host_batches]
    state, metrics = compiled(state, placed[0])
    jax.block_until_ready(metrics)
    t0, c0 = time.perf_counter(), time.process_time()
    for b in placed[1:]:
        state, metrics = compiled(state, b)
    jax.block_until_ready((state, metrics))
    n = len(placed) - 1
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


# ------------------------------------------------------------------------------------------------ driver
def _child(args) -> dict:
    register_name = register_task(args.task, args.data_dir, args.cache_dir)
    lengths = TASK_LENGTHS[args.task]
    if args.child == "loop":
        import tempfile

        with tempfile.TemporaryDirectory() as workdir:
            return measure_loop(register_name, lengths, batch_size=args.batch_size, steps=args.loop_steps,
                                workdir=workdir)
    return measure_input(register_name, args.child, lengths, batch_size=args.batch_size, warmup=args.warmup,
                         max_batches=args.batches, backend=args.backend, workers=int(args.workers),
                         later_epochs=args.later_epochs)


def core_configs(cores: str, workers: str) -> list[tuple[int, int]]:
    """(cores, workers) pairs from `--cores` and `--workers`: one worker count for every core count, or one
    per core count."""
    core_list = [int(c) for c in cores.split(",") if c]
    worker_list = [int(w) for w in workers.split(",") if w]
    if len(worker_list) == 1:
        worker_list *= len(core_list)
    if len(worker_list) != len(core_list) or not core_list or min(core_list) < 1 or min(worker_list) < 0:
        raise ValueError(f"--cores {cores!r} --workers {workers!r}: expected core counts >= 1 and one worker count "
                         "(>= 0) for all of them or one per core count")
    return list(zip(core_list, worker_list))


def _median(values: list[float]) -> float:
    import statistics

    return float(statistics.median(values))


def medians(measured: list[dict]) -> list[dict]:
    """One result per (variant, cores, workers): the median of its rounds, with the epoch-2 range."""
    groups: dict[tuple, list[dict]] = {}
    for r in measured:
        groups.setdefault((r["variant"], r["cores"], r["workers"]), []).append(r)
    out = []
    for rs in groups.values():
        row = {**rs[0], "rounds": len(rs), "epoch2_min": min(r["epoch2"] for r in rs),
               "epoch2_max": max(r["epoch2"] for r in rs)}
        for key in ("epoch1", "epoch2", "startup_s", "main_cpu_ms_per_batch"):
            if all(r.get(key) is not None for r in rs):
                row[key] = _median([r[key] for r in rs])
        row.pop("round", None)
        out.append(row)
    return out


def core_scaling(measured: list[dict]) -> list[dict]:
    """Per variant and multi-core config, its epoch-2 rate over the variant's 1-core config: the ratio of medians
    and each round's own ratio (the two ran back to back, so a round's ratio sees about the same machine load)."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in measured):
        rs = [r for r in measured if r["variant"] == variant]
        one = [r for r in rs if r["cores"] == 1]
        if not one or len({r["workers"] for r in one}) > 1:
            continue  # no single 1-core baseline
        by_round = {r["round"]: r["epoch2"] for r in one}
        for cores, workers in dict.fromkeys((r["cores"], r["workers"]) for r in rs if r["cores"] > 1):
            many = [r for r in rs if (r["cores"], r["workers"]) == (cores, workers)]
            out.append({"variant": variant, "cores": cores, "workers_1": one[0]["workers"], "workers_n": workers,
                        "ratio": _median([r["epoch2"] for r in many]) / _median([r["epoch2"] for r in one]),
                        "per_round": [r["epoch2"] / by_round[r["round"]] for r in many if r["round"] in by_round]})
    return out


def run_child(args, kind: str, cores: int, workers: int = 0) -> dict:
    """One measurement in a fresh process pinned to the first `cores` CPUs it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise ValueError(f"--cores {cores}: only {len(allowed)} CPUs are available")
    cmd = [sys.executable, "-m", "bench.pipeline_bench", "--child", kind, "--task", args.task,
           "--batch_size", str(args.batch_size), "--warmup", str(args.warmup), "--batches", str(args.batches),
           "--later_epochs", str(args.later_epochs), "--loop_steps", str(args.loop_steps), "--backend", args.backend,
           "--workers", str(workers)]
    for flag in ("data_dir", "cache_dir"):
        if getattr(args, flag):
            cmd += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": os.environ.get(
        "CUDA_VISIBLE_DEVICES", ""), "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO,
                          preexec_fn=lambda: os.sched_setaffinity(0, allowed[:cores]))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def input_rows(task: str, results: list[dict], consumption: float) -> list[dict]:
    return [{"task": task, "backend": r.get("backend", "auto"), "variant": r["variant"], "cores": r["cores"],
             "workers": r.get("workers", 0), "epoch1": r["epoch1"],
             "epoch2": r["epoch2"], "vs_paper": r["epoch2"] / consumption, "batches": r["batches"],
             "startup_s": r["startup_s"], "main_cpu_ms": r.get("main_cpu_ms_per_batch"),
             "epoch2_min": r.get("epoch2_min", r["epoch2"]), "epoch2_max": r.get("epoch2_max", r["epoch2"]),
             "rounds": r.get("rounds", 1)} for r in results]


def markdown(env: dict, consumption: dict, rows: list[dict], loop: dict | None, scaling: list[dict]) -> str:
    lines = [f"#### Input pipeline, {env['date_utc']} UTC, commit `{env['commit']}`, CPU: {env['cpu']} "
             f"({env['cpus']} usable)", "",
             f"Paper-shape consumption: {consumption['step_tflop']:.3f} TFLOP/step at "
             f"{100 * consumption['mfu']:.0f}% MFU of {consumption['peak_tflops']:.0f} TFLOP/s = "
             f"{consumption['step_ms']:.1f} ms/step = **{consumption['examples_per_s']:,.0f} paired examples/s "
             f"per accelerator**.", "",
             "| " + " | ".join(INPUT_COLUMNS) + " |", "|" + "---|" * len(INPUT_COLUMNS)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['backend']} | {r['variant']} | {r['cores']} | {r['workers']} | "
                     f"{r['epoch1']:,.0f} | {r['epoch2']:,.0f} | "
                     f"{r['vs_paper']:.2f} | {r['batches']} | {r['startup_s']:.1f} | "
                     f"{'-' if r.get('main_cpu_ms') is None else format(r['main_cpu_ms'], '.3f')} | "
                     f"{r['epoch2_min']:,.0f}-{r['epoch2_max']:,.0f} ({r['rounds']}) |")
    lines.append("")
    for sc in scaling:
        rounds = ", ".join(f"{x:.2f}" for x in sc["per_round"])
        lines.append(f"- {sc['variant']}: epoch-2 rate, {sc['cores']} cores ({sc['workers_n']} workers) / 1 core "
                     f"({sc['workers_1']} workers) = **{sc['ratio']:.2f}x** (ratio of medians; per round: {rounds})")
    if loop is not None:
        lines += ["", f"Loop ({loop['devices']} device(s), {loop['steps']} steps, near-free step): compiled step "
                  f"alone {loop['step_alone_ms']:.2f} ms/step; trainer on in-memory batches "
                  f"{loop['trainer_in_memory_ms']:.2f} ms/step -> **loop overhead "
                  f"{loop['loop_overhead_ms']:.2f} ms/step** wall, {loop['loop_overhead_cpu_ms']:.2f} ms/step "
                  f"process CPU ({loop['trainer_in_memory_cpu_ms']:.2f} vs {loop['step_alone_cpu_ms']:.2f}); "
                  "trainer end to end on the real pipeline "
                  f"{loop['trainer_e2e_ms']:.2f} ms/step = **{100 * loop['e2e_vs_step']:.0f}% of the step alone**."]
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import datetime

    from bench.report import _commit, _cpu_model

    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "commit": _commit(), "cpu": _cpu_model(), "cpus": len(os.sched_getaffinity(0)),
            "python": sys.version.split()[0]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="cqa", choices=("cqa", "arith"))
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"))
    p.add_argument("--cache_dir", default=None, help="vocabulary cache (default ~/.cache/sbs_jax)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "tf.data"),
                   help="input back end (pipeline.train_batches); tf.data = the path before the numpy back end")
    p.add_argument("--cores", default="1,2")
    p.add_argument("--workers", default="0",
                   help="worker processes of the numpy back end (0 = in the main process); they share the --cores. "
                        "One count, or one per --cores entry (e.g. --cores 1,2 --workers 0,2)")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every measurement, interleaved; the table gives medians and the epoch-2 range")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=20, help="epoch-1 batches not timed")
    p.add_argument("--batches", type=int, default=200, help="at most this many epoch-2 batches are timed")
    p.add_argument("--later_epochs", type=int, default=1,
                   help="epochs timed after the first (a longer steady-state window; --batches still caps it)")
    p.add_argument("--loop", action="store_true", help="also measure the loop overhead and the trainer")
    p.add_argument("--loop_steps", type=int, default=200)
    p.add_argument("--mfu", type=float, default=0.35)
    p.add_argument("--peak_tflops", type=float, default=989.0)
    p.add_argument("--out", default=None, help="write pipeline.md and pipeline.json here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(_child(args)), flush=True)
        return 0
    consumption = paper_consumption(args.mfu, args.peak_tflops)
    env = environment()  # before the runs: the commit that was measured
    configs = core_configs(args.cores, args.workers)
    variants = [v for v in args.variants.split(",") if v]
    measured = []  # one dict per measurement, rounds interleaved so that load changes hit every config alike
    for round_ in range(args.repeats):
        for variant in variants:
            for cores, workers in configs:
                r = {"variant": variant, "cores": cores, "backend": args.backend, "workers": workers,
                     "round": round_, **run_child(args, variant, cores, workers)}
                print(f"round {round_ + 1}/{args.repeats}: {variant} on {cores} core(s), {workers} worker(s): "
                      f"epoch 1 {r['epoch1']:,.0f} ex/s, epoch 2 {r['epoch2']:,.0f} "
                      f"ex/s ({r['epoch2'] / consumption['examples_per_s']:.2f}x the paper step)", flush=True)
                measured.append(r)
    results = medians(measured)
    scaling = core_scaling(measured)
    loop = run_child(args, "loop", len(os.sched_getaffinity(0))) if args.loop else None
    rows = input_rows(args.task, results, consumption["examples_per_s"])
    text = markdown(env, consumption, rows, loop, scaling)
    print(text)
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"env": env, "consumption": consumption, "inputs": rows, "scaling": scaling, "loop": loop,
                   "measurements": measured}
        (out / "pipeline.json").write_text(json.dumps(payload, indent=1))
        (out / "pipeline.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
