"""The paper's datasets (cqa, esnli, anli1, svamp) from a data dir in the official layout."""
from __future__ import annotations

import os
from typing import Sequence

import gin
from etils import epath

from sbs_jax.data.records import formats
from sbs_jax.data.scoring import metrics
from sbs_jax.data.records import data_dir as records
from sbs_jax.data.registry import register


@gin.configurable(module="sbs_jax.tasks")
def register_paper_tasks(data_dir: str, *, datasets: Sequence[str] | None = None,
                         valid_from_train: float | None = None, train_fraction: float = 1.0, seed: int = 0,
                         vocabulary=None, variants: Sequence[str] = register.VARIANT_NAMES,
                         selection: str = "ours", prefix_style: str = "ours", scoring: str = "ours",
                         teacher_outputs: str = "cot", rationale_sampling: str = "one_per_epoch",
                         rationale_filters=None) -> list[str]:
    """Register `{D}_sbs`, `{D}_sbs_llm`, `{D}_ft`, `{D}_distill` for each dataset D found in `data_dir`.

    Args:
      data_dir: folder (local or gs://) holding `<D>/<D>_<split>.json` and `<D>/llm/<split>_CoT_<i>.json`.
      datasets: names to register (default: every paper dataset that has a folder in `data_dir`).
      valid_from_train: carve this seeded fraction of train into a `validation` split (the paper uses 0.1).
      train_fraction: seeded, nested fraction of the (remaining) train split to keep (data-size studies).
      seed: seed of the carve-out and of the subset (`selection="official"`: the run, which seeds the subset;
        the carve-out then uses seed 0, as the official code).
      selection: `ours` (carve-out first, fixed across fractions) or `official` (subset first, then carve-out).
      prefix_style: `ours` (`predict: ` on every variant) or `official` (prefixes on step-by-step only).
      scoring: `ours` or `official` (SVAMP equations equal only when their values are exactly equal).
      vocabulary: a seqio vocabulary or a spiece.model path; default: the `SPIECE_MODEL` environment variable.
      teacher_outputs: `cot` (the official `llm/<split>_CoT_<i>.json`, one rationale per example) or `samples`
        (`llm/<split>_samples.jsonl`, several per example; docs/tasks.md).
      rationale_sampling, rationale_filters: see `register.register_examples_task`.
    Returns the registered task names. Re-registering replaces earlier registrations.
    """
    if vocabulary is None:
        vocabulary = os.environ.get("SPIECE_MODEL")
        if not vocabulary:
            raise ValueError("register_paper_tasks needs a vocabulary: pass vocabulary=<spiece.model path> "
                             "(gin: register_paper_tasks.vocabulary = %SPIECE_MODEL) or set SPIECE_MODEL")
    if datasets is None:
        root = epath.Path(data_dir)  # local or gs://
        if not root.is_dir():
            raise records.DataError(f"data dir {data_dir} does not exist")
        datasets = [d for d in formats.PAPER_DATASETS if (root / d).is_dir()]
        if not datasets:
            raise records.DataError(f"data dir {data_dir} holds none of the paper's datasets "
                                    f"({', '.join(formats.PAPER_DATASETS)})")
    if scoring not in ("ours", "official"):
        raise ValueError(f"scoring must be 'ours' or 'official', got {scoring!r}")
    names = []
    for name in datasets:
        fmt = formats.get_format(name)
        metric = metrics.OFFICIAL_METRICS[fmt.metric] if scoring == "official" else fmt.metric
        splits = {s: records.read_split(data_dir, name, s, teacher_outputs=teacher_outputs)
                  for s in records.list_splits(data_dir, name)}
        names += register.register_examples_task(
            name, splits, vocabulary=vocabulary, metric=metric, variants=variants,
            valid_from_train=valid_from_train, train_fraction=train_fraction, seed=seed, selection=selection,
            prefix_style=prefix_style, rationale_sampling=rationale_sampling, rationale_filters=rationale_filters)
    return names
