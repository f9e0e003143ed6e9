"""Host-side input for the trainer: deterministic input shards, exact resume, global arrays.

The global batch is the concatenation of `num_input_shards` seqio shards' local batches, in shard order.
Each process reads the shards it owns (shard k belongs to process k // (num_input_shards / processes)), so
the same seed gives the same global batches whatever the number of processes: a run on one host with
`num_input_shards=2` sees exactly what two hosts see. Resuming skips the batches already consumed.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import jax
import numpy as np

from sbs_jax import partitioning
from sbs_jax.data import schema


def owned_shards(num_input_shards: int | None) -> tuple[int, list[int]]:
    """(total shards, the shard indices this process reads)."""
    processes = jax.process_count()
    total = processes if num_input_shards is None else int(num_input_shards)
    if total < 1 or total % processes:
        raise ValueError(f"num_input_shards={total} must be a positive multiple of the {processes} processes")
    per = total // processes
    first = jax.process_index() * per
    return total, list(range(first, first + per))


def train_batches(mixture_or_task_name: str, *, task_feature_lengths: Mapping[str, int], batch_size: int,
                  seed: int, streams: Sequence[str], start_batch: int = 0, num_input_shards: int | None = None,
                  split: str = "train", pack: bool = False,
                  packed_lengths: Mapping[str, int] | None = None, backend: str = "auto",
                  workers: int = 0, layout=None) -> Iterator[dict]:
    """This process's rows of every global batch from `start_batch` on (numpy, nested by stream).

    With `pack`, batches are `{"packed": rows}` of `batch_size` packed rows holding `streams`' segments
    (`sbs_jax.data.input_pipeline.packing`); every shard packs its own examples, so shapes stay fixed and resuming still
    skips whole batches. `backend`, `workers`: as `pipeline.train_batches` (every back end and worker count
    gives the same batches; `workers` processes per input shard this process reads). With a
    `causal_lm.CausalLayout` (decoder-only students), batches are causal rows in its format
    (`causal_batches.train_batches`; both streams for step-by-step, the label stream otherwise), or with
    `pack` `{"packed": rows}` of causal segments (`packed_lengths` `{"decoder": L}` or None for
    `causal_lm.default_packed_length`); `workers` and `backend` do not apply to them.
    """
    import itertools

    import seqio

    from sbs_jax.data.input_pipeline import pipeline

    total, mine = owned_shards(num_input_shards)
    if batch_size % total:
        raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by num_input_shards={total}")
    iterators = []
    for k in mine:
        shard = seqio.ShardInfo(index=k, num_shards=total) if total > 1 else None
        if layout is not None:
            from sbs_jax.data.input_pipeline import causal_batches

            it = causal_batches.train_batches(mixture_or_task_name, layout, task_feature_lengths=task_feature_lengths,
                                              batch_size=batch_size, paired=schema.RATIONALE in streams, split=split,
                                              seed=seed, shard_info=shard, pack=pack, packed_lengths=packed_lengths)
            iterators.append(itertools.islice(it, start_batch, None))
            continue
        it = pipeline.train_batches(mixture_or_task_name, task_feature_lengths=task_feature_lengths,
                                    batch_size=batch_size, split=split, shuffle=True, seed=seed,
                                    num_epochs=None, shard_info=shard, pack=pack, packed_lengths=packed_lengths,
                                    packed_streams=tuple(streams) if pack else None, backend=backend,
                                    workers=workers)
        iterators.append(itertools.islice(it, start_batch, None))
    keys = (schema.PACKED,) if pack else tuple(streams)
    if layout is not None and not pack:
        keys = layout.groups(schema.RATIONALE in streams)
    while True:
        parts = [next(it) for it in iterators]
        if len(parts) == 1:
            yield {s: parts[0][s] for s in keys}
        else:
            yield {s: {k: np.concatenate([p[s][k] for p in parts]) for k in parts[0][s]} for s in keys}


def to_global(local_batch, mesh) -> dict:
    """Process-local rows -> global arrays sharded over `data` (each process contributes its rows)."""
    sharding = partitioning.data_sharding(mesh)
    if jax.process_count() == 1:  # local rows are the global batch: one batched transfer (half the host time)
        return jax.device_put(local_batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def replicate_to_global(batch, mesh) -> dict:
    """Host arrays every process holds in full -> global arrays sharded over `data`."""
    sharding = partitioning.data_sharding(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)
