"""The label of a decoder-only student's generation, per causal format, and scoring with parse failures counted.

- `multitask`: the label stream's generation is the label.
- `rationale_first`: `rationale MARKER label`; the label is what follows the last marker. A generation without
  the marker, or with nothing after it, has no label: it counts wrong and counts as a parse failure.
- `label_first`: `label MARKER rationale`; the label is what precedes the first marker, or the whole
  generation when decoding stopped after the label (no marker).
MARKER is `schema.FORMAT_MARKERS[format]` (stripped of its spaces, as detokenizing may change them).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from sbs_jax.data import schema
from sbs_jax.data.scoring import metrics


@dataclasses.dataclass(frozen=True)
class ParsedGeneration:
    label: str
    rationale: str
    parsed: bool  # False: the format's label could not be found in the generation


def parse_generation(text: str, causal_format: str) -> ParsedGeneration:
    if causal_format not in schema.CAUSAL_FORMATS:
        raise ValueError(f"causal format: expected one of {schema.CAUSAL_FORMATS}, got {causal_format!r}")
    if causal_format not in schema.FORMAT_MARKERS:  # a label-stream generation: all of it is the label
        return ParsedGeneration(text.strip(), "", True)
    marker = schema.FORMAT_MARKERS[causal_format].strip()
    if causal_format == schema.RATIONALE_FIRST:
        if marker not in text:
            return ParsedGeneration("", text.strip(), False)
        rationale, label = text.rsplit(marker, 1)
        return ParsedGeneration(label.strip(), rationale.strip(), bool(label.strip()))
    label, _, rationale = text.partition(marker)
    return ParsedGeneration(label.strip(), rationale.strip(), bool(label.strip()))


def score_generations(metric: str, golds: Sequence[str], generations: Sequence[str],
                      causal_format: str) -> tuple[dict[str, float], list[dict]]:
    """(`{"accuracy" (percent), "parse_failures", "num_examples"}`, per row `{"gold", "prediction" (the parsed
    label), "rationale", "parsed", "correct"}`); `metric` is a task's metric name (`metrics.label_matches`)."""
    if len(golds) != len(generations):
        raise ValueError(f"{len(golds)} gold labels but {len(generations)} generations")
    rows = []
    for gold, text in zip(golds, generations):
        p = parse_generation(text, causal_format)
        correct = p.parsed and bool(metrics.label_matches(metric, gold, p.label))
        rows.append({"gold": gold, "prediction": p.label, "rationale": p.rationale, "parsed": p.parsed,
                     "correct": correct})
    n = len(rows)
    return ({"accuracy": 100.0 * sum(r["correct"] for r in rows) / max(n, 1),
             "parse_failures": float(sum(not r["parsed"] for r in rows)), "num_examples": float(n)}, rows)
