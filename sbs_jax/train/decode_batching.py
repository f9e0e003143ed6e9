"""Decoding batches: rows of similar input length, each batch padded to a few fixed lengths
(`DecodeConfig.length_sorted_batches`).

Decoding a batch padded to the full `inputs` length spends the encoder and every cross-attention step on
padding. Sorting a split by input length, cutting it into batches and padding each batch only to the smallest
bucket length that holds its longest row keeps the work near the real tokens, while the bucket set (powers of
two from `min_length`, capped at the full length) bounds the number of compiled shapes to about
log2(full / min_length) + 1. Results are put back in the examples' original order by the caller.

The plan is a pure function of the row lengths: processes that hold the same rows (the evaluator's and
`sbs infer`'s batches are read in full by every process) compute the same plan and decode the same batches,
with the same shapes, in lockstep.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PlannedBatch(NamedTuple):
    rows: np.ndarray   # [<= batch_size] int: indices into the examples, in decoding order
    length: int        # encoder length the batch is padded to


def bucket_lengths(full_length: int, min_length: int = 16) -> tuple[int, ...]:
    """min_length · 2^k below `full_length`, then `full_length`: e.g. (16, 32, 64, 72) for 72."""
    if full_length < 1 or min_length < 1:
        raise ValueError(f"bucket lengths need positive lengths, got full_length={full_length}, "
                         f"min_length={min_length}")
    out, length = [], min_length
    while length < full_length:
        out.append(length)
        length *= 2
    return tuple(out) + (full_length,)


def row_lengths(tokens: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """[rows, length] tokens -> [rows] index of the last non-pad token + 1 (0 for an all-pad row)."""
    real = tokens != pad_id
    return np.where(real.any(axis=1), tokens.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)


def plan_batches(lengths: np.ndarray, batch_size: int, buckets: tuple[int, ...] | None,
                 full_length: int) -> list[PlannedBatch]:
    """Batches of `batch_size` rows covering every example once.

    With `buckets`, rows are sorted by length (stable, so equal lengths keep their order) and each batch is
    padded to the smallest bucket >= its longest row; without, rows keep their order and every batch has the
    full length (what decoding without bucketing does).
    """
    lengths = np.asarray(lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if lengths.size and int(lengths.max()) > full_length:
        raise ValueError(f"a row has {int(lengths.max())} tokens, more than the full length {full_length}")
    if buckets is not None and buckets[-1] < full_length:
        raise ValueError(f"the largest bucket {buckets[-1]} is shorter than the full length {full_length}")
    order = np.argsort(lengths, kind="stable") if buckets is not None else np.arange(lengths.size)
    plan = []
    for start in range(0, lengths.size, batch_size):
        rows = order[start:start + batch_size]
        if buckets is None:
            plan.append(PlannedBatch(rows, full_length))
            continue
        longest = max(int(lengths[rows].max()), 1)
        plan.append(PlannedBatch(rows, next(b for b in buckets if b >= longest)))
    return plan


def gather_padded(tokens: np.ndarray, rows: np.ndarray, batch_size: int, length: int) -> np.ndarray:
    """[batch_size, length] int32: `tokens[rows]` cut (only padding is cut) or padded to `length`; missing
    rows are all padding."""
    out = np.zeros((batch_size, length), np.int32)
    width = min(length, tokens.shape[1])
    out[:len(rows), :width] = tokens[rows, :width]
    return out
