"""orbax checkpoints of the train state: async saves, keep the last K and the best, verified restores.

A step directory `MODEL_DIR/checkpoints/<step>/` holds two items: `state` (params, optimizer state, step, RNG)
and `meta` (JSON: data position, seed, validation metrics, and a checksum of every state leaf). The checksum is
an integer sum of the leaves' bits, exact whatever the sharding, so a restore that reads damaged bytes without
raising is still caught; a damaged latest checkpoint is set aside and the previous good one used.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from sbs_jax import paths

log = logging.getLogger(__name__)

BEST_METRIC = "accuracy"


@jax.jit
def _leaf_bits_sum(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
        x = jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize])
    return jnp.sum(x.astype(jnp.uint32), dtype=jnp.uint32)


@jax.jit
def _leaves_bits_sums(leaves):
    return [_leaf_bits_sum(x) for x in leaves]


def state_checksum(tree) -> list[int]:
    """Per-leaf uint32 sum of the leaves' bit patterns (integer addition, so order- and sharding-independent).

    One program and one device->host transfer for all leaves: a save waits for the step once, not per leaf."""
    sums = _leaves_bits_sums(jax.tree.leaves(tree))
    return [int(x) for x in jax.device_get([s.addressable_data(0) for s in sums])]


class CorruptCheckpointError(RuntimeError):
    pass


class Checkpointer:
    """Saves every `save_every` steps (asynchronously), keeps the last `keep` plus the best by validation
    accuracy, and restores the newest checkpoint that reads back intact."""

    def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int = 3, async_save: bool = True):
        self.directory = paths.absolute(directory)
        self.save_every, self.keep, self.async_save = save_every, keep, async_save
        self._manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the trainer decides when to save
            best_fn=lambda m: m[BEST_METRIC], best_mode="max", keep_checkpoints_without_metrics=True,
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=self.keep),
                policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False),
            ]),
            enable_async_checkpointing=self.async_save, create=True)
        return ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        steps = [i.step for i in self._manager._checkpoints if i.metrics]  # noqa: SLF001 (orbax has no getter)
        return self._manager.best_step() if steps else None

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state, *, data_position: int, seed: int, metrics: dict | None = None,
             extra: dict | None = None) -> None:
        meta = {"step": int(step), "data_position": int(data_position), "seed": int(seed),
                "checksum": state_checksum(state), "metrics": metrics or {}, **(extra or {})}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                          meta=ocp.args.JsonSave(meta)),
                           metrics=({BEST_METRIC: float(metrics[BEST_METRIC])}
                                    if metrics and BEST_METRIC in metrics else None), force=True)

    def _restore_step(self, step: int, abstract_state):
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], restored["meta"]
        if state_checksum(state) != meta["checksum"]:
            raise CorruptCheckpointError("state checksum differs from the one recorded at save time")
        return state, meta

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of `step`, or of the newest intact checkpoint; None when there is none.

        Damaged checkpoints newer than the one used are renamed `<step>.corrupt[N]` so that the resumed run can
        save those steps again.
        """
        steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
        failures = []
        for s in steps:
            try:
                result = self._restore_step(s, abstract_state)
            except Exception as e:  # noqa: BLE001 - any read failure makes this checkpoint unusable
                failures.append((s, e))
                log.warning("checkpoint %s cannot be restored (%s: %s)", self.directory / str(s),
                            type(e).__name__, str(e)[:500])
                continue
            if failures:
                for bad, e in failures:
                    print(f"WARNING: checkpoint {self.directory / str(bad)} is truncated or corrupted "
                          f"({type(e).__name__}: {str(e)[:200]}); falling back to step {s}", flush=True)
                self._set_aside([bad for bad, _ in failures])
            return result
        if failures:
            # Nothing restores: more likely a mismatch (model config, mesh) than damage, so touch nothing.
            bad, e = failures[0]
            raise CorruptCheckpointError(f"no checkpoint under {self.directory} can be restored; step {bad}: "
                                         f"{type(e).__name__}: {e}") from e
        return None

    def _set_aside(self, steps: list[int]) -> None:
        self._manager.close()
        if jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                n = 0
                while (self.directory / f"{s}.corrupt{n or ''}").exists():
                    n += 1
                if src.exists():
                    src.rename(self.directory / f"{s}.corrupt{n or ''}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("sbs_checkpoint_set_aside")
        self._manager = self._make_manager()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def read_meta(step_dir: str | os.PathLike) -> dict[str, Any]:
    path = epath.Path(step_dir) / "meta" / "metadata"
    return json.loads(path.read_text())


def _is_step_dir(p: epath.Path) -> bool:
    return p.name.isdigit() and (p / "state").is_dir()


def choose_step(checkpoints_dir: epath.Path) -> int:
    """The best step by recorded validation accuracy (ties: the later), else the latest."""
    steps = sorted(int(p.name) for p in checkpoints_dir.iterdir() if _is_step_dir(p)) \
        if checkpoints_dir.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"{checkpoints_dir}: no checkpoints (expected step directories like 1000/)")
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
    ckpt_dir = path / "checkpoints"
    step = choose_step(ckpt_dir) if step is None else step
    step_dir = ckpt_dir / str(step)
    if not _is_step_dir(step_dir):
        raise FileNotFoundError(f"{step_dir}: no such checkpoint")
    return path, step_dir


def load_model_config(model_dir: epath.Path):
    from sbs_jax.model import T5Config

    path = epath.Path(model_dir) / "model_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a training run directory holds the student's T5Config there")
    return T5Config(**json.loads(path.read_text()))


def vocab_file(model_dir: epath.Path) -> epath.Path | None:
    models = sorted((epath.Path(model_dir) / "vocab").glob("*.model"))
    return models[0] if models else None


def load_params(model_dir_or_step_dir, step: int | None = None):
    """(T5Config, params, vocab_path) of a trained student, params as host numpy arrays in the unscanned
    layout (the config says `scan_layers=False` accordingly). Only the params are read, not the optimizer."""
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
