"""Training batches of causal rows (decoder-only students) from a registered task.

The same tokenized split and example order as the T5 numpy back end (`host_pipeline.TokenizedSplit` through
`pipeline`'s cache, `host_pipeline.IndexStream`), so a decoder-only run sees the examples of a T5 run with the
same seed in the same order; each batch's rows are built by `causal_lm.causal_rows` in the layout's format.
With `pack`, the example stream's sequences are packed greedily in that order (`causal_lm.GreedyPacker`, rows
independent of how the stream is chunked) and every `batch_size // shards` closed rows make a batch, so the
batches are a function of (task, seed, shard) and resuming skips whole batches, as for T5 packing.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import seqio

from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm, host_pipeline, pipeline


def task_features(split: host_pipeline.TokenizedSplit, idx: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Examples `idx` of a tokenized split as unpadded feature arrays."""
    return [{f: split.tokens[f][i, :split.lengths[f][i]] for f in split.tokens} for i in idx]


def train_batches(task_name: str, layout: causal_lm.CausalLayout, *, task_feature_lengths: Mapping[str, int],
                  batch_size: int, paired: bool, split: str = "train", shuffle: bool = True, seed: int = 0,
                  num_epochs: int | None = None, shard_info: seqio.ShardInfo | None = None, pack: bool = False,
                  packed_lengths: Mapping[str, int] | None = None) -> Iterator[dict]:
    """`{batch key: {causal key: [batch_size // shards, row length]}}` batches (drop remainder), forever with
    `num_epochs=None`. `paired`: both streams (step-by-step) or the label stream only. `pack`: `{"packed":
    rows}` batches of `batch_size // shards` rows of `causal_lm.resolve_packed_length(...)` tokens."""
    provider = seqio.get_mixture_or_task(task_name)
    if not host_pipeline.supports(provider):
        raise ValueError(f"decoder-only training reads single tasks over in-memory examples; {task_name!r} is a "
                         f"{type(provider).__name__}")
    if paired and not pipeline.is_paired(task_name):
        raise ValueError(f"step-by-step rows need a paired task (`*_sbs*`); {task_name!r} has the label stream only")
    _, lengths, local_batch = pipeline._batch_plan(task_name, task_feature_lengths, batch_size, split,  # noqa: SLF001
                                                   shard_info)
    if not paired:
        lengths = {k: lengths[k] for k in ("inputs", "targets")}
    data = pipeline._tokenized(provider, split, tuple(sorted(lengths.items())),  # noqa: SLF001
                               None if shard_info is None else (shard_info.index, shard_info.num_shards))
    order = host_pipeline.IndexStream(data.num_examples, shuffle=shuffle,
                                      buffer_size=provider._shuffle_buffer_size,  # noqa: SLF001
                                      seed=seed, num_epochs=num_epochs)
    rows = layout.row_lengths(task_feature_lengths, paired)
    if pack:
        yield from packed_batches(data, order, layout, paired=paired,
                                  row_length=causal_lm.resolve_packed_length(rows, packed_lengths),
                                  batch_size=local_batch)
        return
    while True:
        idx = order.take(local_batch)
        if idx is None:
            return
        yield causal_lm.causal_rows(task_features(data, idx), layout, paired=paired, lengths=rows)


def packed_batches(data: host_pipeline.TokenizedSplit, order: host_pipeline.IndexStream,
                   layout: causal_lm.CausalLayout, *, paired: bool, row_length: int,
                   batch_size: int) -> Iterator[dict]:
    """`{"packed": rows}` batches of `batch_size` rows, reading examples from `order` a batch's worth at a time
    until enough rows are closed; at the end of finite epochs the last open row closes and a short last batch
    is dropped (as unpacked batches drop their remainder)."""
    packer = causal_lm.GreedyPacker(row_length)
    while True:
        while len(packer.closed) < batch_size:
            idx = order.take(batch_size, partial=True)
            if idx is None:
                packer.flush()
                break
            packer.add(causal_lm.packable_sequences(task_features(data, idx), layout, paired=paired,
                                                    row_length=row_length))
        if len(packer.closed) < batch_size:
            return
        yield {schema.PACKED: causal_lm.row_arrays(packer.take(batch_size), row_length)}
