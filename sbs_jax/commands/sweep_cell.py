"""One sweep cell, run in a fresh process (`python -m sbs_jax.commands.sweep_cell SPEC_JSON`): gin and the SeqIO
registry are process-global, so each cell parses its own gin and registers its own tasks.

It trains through the same Trainer as `sbs train`, checks that the registered task kept the cell's training
fraction, evaluates test at the last step too (the trainer tests the validation-best step), and writes the
completion marker last.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from etils import epath

from sbs_jax.commands import jax_setup
from sbs_jax.sweep import runner


def check_fraction(task: str, fraction: float, binding: str) -> None:
    from sbs_jax.data.registry import register

    kept = register.get_task_info(task).train_fraction
    if kept is None or not math.isclose(kept, fraction):
        raise ValueError(
            f"sweep cell: task {task!r} was registered with train_fraction={kept}, but the cell's fraction is "
            f"{fraction}: the gin parameter Sweep.fraction_binding={binding!r} does not reach the task's "
            "registration (set it to the gin parameter your dataset file routes to the registration's "
            "train_fraction; the project's dataset files take 'TRAIN_FRACTION')")


def run_cell(spec: dict) -> dict:
    import jax
    import numpy as np

    from sbs_jax.data.registry import register
    from sbs_jax.sweep import marker as marker_lib
    from sbs_jax.commands import gin_utils
    from sbs_jax.train import checkpointing, trainer as trainer_lib

    cell = spec["cell"]
    gin_utils.parse(spec["gin_files"], spec["bindings"])
    config = gin_utils.build("TrainConfig", "sweep cell", strict=False)  # runs the task registrations
    task = config.mixture_or_task_name
    check_fraction(task, cell["fraction"], spec["fraction_binding"])
    info = register.get_task_info(task)
    if not config.validation_split or not config.test_split:
        raise ValueError("sweep cell: model selection needs VALIDATION_SPLIT and results need TEST_SPLIT")
    for split in (config.validation_split, config.test_split, "train"):
        if info.split_data is not None and split not in info.split_data:
            raise ValueError(f"sweep cell: task {task!r} has no {split!r} split (it has "
                             f"{sorted(info.split_data)}); sweeps select on validation and report test")
    model_dir = epath.Path(config.model_dir)
    gin_utils.write_operative_config(model_dir)
    t0 = time.perf_counter()
    trainer = trainer_lib.Trainer(config)
    summary = trainer.run()
    if "best_step" not in summary:
        raise RuntimeError(f"{model_dir}: the run recorded no validation-best step")
    final = int(config.train_steps)
    if summary["best_step"] == final:
        test_last = summary["test"]
    else:  # the trainer tested the validation-best step; the last step is reported beside it
        ckpt = checkpointing.Checkpointer(model_dir / "checkpoints", save_every=config.save_every,
                                          keep=config.keep_checkpoints, async_save=False)
        state, _ = ckpt.restore(trainer.abstract_state, step=final)
        test_last = {**trainer.evaluate(state.params, config.test_split, final), "step": final}
        ckpt.close()
    wall = time.perf_counter() - t0
    params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state.params)))
    teacher = {s: d.teacher_accuracy for s, d in (info.split_data or {}).items()}
    train_examples = len(info.split_data["train"].examples) if info.split_data else None
    marker = {"spec": spec, "task": task, "dataset": info.base, "metric": info.metric,
              "validation_split": config.validation_split, "test_split": config.test_split,
              "train_examples": train_examples, "parameters": params, "steps": final,
              "best_step": int(summary["best_step"]), "wall_s": round(wall, 2), "summary": summary,
              "test_last": test_last, "teacher_accuracy": teacher}
    if jax.process_index() == 0:
        marker_lib.write_atomic(model_dir / marker_lib.MARKER, json.dumps(marker, indent=2) + "\n")
    return marker


def launch_in_process(spec: dict, cell_dir: epath.Path) -> None:
    """Run a cell in this process (`sbs sweep --in_process`): no interpreter and TF/JAX start-up per cell, but
    gin and the SeqIO registry are process-global, so a cell that fails part-way can leave state behind."""
    try:
        run_cell(spec)
    except Exception as e:  # noqa: BLE001 - reported as the cell's failure, with its cause chained
        raise runner.CellFailed(f"cell {spec['cell']} failed in process: {type(e).__name__}: {e}") from e


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sbs_jax.commands.sweep_cell SPEC_JSON", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    jax_setup.enable_compilation_cache()  # cells of one model and method compile the same steps
    run_cell(json.loads(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
