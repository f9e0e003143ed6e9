"""`sbs quickstart`: tiny students on the embedded arithmetic task, standard finetuning vs step-by-step.

Both runs go through the same gin files and trainer as `sbs train`; each is evaluated on the test split
with its best checkpoint by validation accuracy, and the accuracies are printed side by side.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

from sbs_jax import errors

METHODS = (("standard finetuning", "finetune", "runs/finetune.gin"),
           ("distilling step-by-step", "step_by_step", "runs/step_by_step.gin"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbs quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="where the two run directories go (default: a new temp dir)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: runs/quickstart.gin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gin", action="append", default=[], metavar="BINDING",
                   help="extra gin binding for both runs, e.g. --gin 'BATCH_SIZE = 16'")
    return p


def train_one(run_gin: str, model_dir: pathlib.Path, steps: int | None, seed: int, extra: list[str]) -> dict:
    from sbs_jax.commands import gin_utils
    from sbs_jax.train import trainer

    bindings = [f"MODEL_DIR = '{model_dir}'", f"SEED = {seed}"] + extra
    if steps is not None:
        bindings.append(f"TRAIN_STEPS = {steps}")
    gin_utils.parse(["models/t5_1_1_tiny.gin", run_gin, "datasets/arith.gin", "runs/quickstart.gin"], bindings)
    config = gin_utils.build("TrainConfig")
    run = trainer.Trainer(config)  # checks MODEL_DIR before anything is written there
    gin_utils.write_operative_config(model_dir)
    return run.run()


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1f}%"


@errors.command("sbs quickstart")
def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="sbs_quickstart_")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    import logging

    import jax

    logging.getLogger("absl").setLevel(logging.WARNING)
    if not jax.config.jax_compilation_cache_dir:
        # Compilation is a large share of a CPU quickstart; a second run reuses the compiled steps.
        cache = pathlib.Path(os.environ.get("SBS_CACHE_DIR", pathlib.Path.home() / ".cache" / "sbs_jax"))
        jax.config.update("jax_compilation_cache_dir", str(cache / "jax_compilation_cache"))
    print(f"sbs quickstart: training two tiny students on the embedded arithmetic task in {workdir}", flush=True)
    t0 = time.perf_counter()
    results = []
    for title, mode, run_gin in METHODS:
        print(f"\n== {title} ({mode}) ==", flush=True)
        summary = train_one(run_gin, workdir / mode, args.steps, args.seed, args.gin)
        results.append((title, summary))
    elapsed = time.perf_counter() - t0
    print(f"\nResults on the test split (best checkpoint by validation accuracy), {elapsed / 60:.1f} min total:")
    header = f"{'method':<26}{'test acc.':>10}{'valid acc.':>12}{'best step':>11}  model dir"
    print(header)
    print("-" * len(header))
    for title, s in results:
        test = s.get("test", {})
        print(f"{title:<26}{_pct(test.get('accuracy')):>10}{_pct(s.get('validation', {}).get('accuracy')):>12}"
              f"{s.get('best_step', s['final_step']):>11}  {s['model_dir']}")
    print("\nEach model dir holds config.gin, model_config.json, vocab/, checkpoints/, metrics.jsonl, tensorboard/ "
          "and predictions/*.jsonl (input, gold, prediction, correct).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
