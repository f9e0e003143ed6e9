"""A cell's completion marker `cell_done.json`: written atomically after the cell's last evaluation, and the
only thing that makes a cell count. A cell without a valid marker is unfinished or damaged and is rerun."""
from __future__ import annotations

import json
import os
import uuid

from etils import epath

from sbs_jax import paths

MARKER = "cell_done.json"
# Fields a marker must hold; `spec` is the cell's identity and gin, compared with the current plan.
REQUIRED = ("spec", "task", "metric", "validation_split", "test_split", "train_examples", "parameters",
            "steps", "best_step", "wall_s", "summary", "test_last")


def write_atomic(path: epath.Path, text: str) -> None:
    """Local: write a temp file beside `path`, then rename over it (readers see the old or the whole new file).
    gs://: an object appears only once its upload completes, so a plain write is already atomic."""
    if not paths.is_local(path):
        path.write_text(text)
        return
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prediction_file(cell_dir: epath.Path, split: str, step: int) -> epath.Path:
    """Where the trainer writes a split's predictions at a step (run_evaluation.RunEvaluator._evaluate_task)."""
    return cell_dir / "predictions" / f"{split}_step{int(step)}.jsonl"


def comparable(spec: dict) -> dict:
    """A cell spec without its MODEL_DIR binding: a sweep dir that was moved or copied keeps its cells."""
    return {**spec, "bindings": [b for b in spec.get("bindings", []) if not b.startswith("MODEL_DIR =")]}


def read(cell_dir: epath.Path, spec: dict | None = None) -> tuple[dict | None, str]:
    """(marker, "") when the cell finished intact; else (None, why it does not count).

    Intact: the marker parses, holds every field, matches `spec` (when given: same cell, same gin) and the
    prediction files the report recounts from exist.
    """
    path = cell_dir / MARKER
    if not path.exists():
        return None, "unfinished (no completion marker)"
    try:
        marker = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"corrupted completion marker {path} ({e})"
    if not isinstance(marker, dict) or any(k not in marker for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(marker, dict) or k not in marker]
        return None, f"corrupted completion marker {path} (missing {missing})"
    if spec is not None and comparable(marker["spec"]) != comparable(spec):
        return None, f"{path} was written for other settings than the current plan"
    needed = [prediction_file(cell_dir, marker["test_split"], marker["best_step"]),
              prediction_file(cell_dir, marker["test_split"], marker["steps"]),
              prediction_file(cell_dir, marker["validation_split"], marker["best_step"])]
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        return None, f"prediction file(s) missing: {', '.join(absent)}"
    return marker, ""
