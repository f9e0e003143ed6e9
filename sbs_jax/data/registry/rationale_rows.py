"""The train split's source rows of a task whose examples carry several rationales, and how they are read.

A split is served one row per (example, rationale): example i's rows are consecutive, `counts[i]` of them
(one row, with an empty rationale, for an example without one), so every row pairs the example's label with
one of its rationales. With one rationale per example the rows are the examples themselves, unchanged.
`rationale_sampling` says how training reads the train split's rows each epoch:
- "one_per_epoch" (default): each example once, with one of its rows picked from (run seed, epoch, example
  index) (`input_pipeline.rationale_picking`, numpy back end);
- "all": every row once, i.e. each (example, rationale) pair as its own rationale target with the example's
  label: an example with k rationales trains its label stream k times per epoch too (the streams stay
  paired row by row, as the paper pairs them per example).
Evaluation splits keep one row per example (the first rationale).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sbs_jax.data.records.data_dir import Example

SAMPLING_MODES = ("one_per_epoch", "all")
TRAIN_SPLIT = "train"


def check_sampling(mode: str) -> str:
    if mode not in SAMPLING_MODES:
        raise ValueError(f"rationale_sampling={mode!r}: expected one of {SAMPLING_MODES}")
    return mode


def rows(examples: Sequence[Example]) -> tuple[list[Example], np.ndarray]:
    """(one single-rationale Example per row, rows per example [n] int64)."""
    out, counts = [], np.zeros((len(examples),), np.int64)
    for i, ex in enumerate(examples):
        if not ex.rationales:
            out.append(ex)
            counts[i] = 1
            continue
        for c in ex.rationales:
            out.append(Example(ex.input, ex.label, c.text, c.teacher_label))
        counts[i] = len(ex.rationales)
    return out, counts


def shard_rows(counts: np.ndarray, index: int, num_shards: int) -> np.ndarray:
    """Row indices of the examples `index, index + num_shards, ...` (sharding by example keeps an example's
    rationales in one process)."""
    example_of_row = np.repeat(np.arange(len(counts)), counts)
    return np.flatnonzero(example_of_row % num_shards == index)
