"""SeqIO preprocessors that turn source examples into the label and rationale streams.

Source examples carry `input`, `label` (gold), `rationale` and `teacher_label` ("" when absent). A
step-by-step task keeps both streams in one example, so that every batch pairs them row by row:
`inputs = "predict: " + x -> targets = label` and `rationale_inputs = "explain: " + x -> rationales`.
Which prefix each variant uses under each style is `task_prefixes` (the strings live in `prefixes.py`).
"""
from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from sbs_jax.data.registry.prefixes import EXPLAIN_PREFIX, PREDICT_PREFIX, PREFIX_STYLES, stream_prefixes  # noqa: F401

LABEL_SOURCES = ("gold", "teacher")
# What each task variant trains on: (paired streams?, label source of the label stream).
VARIANTS: Mapping[str, tuple[bool, str]] = {
    "sbs": (True, "gold"), "sbs_llm": (True, "teacher"), "ft": (False, "gold"), "distill": (False, "teacher")}


def task_prefixes(variant: str, style: str = "ours") -> tuple[str, str]:
    """(label-stream prefix, rationale-stream prefix) of a task variant under a prefix style."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return stream_prefixes(VARIANTS[variant][0], style)


def _label(ex: Mapping[str, tf.Tensor], label_source: str) -> tf.Tensor:
    if label_source == "gold":
        return ex["label"]
    # An unparsed teacher output still serves the label stream, with its gold label.
    return tf.where(tf.strings.length(ex["teacher_label"]) > 0, ex["teacher_label"], ex["label"])


def stream_features(dataset: tf.data.Dataset, *, paired: bool, label_source: str,
                    label_prefix: str = PREDICT_PREFIX, rationale_prefix: str = EXPLAIN_PREFIX) -> tf.data.Dataset:
    """Source example -> string task features (the raw `input`/`label`/`rationale` are kept alongside)."""
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")

    @seqio.map_over_dataset
    def fn(ex):
        out = {
            "inputs": tf.strings.join([label_prefix, ex["input"]]),
            "targets": _label(ex, label_source),
            "input": ex["input"], "label": ex["label"], "rationale": ex["rationale"],
        }
        if paired:
            out["rationale_inputs"] = tf.strings.join([rationale_prefix, ex["input"]])
            out["rationales"] = ex["rationale"]
        return out

    return fn(dataset)


def map_fields(dataset: tf.data.Dataset, *, input_field: str = "input", label_field: str = "label",
               rationale_field: str | None = "rationale", teacher_label_field: str | None = None,
               label_names=None) -> tf.data.Dataset:
    """Rename a user source's fields to the source schema; integer labels map through `label_names`."""
    spec = dataset.element_spec
    for field in (input_field, label_field, rationale_field, teacher_label_field):
        if field is not None and field not in spec:
            raise KeyError(f"source examples have no field {field!r}; they have {sorted(spec)}")
    names = None if label_names is None else tf.constant(list(label_names))

    def as_text(value):
        if value.dtype == tf.string:
            return value
        if names is not None:
            return tf.gather(names, tf.cast(value, tf.int32))
        return tf.strings.as_string(value)

    @seqio.map_over_dataset
    def fn(ex):
        empty = tf.constant("")
        return {"input": as_text(ex[input_field]), "label": as_text(ex[label_field]),
                "rationale": as_text(ex[rationale_field]) if rationale_field else empty,
                "teacher_label": as_text(ex[teacher_label_field]) if teacher_label_field else empty}

    return fn(dataset)
