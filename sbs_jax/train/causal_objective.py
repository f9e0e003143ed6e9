"""The step-by-step objective for decoder-only students: completion-only, per-stream token means.

Batches are causal rows (`sbs_jax.data.input_pipeline.causal_lm`): `{"label": rows, "rationale": rows}`
(multitask), `{"sequence": rows}` (rationale_first / label_first; multitask_shared_prompt's tree rows, with
`decoder_branch_ids`) or `{"packed": rows}`. One model pass per
group of rows; each stream's targets are picked out of its group by `decoder_stream_ids`, so every format
gives the same per-stream losses, metrics (`label/loss`, `rationale/num_tokens`, ...) and weighting
(`ObjectiveConfig`: `L_label + λ·L_rationale` or the official α form) as the T5 objective. The gradient comes
from one cross-entropy per group whose token weights fold in each stream's weight and token count
(`group_loss`): a group holding both streams (one-sequence, tree and packed rows) then runs one softmax backward
over the vocabulary per token, not one per stream.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sbs_jax.data import schema
from sbs_jax.model import losses
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


def group_loss(group_logits, rows, streams, config: objective_lib.ObjectiveConfig, weights,
               num_tokens: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """`sum_s weights[s] · L_s` over the `streams` whose targets are in `rows`, as one weighted cross-entropy:
    token t weighs `sum_s weights[s] · w_s(t) / n_s` (n_s: the stream's token count here, or `num_tokens[s]`),
    the same sum `objective.stream_loss` gives stream by stream."""
    token_weights = jnp.zeros(rows[schema.DECODER_TARGET_TOKENS].shape, jnp.float32)
    for s in streams:
        w = stream_weights(rows, s).astype(jnp.float32)
        count = jnp.sum(w > 0).astype(jnp.float32) if num_tokens is None else num_tokens[s]
        token_weights = token_weights + weights[s] * w / jnp.maximum(count, 1.0)
    mean, _ = losses.token_mean_cross_entropy(group_logits, rows[schema.DECODER_TARGET_TOKENS], token_weights,
                                              label_smoothing=config.label_smoothing, z_loss=config.z_loss)
    return mean * jnp.sum(token_weights)


def loss_fn(model, params, batch, rng, config: objective_lib.ObjectiveConfig, *, enable_dropout: bool = True,
            num_tokens: Mapping[str, jax.Array] | None = None):
    """`(loss, metrics)` as `objective.loss_fn`, for causal rows (decoder-only models have no dropout, so
    `rng` and `enable_dropout` are unused)."""
    del rng, enable_dropout
    if config.fused:
        raise ValueError("ObjectiveConfig.fused joins T5 encoder passes; decoder-only students have no encoder "
                         "(causal format multitask_shared_prompt computes the shared prompt once)")
    by_group = {key: logits(model, params, rows) for key, rows in train_inputs(config, batch).items()}
    weights = config.stream_weights()
    per_stream = {}  # metrics only: no gradient flows through them
    for s in config.streams:
        rows = batch[group_of(batch, s)]
        stream = {schema.DECODER_TARGET_TOKENS: rows[schema.DECODER_TARGET_TOKENS],
                  schema.DECODER_LOSS_WEIGHTS: stream_weights(rows, s)}
        per_stream[s] = objective_lib.stream_loss(jax.lax.stop_gradient(by_group[group_of(batch, s)]), stream,
                                                  config, None if num_tokens is None else num_tokens[s])
    total, metrics = objective_lib.combine(per_stream, weights, num_examples(batch))
    differentiable = sum(group_loss(group_logits, batch[key], [s for s in config.streams if group_of(batch, s) == key],
                                    config, weights, num_tokens) for key, group_logits in by_group.items())
    # The value is the per-stream combination (exactly the metrics'); the gradient is the one-pass form's.
    return differentiable + jax.lax.stop_gradient(total - differentiable), metrics
