"""The one owner of a training run directory (MODEL_DIR): its layout, atomic writes, `run.json`, the
compatibility check made before anything is written, and reading a trained student back.

    MODEL_DIR/config.gin           operative gin config              (atomic)
    MODEL_DIR/model_config.json    the student's T5Config            (atomic)
    MODEL_DIR/run.json             what the run is, machine-readable (atomic; see `run_info`)
    MODEL_DIR/vocab/*.model        the SentencePiece model           (atomic)
    MODEL_DIR/checkpoints/<step>/  orbax: `state` and `meta`
    MODEL_DIR/metrics.jsonl, tensorboard/, predictions/, summary.json

Sits below `train/`, `checkpoints/` and `export/` (imports only `model`, `errors`, `paths`): export and
`load_pretrained` read runs through it without importing the trainer.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import signal
from typing import Any, Mapping

from etils import epath

from sbs_jax import errors, paths

BEST_METRIC = "accuracy"
RUN_INFO_VERSION = 1
# Fields a run may change without changing what its checkpoints hold (compute dtype, regularisation, memory).
RUNTIME_FIELDS = ("dtype", "dropout_rate", "scan_layers", "remat_policy")
_VERSIONED_PACKAGES = ("jax", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow", "sentencepiece")
# Test hook: SIGKILL this process half-way through writing the named file (proves writes are atomic).
_KILL_HOOK = "SBS_TEST_KILL_DURING_WRITE"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths of the run directory layout (local or gs://)."""
    root: epath.Path

    def __init__(self, root):
        object.__setattr__(self, "root", epath.Path(root))

    config_gin = property(lambda self: self.root / "config.gin")
    model_config_json = property(lambda self: self.root / "model_config.json")
    run_json = property(lambda self: self.root / "run.json")
    vocab_dir = property(lambda self: self.root / "vocab")
    checkpoints_dir = property(lambda self: self.root / "checkpoints")
    metrics_jsonl = property(lambda self: self.root / "metrics.jsonl")
    predictions_dir = property(lambda self: self.root / "predictions")
    tensorboard_dir = property(lambda self: self.root / "tensorboard")
    summary_json = property(lambda self: self.root / "summary.json")
    selection_json = property(lambda self: self.root / "selection.json")  # written by data.selection

    def step_dirs(self) -> list[epath.Path]:
        d = self.checkpoints_dir
        return sorted((p for p in d.iterdir() if _is_step_dir(p)), key=lambda p: int(p.name)) if d.is_dir() else []

    def holds_run(self) -> bool:
        return self.model_config_json.exists() or self.run_json.exists() or bool(self.step_dirs())


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path, data: bytes) -> epath.Path:
    """Write to a temporary sibling, then rename over `path`: readers see the old file or the new one.

    An object store (gs://) already replaces an object atomically on upload, and has no cheap rename: written
    directly there."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not paths.is_local(path):
        path.write_bytes(data)
        return path
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    if os.environ.get(_KILL_HOOK) == path.name:
        _write_half_and_die(tmp, data)
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def atomic_write_text(path, text: str) -> epath.Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src, dst) -> epath.Path:
    return atomic_write_bytes(dst, epath.Path(src).read_bytes())


def _write_half_and_die(path: epath.Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data[:len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------ run.json
def package_versions() -> dict[str, str | None]:
    out = {}
    for name in ("sbs-jax",) + _VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_info(*, task: str, task_feature_lengths: Mapping[str, int], mode: str | None, seed: int,
             train_fraction: float | None, model_config, preset: str | None,
             causal_format: str | None = None) -> dict[str, Any]:
    """The machine-readable description of a run that export, eval, infer and sweeps read. `causal_format`:
    a decoder-only student's sequence format (how its prompts and generations read), None for T5."""
    from sbs_jax import __version__

    arch = {k: v for k, v in model_config.to_dict().items() if k not in RUNTIME_FIELDS}
    return {"run_info_version": RUN_INFO_VERSION, "task": task,
            "task_feature_lengths": {k: int(v) for k, v in task_feature_lengths.items()},
            "mode": mode, "seed": int(seed), "train_fraction": train_fraction,
            "model": {"preset": preset, **arch}, "causal_format": causal_format, "sbs_jax_version": __version__, "versions": package_versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_run_info(model_dir, info: Mapping[str, Any]) -> epath.Path:
    return atomic_write_text(RunDir(model_dir).run_json, json.dumps(info, indent=2) + "\n")


def read_run_info(model_dir) -> dict[str, Any] | None:
    """run.json of a run directory, None for runs written before it existed."""
    path = RunDir(model_dir).run_json
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.InputError(f"{path}: not valid JSON ({e}); expected the run description sbs train writes") \
            from None
    if not isinstance(value, dict):
        raise errors.InputError(f"{path}: expected a JSON object")
    return value


# ------------------------------------------------------------------------------------------ compatibility
def check_compatible(model_dir, model_config, *, task: str, seed: int | None = None) -> None:
    """Refuse (UsageError) a new run whose architecture, task or seed differs from the run MODEL_DIR holds.

    Called before anything is written to MODEL_DIR. Runtime fields may change, except `scan_layers` once
    checkpoints exist (it fixes their tree layout).
    """
    rd = RunDir(model_dir)
    if rd.root.exists() and not rd.root.is_dir():
        raise errors.UsageError(f"MODEL_DIR {rd.root} is a file; expected a directory (new or holding a run)")
    if not rd.root.is_dir() or not rd.holds_run():
        return
    has_checkpoints = bool(rd.step_dirs())
    ignored = set(RUNTIME_FIELDS) - ({"scan_layers"} if has_checkpoints else set())
    differ = []
    if rd.model_config_json.is_file():
        stored = _read_json(rd.model_config_json)
        new = json.loads(json.dumps(model_config.to_dict()))  # as stored: tuples (DecoderConfig.eos_ids) are lists
        differ += [f"model_config.{k}: {stored.get(k)!r} in the run, {new[k]!r} now" for k in new
                   if k not in ignored and stored.get(k, new[k]) != new[k]]
    info = read_run_info(rd.root) or {}
    if info.get("task") not in (None, task):
        differ.append(f"task: {info['task']!r} in the run, {task!r} now")
    if has_checkpoints and seed is not None and info.get("seed") not in (None, seed):
        differ.append(f"seed: {info['seed']!r} in the run, {seed!r} now")
    if differ:
        raise errors.UsageError(
            f"MODEL_DIR {rd.root} holds a different run ({'; '.join(differ)}); nothing was written. "
            "Use a new MODEL_DIR, or the old run's settings to resume it")


def _read_json(path: epath.Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise errors.InputError(f"{path}: expected a JSON object")
    return value


# ------------------------------------------------------------------------------------------ reading a run
def read_meta(step_dir) -> dict[str, Any]:
    path = epath.Path(step_dir) / "meta" / "metadata"
    return json.loads(path.read_text())


def _is_step_dir(p: epath.Path) -> bool:
    return p.name.isdigit() and (p / "state").is_dir()


def choose_step(checkpoints_dir: epath.Path) -> int:
    """The best step by recorded validation accuracy (ties: the later), else the latest."""
    checkpoints_dir = epath.Path(checkpoints_dir)
    steps = sorted(int(p.name) for p in checkpoints_dir.iterdir() if _is_step_dir(p)) \
        if checkpoints_dir.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"{checkpoints_dir}: no checkpoints (expected step directories like 1000/; "
                                "has this run saved one yet?)")
    scored = []
    for s in steps:
        metrics = read_meta(checkpoints_dir / str(s)).get("metrics") or {}
        if BEST_METRIC in metrics:
            scored.append((float(metrics[BEST_METRIC]), s))
    return max(scored)[1] if scored else steps[-1]


def resolve(model_dir_or_step_dir, step: int | None = None) -> tuple[epath.Path, epath.Path]:
    """(model_dir, step_dir) for a run directory (best, or `step`) or one `checkpoints/<step>` directory."""
    path = epath.Path(model_dir_or_step_dir)
    if _is_step_dir(path):
        return path.parent.parent, path
    ckpt_dir = RunDir(path).checkpoints_dir
    step = choose_step(ckpt_dir) if step is None else step
    step_dir = ckpt_dir / str(step)
    if not _is_step_dir(step_dir):
        raise FileNotFoundError(f"{step_dir}: no such checkpoint")
    return path, step_dir


def load_model_config(model_dir):
    from sbs_jax.model import T5Config

    path = RunDir(model_dir).model_config_json
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a training run directory holds the student's model config there")
    fields = _read_json(path)
    if "model_type" in fields:  # a decoder-only student (DecoderConfig.to_dict)
        from sbs_jax.model.decoder import DecoderConfig

        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        try:
            return DecoderConfig(**fields)
        except (TypeError, ValueError) as e:
            raise errors.InputError(f"{path}: not a DecoderConfig ({e})") from None
    try:
        return T5Config(**fields)
    except TypeError as e:
        raise errors.InputError(f"{path}: not a T5Config ({e})") from None


def vocab_file(model_dir) -> epath.Path | None:
    """The run's vocabulary: its SentencePiece model, else its Hugging Face tokenizer.json."""
    vocab_dir = RunDir(model_dir).vocab_dir
    models = sorted(vocab_dir.glob("*.model"))
    if models:
        return models[0]
    tokenizer = vocab_dir / "tokenizer.json"
    return tokenizer if tokenizer.is_file() else None


def load_params(model_dir_or_step_dir, step: int | None = None):
    """(T5Config, params, vocab_path) of a trained student, params as host numpy arrays in the unscanned
    layout (the config says `scan_layers=False` accordingly). Only the params are read, not the optimizer."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from sbs_jax.model import unscan_params

    model_dir, step_dir = resolve(model_dir_or_step_dir, step)
    config = load_model_config(model_dir)
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(step_dir / "state").item_metadata.tree
    item = {"params": tree["params"]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
    params = restored["params"]
    if config.scan_layers:
        params = unscan_params(params, config)
        config = config.replace(scan_layers=False)
    return config, params, vocab_file(model_dir)
