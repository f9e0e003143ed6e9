"""An in-memory `seqio.DataSource` over parsed examples.

Examples are parsed in Python (exact line-numbered errors) and served from
`tf.data.Dataset.from_tensor_slices`: no `tf.py_function` JSON parsing (it can hang at interpreter exit).
Each source example has the string fields of `SOURCE_FIELDS` ("" where a rationale or teacher label is absent).
A split given with `groups` (rows per example, `rationale_rows`) is sharded by example, not by row.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from sbs_jax.data.records.data_dir import DataError, Example

SOURCE_FIELDS = ("input", "label", "rationale", "teacher_label")


def to_columns(examples: Sequence[Example]) -> dict[str, list[str]]:
    return {f: [getattr(ex, f) for ex in examples] for f in SOURCE_FIELDS}


class InMemoryDataSource(seqio.DataSource):
    """Parsed examples held in memory, served in file order (the Task shuffles with its seed) and sharded by
    example, so any number of hosts works."""

    def __init__(self, splits: Mapping[str, Sequence[Example]], groups: Mapping[str, np.ndarray] | None = None):
        self._columns = {name: to_columns(examples) for name, examples in splits.items()}
        # Only splits where some example has several rows: the others shard by row, as they always did.
        self._groups = {k: v for k, v in (groups or {}).items() if len(v) and int(np.max(v)) > 1}
        super().__init__(splits=sorted(self._columns), num_input_examples={n: len(e) for n, e in splits.items()})

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None, shard_info=None,
                    *, sequence_length=None, use_cached=False, num_epochs=1) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # the Task shuffles and repeats
        if split not in self._columns:
            raise DataError(f"split {split!r} does not exist; available splits: {', '.join(sorted(self._columns))}")
        columns = self._columns[split]
        if shard_info is not None and shard_info.num_shards > 1 and split in self._groups:
            from sbs_jax.data.registry import rationale_rows
            keep = rationale_rows.shard_rows(self._groups[split], shard_info.index, shard_info.num_shards)
            columns = {f: [col[i] for i in keep] for f, col in columns.items()}
            shard_info = None
        ds = tf.data.Dataset.from_tensor_slices(
            {f: tf.constant(col, dtype=tf.string, shape=[len(col)]) for f, col in columns.items()})
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds
