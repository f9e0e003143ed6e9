"""Training batches of causal rows (decoder-only students) from a registered task.

The same tokenized split and example order as the T5 numpy back end (`host_pipeline.TokenizedSplit` through
`pipeline`'s cache, `host_pipeline.IndexStream`), so a decoder-only run sees the examples of a T5 run with the
same seed in the same order; each batch's rows are built by `causal_lm.causal_rows` in the layout's format.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import seqio

from sbs_jax.data.input_pipeline import causal_lm, host_pipeline, pipeline


def task_features(split: host_pipeline.TokenizedSplit, idx: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Examples `idx` of a tokenized split as unpadded feature arrays."""
    return [{f: split.tokens[f][i, :split.lengths[f][i]] for f in split.tokens} for i in idx]


def train_batches(task_name: str, layout: causal_lm.CausalLayout, *, task_feature_lengths: Mapping[str, int],
                  batch_size: int, paired: bool, split: str = "train", shuffle: bool = True, seed: int = 0,
                  num_epochs: int | None = None, shard_info: seqio.ShardInfo | None = None) -> Iterator[dict]:
    """`{batch key: {causal key: [batch_size // shards, row length]}}` batches (drop remainder), forever with
    `num_epochs=None`. `paired`: both streams (step-by-step) or the label stream only."""
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
    while True:
        idx = order.take(local_batch)
        if idx is None:
            return
        yield causal_lm.causal_rows(task_features(data, idx), layout, paired=paired, lengths=rows)
