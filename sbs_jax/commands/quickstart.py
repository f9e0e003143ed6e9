"""`sbs quickstart`: standard finetuning vs distilling step-by-step on the embedded task, over several seeds.

Every (method, seed) cell is an ordinary `sbs train` run (same gin files and trainer) on the same small train
subset, evaluated on the test split with its best checkpoint by validation accuracy. The printout compares the
methods across seeds (per-seed accuracies, mean and spread, how many seed pairs each wins, a 95 % interval of
the difference) and says how large the test set is, so the reader can judge how sure the comparison is.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

from sbs_jax import errors
from sbs_jax import seed_comparison

METHODS = (("standard finetuning", "finetune", "runs/finetune.gin"),
           ("distilling step-by-step", "step_by_step", "runs/step_by_step.gin"))
GIN_FILES = ("models/t5_1_1_tiny.gin", "datasets/arith.gin", "runs/quickstart.gin")
DEFAULT_SEEDS = (0, 1, 2)
FULL_SEEDS = (0, 1, 2, 3, 4, 5, 6, 7)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbs quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="where the run directories go (default: a new temp dir)")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help=f"training seeds, each run for both methods (default {','.join(map(str, DEFAULT_SEEDS))})")
    p.add_argument("--full", action="store_true",
                   help=f"the longer version: seeds {','.join(map(str, FULL_SEEDS))} (about 3x the default's time)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: runs/quickstart.gin)")
    p.add_argument("--gin", action="append", default=[], metavar="BINDING",
                   help="extra gin binding for every run, e.g. --gin 'BATCH_SIZE = 16'")
    return p


def _seeds(args) -> tuple[int, ...]:
    if args.seeds is None:
        return FULL_SEEDS if args.full else DEFAULT_SEEDS
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise errors.UsageError(f"--seeds {args.seeds!r}: expected integers separated by commas") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise errors.UsageError(f"--seeds {args.seeds!r}: expected distinct integers separated by commas")
    return seeds


def train_one(run_gin: str, model_dir: pathlib.Path, steps: int | None, seed: int, extra: list[str]) -> dict:
    """One cell: an ordinary training run of the quickstart recipe; returns the trainer's summary."""
    from sbs_jax.commands import gin_utils
    from sbs_jax.train import trainer

    bindings = [f"MODEL_DIR = '{model_dir}'", f"SEED = {seed}"] + list(extra)
    if steps is not None:
        bindings.append(f"TRAIN_STEPS = {steps}")
    gin_utils.parse([GIN_FILES[0], run_gin, *GIN_FILES[1:]], bindings)
    config = gin_utils.build("TrainConfig", "sbs quickstart")
    run = trainer.Trainer(config)  # checks MODEL_DIR before anything is written there
    gin_utils.write_operative_config(model_dir)
    return {**run.run(), "task": config.mixture_or_task_name}


def validation_accuracy_at(model_dir: pathlib.Path, step: int) -> float | None:
    """The validation accuracy logged at `step` (the one that chose the checkpoint)."""
    path = model_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else ():
        row = json.loads(line)
        if row.get("split") == "validation" and row.get("step") == step and "accuracy" in row:
            return float(row["accuracy"])
    return None


def _split_sizes(task: str) -> dict[str, int]:
    from sbs_jax.data.registry import register

    info = register.get_task_info(task)
    return {s: len(d.examples) for s, d in (info.split_data or {}).items()}


def majority_accuracy(predictions_path) -> float:
    """Accuracy (%) of always answering the most frequent gold label of a predictions file: the floor."""
    golds = [json.loads(line)["gold"] for line in pathlib.Path(predictions_path).read_text().splitlines()]
    return 100.0 * max(golds.count(g) for g in set(golds)) / len(golds)


def format_report(cells: dict[str, dict[int, dict]], comparison: seed_comparison.Comparison, *, sizes, steps,
                  elapsed_s: float, cpu_s: float, majority: float | None = None) -> str:
    """The printed comparison; `cells[mode][seed]` holds `test`, `valid` and `step` of each run."""
    (ft_title, ft, _), (sbs_title, sbs, _) = METHODS
    seeds = sorted(cells[ft])
    train, total = sizes["train"], sizes.get("train_total", sizes["train"])
    lines = [
        "",
        f"Compared: {ft_title} ({ft}, label only) vs {sbs_title} ({sbs}, label + teacher rationale), "
        f"T5 v1.1 tiny from scratch, {steps} steps each,",
        f"on {train:,} of the {total:,} generated train problems ({100.0 * train / total:g} %, the paper's "
        f"low-data regime), seeds {', '.join(map(str, seeds))}.",
        "Each run is scored on the test split with its checkpoint chosen by validation accuracy (never by test).",
        "",
        f"{'seed':<6}{ft_title + ' test (valid)':>34}{sbs_title + ' test (valid)':>38}",
    ]

    def cell(mode, seed):
        c = cells[mode][seed]
        valid = "-" if c["valid"] is None else f"{c['valid']:.1f}"
        return f"{c['test']:.1f} % ({valid}) @{c['step']}"

    for seed in seeds:
        lines.append(f"{seed:<6}{cell(ft, seed):>34}{cell(sbs, seed):>38}")
    b, m = comparison.baseline, comparison.method
    lines.append(f"{'mean':<6}{f'{b.mean:.1f} % ± {b.std:.1f} (std)':>34}{f'{m.mean:.1f} % ± {m.std:.1f} (std)':>38}")
    lo, hi = comparison.ci95
    ci = "" if lo != lo else f", 95 % interval [{lo:+.1f}, {hi:+.1f}] (Welch t over seeds)"
    lines += [
        "",
        f"Step-by-step minus finetuning: {comparison.difference:+.1f} points{ci}.",
        f"Seed pairs (finetuning seed, step-by-step seed) where step-by-step scores higher: "
        f"{comparison.pairs_won} of {comparison.pairs}.",
        f"Test set: {comparison.test_examples:,} examples, so one run's accuracy has a binomial standard error of "
        f"about ±{max(b.standard_error, m.standard_error):.1f} points."
        + ("" if majority is None else f" Always answering the most frequent test label scores {majority:.1f} %."),
    ]
    if majority is not None and max(b.mean, m.mean) <= majority:
        lines.append("Verdict: neither method beats always answering the most frequent label; the students did not "
                     "learn enough to compare the methods (too few steps?).")
    elif min(len(b.accuracies), len(m.accuracies)) < 2:
        lines.append("Verdict: none; one seed per method cannot tell the methods apart from seed-to-seed "
                     "variation (run 3 seeds or more: the default).")
    elif comparison.every_seed_beats_every_seed:
        lines.append(f"Verdict: every step-by-step seed beats every finetuning seed, as the paper predicts for "
                     f"little training data.")
    elif comparison.pairs_won == 0:
        lines.append("Verdict: no step-by-step seed beats any finetuning seed on this run; this contradicts "
                     "the paper's low-data claim for this recipe.")
    else:
        lines.append("Verdict: the methods' seeds overlap, so this run does not show that step-by-step is "
                     "better at this data size.")
    lines.append(f"Wall time {elapsed_s / 60:.1f} min ({cpu_s / 60:.1f} min of CPU time) for "
                 f"{sum(len(v) for v in cells.values())} runs.")
    return "\n".join(lines)


@errors.command("sbs quickstart")
def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    seeds = _seeds(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="sbs_quickstart_")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    import logging

    from sbs_jax.commands import jax_setup

    logging.getLogger("absl").setLevel(logging.WARNING)
    jax_setup.enable_compilation_cache()  # compilation is a large share of a CPU quickstart
    n_runs = len(seeds) * len(METHODS)
    print(f"sbs quickstart: {n_runs} tiny students on the embedded arithmetic task ({len(METHODS)} methods x "
          f"seeds {', '.join(map(str, seeds))}) in {workdir}", flush=True)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    cells: dict[str, dict[int, dict]] = {mode: {} for _, mode, _ in METHODS}
    steps, sizes = None, None
    for seed in seeds:
        for title, mode, run_gin in METHODS:
            print(f"\n== {title} ({mode}), seed {seed} ==", flush=True)
            model_dir = workdir / f"{mode}_seed{seed}"
            summary = train_one(run_gin, model_dir, args.steps, seed, args.gin)
            test = summary.get("test")
            if not test or "accuracy" not in test:
                raise RuntimeError(f"{model_dir}: the run has no test accuracy (TEST_SPLIT unset?)")
            step = int(test["step"])
            cells[mode][seed] = {"test": float(test["accuracy"]), "valid": validation_accuracy_at(model_dir, step),
                                 "step": step, "test_examples": int(test["num_examples"]),
                                 "model_dir": str(model_dir),
                                 "predictions": str(model_dir / "predictions" / f"test_step{step}.jsonl")}
            steps = summary["final_step"]
            if sizes is None:
                sizes = _split_sizes(summary["task"])
                sizes["train_total"] = _total_train_examples()
    test_sizes = {c["test_examples"] for v in cells.values() for c in v.values()}
    if len(test_sizes) != 1:
        raise RuntimeError(f"runs were scored on test sets of different sizes {sorted(test_sizes)}")
    ft, sbs = METHODS[0][1], METHODS[1][1]
    comparison = seed_comparison.compare([cells[ft][s]["test"] for s in seeds], [cells[sbs][s]["test"] for s in seeds],
                                         test_examples=test_sizes.pop())
    elapsed, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    majority = majority_accuracy(cells[ft][seeds[0]]["predictions"])
    print(format_report(cells, comparison, sizes=sizes, steps=steps, elapsed_s=elapsed, cpu_s=cpu,
                        majority=majority))
    (workdir / "comparison.json").write_text(json.dumps(
        {"cells": cells, "train_examples": sizes["train"], "train_total": sizes["train_total"], "steps": steps,
         "difference": comparison.difference, "ci95": list(comparison.ci95), "pairs_won": comparison.pairs_won,
         "pairs": comparison.pairs, "test_examples": comparison.test_examples, "majority_accuracy": majority,
         "wall_s": elapsed, "cpu_s": cpu},
        indent=2) + "\n")
    print(f"\nRun dirs (config.gin, checkpoints/, metrics.jsonl, predictions/*.jsonl) and comparison.json are in "
          f"{workdir}")
    return 0


def _total_train_examples() -> int:
    from sbs_jax.data.records import arith

    return arith.DEFAULT_SIZES["train"]


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    sys.exit(main())
