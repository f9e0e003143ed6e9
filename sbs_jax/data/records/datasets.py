"""Datasets by name: the paper's file formats, read from a data dir, and generated datasets (the embedded task).

The one place that maps a dataset name to its splits, so that the commands (`sbs data check`, `sbs vocab train`)
treat the embedded task like any paper dataset and none of them special-cases a name.
"""
from __future__ import annotations

from typing import Callable, Mapping

from sbs_jax.data.records import arith
from sbs_jax.data.records import formats
from sbs_jax.data.records import data_dir as records
from sbs_jax.data.records.data_dir import DataError, SplitData

# name -> generator(seed, rationales_per_example) of every split; no files, no data dir.
GENERATED: Mapping[str, Callable[[int, int], dict[str, SplitData]]] = {
    "arith": lambda seed, k: arith.generate_split_data(seed=seed, rationales_per_example=k),
}


def names() -> list[str]:
    return sorted(formats.FORMATS) + sorted(GENERATED)


def is_generated(name: str) -> bool:
    return name in GENERATED


def check_name(name: str) -> None:
    if name not in formats.FORMATS and name not in GENERATED:
        raise DataError(f"unknown dataset {name!r}; expected one of {names()}")


def load_splits(name: str, data_dir: str | None = None, *, seed: int = 0, teacher_outputs: str = "cot",
                rationales_per_example: int = 1) -> dict[str, SplitData]:
    """Every split the dataset has: generated ones (with `seed`, drawing `rationales_per_example` teacher
    completions per problem), or those found in `data_dir/<name>/` (teacher outputs from the `teacher_outputs`
    layout: "cot" or "samples", see `data_dir.read_split`)."""
    check_name(name)
    if is_generated(name):
        return GENERATED[name](seed, rationales_per_example)
    if rationales_per_example != 1:
        raise DataError(f"rationales_per_example={rationales_per_example} draws samples from a generated dataset "
                        f"({', '.join(sorted(GENERATED))}); {name!r} reads its teacher outputs from files "
                        "(several per example: teacher_outputs='samples')")
    if not data_dir:
        raise DataError(f"--data_dir is required for dataset {name!r}")
    return {s: records.read_split(data_dir, name, s, teacher_outputs=teacher_outputs)
            for s in records.list_splits(data_dir, name)}


def metric(name: str) -> str:
    """The dataset's metric (a key of `scoring.metrics.METRICS`)."""
    check_name(name)
    return "exact_match" if is_generated(name) else formats.get_format(name).metric


def generated_names_hint() -> str:
    """`--dataset arith` (or several), for messages that suggest a dataset needing no files."""
    return " / ".join(f"--dataset {n}" for n in sorted(GENERATED))
