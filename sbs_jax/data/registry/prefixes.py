"""Which task prefixes a variant gets (the strings are `schema`'s; no TensorFlow import, so serving and export
can read them too).

- `ours` (default): every variant's label stream reads `predict: x`, so every student is served the same way.
- `official`: as the official code, only step-by-step (paired) models see prefixes (`predict: ` / `explain: `);
  standard finetuning and distillation (`--model_type standard` there) read the bare input.
"""
from __future__ import annotations

from sbs_jax.data.schema import EXPLAIN_PREFIX, PREDICT_PREFIX  # re-export: the strings live in the schema

PREFIX_STYLES = ("ours", "official")


def stream_prefixes(paired: bool, style: str = "ours") -> tuple[str, str]:
    """(label-stream prefix, rationale-stream prefix) of a paired or label-only task under a prefix style."""
    if style not in PREFIX_STYLES:
        raise ValueError(f"prefix style must be one of {PREFIX_STYLES}, got {style!r}")
    if style == "official" and not paired:
        return "", ""
    return PREDICT_PREFIX, EXPLAIN_PREFIX
