"""Which examples a run trains and validates on, and the manifest that records it in the run directory.

Two selection modes over the train split of a data dir:
- `ours` (default, `splits.plan_splits`): the validation carve-out first, fixed across fractions and runs, then a
  seeded, nested subset of what remains.
- `official`: the order of the official code (google-research/distilling-step-by-step): subsample first with
  HF `datasets` `train_test_split(test_size=1 - f, seed=run)["train"]` (skipped at f = 1), then carve the
  validation split off the subsample with `train_test_split(test_size=0.1, seed=0)`. `hf_train_test_split`
  reproduces that library's index choice with numpy alone (`datasets` is a test-only dependency).
Kept examples stay in file order in both modes (the pipeline shuffles).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Mapping, Sequence

import numpy as np
from etils import epath

from sbs_jax import run_dir
from sbs_jax.data.records.data_dir import DataError, Example

SELECTION_MODES = ("ours", "official")
OFFICIAL_VALIDATION_SEED = 0  # the official code carves validation with seed 0 whatever the run
MANIFEST_VERSION = 1


def hf_train_test_split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices, in the order HF `datasets` `Dataset.train_test_split(test_size=<float>,
    seed=seed)` selects them: `n_test = ceil(test_size * n)`, the rest is train; one
    `np.random.default_rng(seed).permutation(n)`, test = its first `n_test` entries, train = the others."""
    if not isinstance(test_size, float) or not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a float in (0, 1), got {test_size!r}")
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_train <= 0:
        raise ValueError(f"{n} examples with test_size={test_size} leave no train examples")
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test:n_test + n_train], permutation[:n_test]


def official_plan(train: Sequence[Example], *, fraction: float, run: int, valid_from_train: float | None,
                  where: str = "data") -> tuple[list[Example], list[Example] | None]:
    """(train, carved validation or None) as the official code selects them from a train split."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    kept = np.arange(len(train))
    try:
        if fraction < 1.0:  # the official code skips the split at 1.0 (a 0-size test split is an error there)
            kept = kept[hf_train_test_split(len(kept), 1.0 - fraction, seed=run)[0]]
        valid = None
        if valid_from_train is not None:
            rest, held = hf_train_test_split(len(kept), float(valid_from_train), seed=OFFICIAL_VALIDATION_SEED)
            kept, valid = kept[rest], kept[held]
    except ValueError as e:
        raise DataError(f"{where}: {len(train)} train examples: {e}") from None
    pick = lambda idx: [train[i] for i in sorted(idx.tolist())]  # noqa: E731 - file order
    return pick(kept), None if valid is None else pick(valid)


def input_hash(text: str) -> str:
    """Stable id of an example: the first 16 hex digits of the SHA-256 of its input text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def manifest(splits: Mapping[str, Sequence[Example]], settings: Mapping) -> dict:
    """What a run trained and validated on: the selection settings and, per split, the input hashes in order."""
    return {"version": MANIFEST_VERSION, "settings": dict(settings), "hash": "sha256(input)[:16]",
            "splits": {name: {"num_examples": len(examples), "inputs": [input_hash(ex.input) for ex in examples]}
                       for name, examples in sorted(splits.items())}}


def write_selection_manifest(model_dir, splits: Mapping[str, Sequence[Example]], settings: Mapping) -> epath.Path:
    """Write `<model_dir>/selection.json` (see `manifest`); the single writer of that file."""
    return _write(model_dir, manifest(splits, settings))


def _write(model_dir, record: dict) -> epath.Path:
    path = run_dir.RunDir(model_dir).selection_json
    path.parent.mkdir(parents=True, exist_ok=True)
    run_dir.atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def _task_manifest(task_name: str) -> dict | None:
    from sbs_jax.data.registry import register

    try:
        info = register.get_task_info(task_name)
    except ValueError:
        return None  # registered outside sbs_jax: nothing recorded about its selection
    if info.split_data is None:
        return None
    splits = {name: data.examples for name, data in info.split_data.items()}
    return manifest(splits, {"task": task_name, **info.settings()})


def write_task_selection_manifest(model_dir, task_name: str) -> epath.Path | None:
    """The manifest of a task registered by sbs_jax over parsed examples (None for other tasks): its splits as
    selected and the settings it was registered with (mode, fraction, seed/run, prefixes)."""
    record = _task_manifest(task_name)
    return None if record is None else _write(model_dir, record)


def write_run_selection_manifest(model_dir, task_names: Sequence[str], mixture: str | None = None):
    """What the trainer calls: one task's manifest as is; a mixture's as {"settings": {"mixture"}, "tasks":
    {task: manifest}} (no run-wide prefix then: serving falls back to the default). None when no task has one."""
    if mixture is None and len(task_names) == 1:
        return write_task_selection_manifest(model_dir, task_names[0])
    tasks = {name: m for name in task_names if (m := _task_manifest(name)) is not None}
    if not tasks:
        return None
    return _write(model_dir, {"version": MANIFEST_VERSION, "settings": {"mixture": mixture}, "tasks": tasks})


def read_selection_manifest(model_dir) -> dict | None:
    """The run's manifest, or None when the run has none (older runs, tasks registered elsewhere)."""
    path = run_dir.RunDir(model_dir).selection_json
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); expected a selection manifest") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise DataError(f"{path}: expected an object with a 'settings' object (a selection manifest)")
    return record


def run_label_prefix(model_dir, default: str) -> str:
    """The label-stream prefix a run trained with (recorded in its manifest), else `default`."""
    record = read_selection_manifest(model_dir)
    if record is None or "label_prefix" not in record["settings"]:
        return default
    prefix = record["settings"]["label_prefix"]
    if not isinstance(prefix, str):
        raise DataError(f"{run_dir.RunDir(model_dir).selection_json}: settings.label_prefix is "
                        f"{type(prefix).__name__}, expected a string")
    return prefix
