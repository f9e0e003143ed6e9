"""orbax checkpoints of the train state: async saves, keep the last K and the best, verified restores.

A step directory `MODEL_DIR/checkpoints/<step>/` holds two items: `state` (params, optimizer state, step, RNG)
and `meta` (JSON: data position, seed, validation metrics, and a checksum of every state leaf). The checksum is
an integer sum of the leaves' bits, exact whatever the sharding, so a restore that reads damaged bytes without
raising is still caught; a damaged latest checkpoint is set aside and the previous good one used.
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sbs_jax import paths
from sbs_jax.run_dir import BEST_METRIC  # one definition of the best-checkpoint metric

log = logging.getLogger(__name__)


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
    """Saves (asynchronously) when the loop's `loop.Cadence` says (every `save_every` steps among others),
    keeps the last `keep` plus the best by validation accuracy, and restores the newest checkpoint that reads
    back intact."""

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

    def best_step(self) -> int | None:
        steps = [i.step for i in self._manager._checkpoints if i.metrics]  # noqa: SLF001 (orbax has no getter)
        return self._manager.best_step() if steps else None

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


# Reading a trained run lives in the run-directory module (below train/, so checkpoints/ and export/ can use
# it without importing the trainer); re-exported here for existing callers.
from sbs_jax.run_dir import (choose_step, load_model_config, load_params, read_meta, resolve,  # noqa: E402,F401
                             vocab_file)
