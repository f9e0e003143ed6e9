"""Per-split counts, teacher parse failures, teacher accuracy and token lengths of a dataset.

The `sbs data check` command (`sbs_jax.commands.data`) prints these reports.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from sbs_jax.data.schema import PREDICT_PREFIX
from sbs_jax.data.records.data_dir import SplitData

PERCENTILES = (50, 90, 95, 99, 100)


def _percentiles(lengths: list[int]) -> dict[str, int] | None:
    if not lengths:
        return None
    values = np.percentile(np.array(lengths), PERCENTILES, method="higher")
    return {f"p{p}" if p < 100 else "max": int(v) for p, v in zip(PERCENTILES, values)}


def encode_batch(vocabulary, texts: list[str]) -> list[list[int]]:
    if hasattr(vocabulary, "encode_batch"):  # T5Vocabulary, HfTokenizerVocabulary: one tokenizer call
        return vocabulary.encode_batch(texts)
    return [list(vocabulary.encode(t)) for t in texts]


def split_report(data: SplitData, vocabulary=None) -> dict:
    """Numbers for one split; token lengths only with a vocabulary."""
    out = {"examples": len(data.examples), "teacher_outputs": data.has_teacher,
           "teacher_samples": data.num_samples if data.has_teacher else None,
           "parse_failures": data.parse_failures if data.has_teacher else None,
           "teacher_accuracy": None if data.teacher_accuracy is None else round(data.teacher_accuracy, 2)}
    if data.filter_counts:
        out["rationale_filters"] = data.filter_counts
    if vocabulary is not None:
        texts = {"inputs": [PREDICT_PREFIX + ex.input for ex in data.examples],
                 "labels": [ex.label for ex in data.examples],
                 "rationales": [c.text for ex in data.examples for c in ex.candidates() if c.text]}
        out["tokens"] = {k: _percentiles([len(ids) + 1 for ids in encode_batch(vocabulary, v)] if v else [])
                         for k, v in texts.items()}
    return out


def dataset_report(splits: Mapping[str, SplitData], vocabulary=None) -> dict[str, dict]:
    return {name: split_report(data, vocabulary) for name, data in sorted(splits.items())}


def format_report(name: str, report: Mapping[str, dict]) -> str:
    several = any((r.get("teacher_samples") or 0) > r["examples"] for r in report.values())
    lines = [f"== {name}",
             f"{'split':<12}{'examples':>10}{'teacher':>9}" + (f"{'samples':>9}" if several else "")
             + f"{'unparsed':>10}{'teacher acc':>13}"]
    for split, r in report.items():
        acc = "-" if r["teacher_accuracy"] is None else f"{r['teacher_accuracy']:.2f}%"
        fails = "-" if r["parse_failures"] is None else str(r["parse_failures"])
        samples = (f"{'-' if r['teacher_samples'] is None else r['teacher_samples']:>9}") if several else ""
        lines.append(f"{split:<12}{r['examples']:>10}{'yes' if r['teacher_outputs'] else 'no':>9}{samples}"
                     f"{fails:>10}{acc:>13}")
    filtered = {split: r["rationale_filters"] for split, r in report.items() if r.get("rationale_filters")}
    if filtered:
        names = list(dict.fromkeys(f for c in filtered.values() for f in c["removed"]))  # in the order they ran
        lines.append("rationale filters (teacher completions removed by each, in order; rationales kept; "
                     "examples left without one)")
        lines.append(f"  {'split':<12}{'before':>8}" + "".join(f"{n:>20}" for n in names)
                     + f"{'kept':>8}{'without':>9}{'dropped':>9}")
        for split, c in filtered.items():
            lines.append(f"  {split:<12}{c['rationales_before']:>8}"
                         + "".join(f"{c['removed'].get(n, 0):>20}" for n in names)
                         + f"{c['rationales_after']:>8}{c['examples_without_rationale']:>9}{c['examples_dropped']:>9}")
    if any("tokens" in r for r in report.values()):
        cols = "".join(f"{('p' + str(p)) if p < 100 else 'max':>7}" for p in PERCENTILES)
        lines.append(f"token lengths (EOS included){'':<2}{cols}")
        for split, r in report.items():
            for field, pct in r["tokens"].items():
                values = "".join(f"{v:>7}" for v in pct.values()) if pct else f"{'(none)':>7}"
                lines.append(f"  {split + ' ' + field:<28}{values}")
    return "\n".join(lines)
