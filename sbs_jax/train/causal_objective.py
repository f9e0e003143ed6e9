"""The step-by-step objective for decoder-only students: completion-only, per-stream token means.

Batches are causal rows (`sbs_jax.data.input_pipeline.causal_lm`): `{"label": rows, "rationale": rows}`
(multitask), `{"sequence": rows}` (rationale_first / label_first; multitask_shared_prompt's tree rows, with
`decoder_branch_ids`) or `{"packed": rows}`. One model pass per
group of rows; each stream's targets are picked out of its group by `decoder_stream_ids`, so every format
gives the same per-stream losses, metrics (`label/loss`, `rationale/num_tokens`, ...) and weighting
(`ObjectiveConfig`: `L_label + λ·L_rationale` or the official α form) as the T5 objective.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sbs_jax.data import schema
from sbs_jax.train import objective as objective_lib


def is_causal(batch: Mapping[str, Any]) -> bool:
    """Whether a batch holds causal rows (decoder-only) rather than encoder-decoder streams."""
    return any(isinstance(g, Mapping) and schema.DECODER_TOKENS in g for g in batch.values())


def group_of(batch: Mapping[str, Any], stream: str) -> str:
    """The batch key whose rows hold `stream`'s targets: the stream's own rows, else the one shared group."""
    if stream in batch:
        return stream
    shared = [k for k in (schema.SEQUENCE, schema.PACKED) if k in batch]
    if len(shared) != 1:
        raise ValueError(f"causal batch with keys {tuple(batch)} has no rows for stream {stream!r}")
    return shared[0]


def train_inputs(config: objective_lib.ObjectiveConfig, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The groups of rows the mode's streams need."""
    keys = dict.fromkeys(group_of(batch, s) for s in config.streams)
    return {k: batch[k] for k in keys}


def stream_weights(rows: Mapping[str, jax.Array], stream: str) -> jax.Array:
    """Loss weights of one stream's targets in causal rows: [rows, length]."""
    return rows[schema.DECODER_LOSS_WEIGHTS] * (rows[schema.DECODER_STREAM_IDS] == schema.STREAM_IDS[stream])


def token_counts(config: objective_lib.ObjectiveConfig, batch) -> dict[str, jax.Array]:
    return {s: jnp.sum(stream_weights(batch[group_of(batch, s)], s) > 0).astype(jnp.float32)
            for s in config.streams}


def num_examples(batch) -> jax.Array:
    """Label completions in the batch: each is one run of label-stream targets (one per example, packed or not)."""
    label = stream_weights(batch[group_of(batch, schema.LABEL)], schema.LABEL) > 0
    previous = jnp.pad(label[:, :-1], ((0, 0), (1, 0)))
    return jnp.sum(label & ~previous).astype(jnp.float32)


def logits(model, params, rows: Mapping[str, jax.Array]) -> jax.Array:
    """[rows, length, vocab] float32 next-token logits of causal rows (segments, if packed, kept apart; the
    branches of tree rows each seeing the shared prompt and itself only)."""
    return model.apply({"params": params}, rows[schema.DECODER_TOKENS], rows[schema.DECODER_VALID],
                       rows[schema.DECODER_POSITIONS], rows.get(schema.DECODER_SEGMENT_IDS),
                       branch_ids=rows.get(schema.DECODER_BRANCH_IDS))


def loss_fn(model, params, batch, rng, config: objective_lib.ObjectiveConfig, *, enable_dropout: bool = True,
            num_tokens: Mapping[str, jax.Array] | None = None):
    """`(loss, metrics)` as `objective.loss_fn`, for causal rows (decoder-only models have no dropout, so
    `rng` and `enable_dropout` are unused)."""
    del rng, enable_dropout
    if config.fused:
        raise ValueError("ObjectiveConfig.fused joins T5 encoder passes; decoder-only students have no encoder "
                         "(causal format multitask_shared_prompt computes the shared prompt once)")
    by_group = {key: logits(model, params, rows) for key, rows in train_inputs(config, batch).items()}
    per_stream = {}
    for s in config.streams:
        rows = batch[group_of(batch, s)]
        stream = {schema.DECODER_TARGET_TOKENS: rows[schema.DECODER_TARGET_TOKENS],
                  schema.DECODER_LOSS_WEIGHTS: stream_weights(rows, s)}
        per_stream[s] = objective_lib.stream_loss(by_group[group_of(batch, s)], stream, config,
                                                  None if num_tokens is None else num_tokens[s])
    return objective_lib.combine(per_stream, config.stream_weights(), num_examples(batch))
