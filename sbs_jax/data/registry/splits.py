"""Seeded validation carve-out and nested training subsets over parsed examples (pure Python).

The carve-out and the subsets use separate seeded permutations, so changing one fraction never reshuffles the
other; kept examples stay in file order (the pipeline shuffles).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sbs_jax.data.records.data_dir import DataError, Example

CARVED_VALIDATION = "validation"


def _seeded_order(n: int, seed: int, purpose: int) -> np.ndarray:
    # A separate stream per purpose, so changing the carve-out fraction does not reshuffle the subsets.
    return np.random.default_rng([seed, purpose]).permutation(n)


def subset_size(fraction: float, n: int) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    return max(1, min(n, int(round(fraction * n))))


def note_rounding(where: str, fraction: float, n: int, kept: int) -> None:
    """Print what a training fraction kept when rounding (or the one-example floor) changed it."""
    if kept != fraction * n:
        print(f"note: {where}: train_fraction {fraction:g} of {n} train examples is {fraction * n:g}; keeping "
              f"{kept} ({100.0 * kept / n:.2f} %)", flush=True)


def plan_splits(splits: Mapping[str, Sequence[Example]], *, valid_from_train: float | None = None,
                train_fraction: float = 1.0, seed: int = 0, train_split: str = "train",
                where: str = "data", selection: str = "ours") -> dict[str, list[Example]]:
    """Apply the validation carve-out, then the training fraction, to the train split.

    `selection="official"` selects as the official code does instead (`selection.official_plan`: subsample
    first with `seed` as the run, then carve `valid_from_train` off the subsample with seed 0).

    - `valid_from_train=f` moves a seeded `f` share of train into a new `validation` split (disjoint from
      what stays in train; the paper's code uses 10%).
    - `train_fraction=f` keeps a seeded `f` share of the (remaining) train examples; the subsets are nested
      for one seed (the first k of one fixed permutation), so 25% contains 12.5%.
    Kept examples stay in their file order; shuffling happens in the pipeline.
    """
    from sbs_jax.data.registry import selection as selection_lib

    if selection not in selection_lib.SELECTION_MODES:
        raise ValueError(f"selection must be one of {selection_lib.SELECTION_MODES}, got {selection!r}")
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    out = {name: list(examples) for name, examples in splits.items()}
    if valid_from_train is None and train_fraction == 1.0:
        return out
    if train_split not in out:
        raise DataError(f"{where}: no {train_split!r} split to carve validation from or subsample (splits: "
                        f"{', '.join(sorted(out)) or 'none'})")
    if valid_from_train is not None and not 0.0 < valid_from_train < 1.0:
        raise ValueError(f"valid_from_train must be in (0, 1), got {valid_from_train}")
    if valid_from_train is not None and CARVED_VALIDATION in out:
        raise DataError(f"{where}: already has a {CARVED_VALIDATION!r} split; not carving another from train")
    if selection == "official":
        n_train = len(out[train_split])
        out[train_split], valid = selection_lib.official_plan(out[train_split], fraction=train_fraction, run=seed,
                                                              valid_from_train=valid_from_train, where=where)
        if train_fraction != 1.0:
            kept = len(out[train_split]) + (0 if valid is None else len(valid))
            note_rounding(where, train_fraction, n_train, kept)
        if valid is not None:
            out[CARVED_VALIDATION] = valid
        return out
    train = out[train_split]
    if valid_from_train is not None:
        n_valid = max(1, int(round(valid_from_train * len(train))))
        if n_valid >= len(train):
            raise DataError(f"{where}: {len(train)} train examples are too few to carve {valid_from_train:.0%}")
        order = _seeded_order(len(train), seed, purpose=0)
        held_out = set(order[:n_valid].tolist())
        out[CARVED_VALIDATION] = [train[i] for i in sorted(held_out)]
        train = [ex for i, ex in enumerate(train) if i not in held_out]
    if train_fraction != 1.0:
        size = subset_size(train_fraction, len(train))
        note_rounding(where, train_fraction, len(train), size)
        keep = _seeded_order(len(train), seed, purpose=1)[:size]
        train = [train[i] for i in sorted(keep.tolist())]
    out[train_split] = train
    return out
