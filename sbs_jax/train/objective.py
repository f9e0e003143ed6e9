"""The distilling step-by-step objective: per-stream token-mean cross-entropy, weighted and summed.

The paper writes `L = L_label + λ·L_rationale`; the official code computes `α·L_label + (1−α)·L_rationale`
(α = 0.5, i.e. λ = 1 up to a factor 1/2). Each stream is normalised by its own token count, as HF's loss is,
so the two streams weigh what their weights say regardless of how long rationales are compared to labels.
Batches are paired (`{"label", "rationale"}`, one model pass per stream, or `fused`) or packed
(`{"packed": rows}`, one pass; each stream's tokens are picked out by `decoder_stream_ids`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sbs_jax.data import schema
from sbs_jax.data.schema import PACKED, STREAM_IDS, STREAMS  # re-export
from sbs_jax.model import losses
from sbs_jax.model.t5 import Transformer

MODES = ("step_by_step", "finetune", "distill")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """How the streams are combined.

    mode: `step_by_step` (label + rationale streams), `finetune` (gold labels) or `distill` (teacher labels);
      the latter two train on the label stream only, which holds gold or teacher labels depending on the task.
    rationale_weight: λ in `L_label + λ·L_rationale`.
    alpha: if set, use the official code's `α·L_label + (1−α)·L_rationale` instead (overrides λ).
    fused: one encoder pass over both streams' rows (the inputs share a length), then one decoder pass per
      stream at its own target length; same loss and gradients as separate passes, fewer, larger matmuls.
    """
    mode: str = "step_by_step"
    rationale_weight: float = 1.0
    alpha: float | None = None
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    fused: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ObjectiveConfig.mode: expected one of {MODES}, got {self.mode!r}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"ObjectiveConfig.alpha: expected a value in [0, 1], got {self.alpha}")
        if self.rationale_weight < 0:
            raise ValueError(f"ObjectiveConfig.rationale_weight: expected >= 0, got {self.rationale_weight}")

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS if self.mode == "step_by_step" else (schema.LABEL,)

    def stream_weights(self) -> dict[str, float]:
        if self.mode != "step_by_step":
            return {schema.LABEL: 1.0}
        if self.alpha is not None:
            return {schema.LABEL: self.alpha, schema.RATIONALE: 1.0 - self.alpha}
        return {schema.LABEL: 1.0, schema.RATIONALE: self.rationale_weight}


def is_packed(batch: Mapping[str, Any]) -> bool:
    return PACKED in batch


def train_inputs(config: ObjectiveConfig, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a batch the objective reads: the packed rows, or the streams of the mode."""
    return {PACKED: batch[PACKED]} if is_packed(batch) else {s: batch[s] for s in config.streams}


def stream_weights_of_packed(rows: Mapping[str, jax.Array], stream: str) -> jax.Array:
    """Loss weights of one stream's target tokens in packed rows: [rows, length]."""
    return rows[schema.DECODER_LOSS_WEIGHTS] * (rows[schema.DECODER_STREAM_IDS] == STREAM_IDS[stream])


def check_batch(config: ObjectiveConfig, batch: Mapping[str, Any]) -> None:
    """Fails early, naming the stream, when a task's batches do not fit the training mode."""
    if is_packed(batch):
        return
    missing = [s for s in config.streams if s not in batch]
    if missing:
        raise ValueError(f"objective mode {config.mode!r} needs batch streams {config.streams}, the batch has "
                         f"{tuple(batch)}; missing {missing} (step-by-step needs a `*_sbs*` task)")


def model_inputs(stream: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: v for k, v in stream.items() if k not in schema.LOSS_ONLY_KEYS}


def interleave_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """[B, ...] and [B, ...] -> [2B, ...] with rows a0, b0, a1, b1, ...

    Interleaving (not concatenating) keeps each data shard's rows of both streams on that shard: a batch split
    over `data` into contiguous blocks stays split the same way, so fusing moves no rows between devices.
    """
    return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def fuse_streams(label: Mapping[str, jax.Array], rationale: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The encoder features of both streams as one batch of 2B rows (`interleave_rows`): label and rationale
    inputs share the inputs length, so one encoder pass serves both streams; the decoder features stay per
    stream, each at its own target length (no padding of labels to the rationale length)."""
    keys = [k for k in schema.ENCODER_KEYS if k in label or k in rationale]
    for k in keys:
        if k not in label or k not in rationale:
            raise ValueError(f"streams differ in encoder features: {k!r} is in only one of them")
        if label[k].shape != rationale[k].shape:
            raise ValueError(f"fused streams need equal encoder shapes; {k}: label {label[k].shape} vs "
                             f"rationale {rationale[k].shape}")
    return {k: interleave_rows(label[k], rationale[k]) for k in keys}


def _fused_logits(model, params, label, rationale, rng, enable_dropout):
    """One encoder pass over both streams' 2B rows, then one decoder pass per stream at its own length."""
    enc_key, label_key, rationale_key = jax.random.split(rng, 3)
    fused = fuse_streams(label, rationale)
    encoded = model.apply({"params": params}, **fused, enable_dropout=enable_dropout,
                          rngs={"dropout": enc_key}, method=Transformer.encode)  # [2*batch, length, embed]
    encoded = encoded.reshape((-1, 2) + encoded.shape[1:])  # [batch, 2, length, embed]
    out = {}
    for index, (name, stream, key) in enumerate(((schema.LABEL, label, label_key),
                                                 (schema.RATIONALE, rationale, rationale_key))):
        out[name] = model.apply(
            {"params": params}, encoded[:, index], stream[schema.ENCODER_INPUT_TOKENS],
            stream[schema.DECODER_INPUT_TOKENS], stream[schema.DECODER_TARGET_TOKENS],
            encoder_segment_ids=stream.get(schema.ENCODER_SEGMENT_IDS),
            decoder_segment_ids=stream.get(schema.DECODER_SEGMENT_IDS),
            decoder_positions=stream.get(schema.DECODER_POSITIONS),
            enable_dropout=enable_dropout, rngs={"dropout": key}, method=Transformer.decode)
    return out


def stream_loss(logits, stream, config: ObjectiveConfig, num_tokens=None):
    """Token-mean loss of one stream; with `num_tokens`, normalised by that (global) count instead."""
    loss, metrics = losses.token_mean_cross_entropy(
        logits, stream[schema.DECODER_TARGET_TOKENS], stream[schema.DECODER_LOSS_WEIGHTS],
        label_smoothing=config.label_smoothing, z_loss=config.z_loss)
    if num_tokens is not None:
        # Token-sum over this microbatch divided by the whole batch's count: microbatch losses then add up to
        # exactly the full-batch token mean.
        loss = loss * metrics["num_tokens"] / jnp.maximum(num_tokens, 1.0)
    return loss, metrics


def token_counts(config: ObjectiveConfig, batch: Mapping[str, Mapping[str, jax.Array]]) -> dict[str, jax.Array]:
    """Number of target tokens (weight > 0) per stream, unpacked or packed."""
    if is_packed(batch):
        return {s: jnp.sum(stream_weights_of_packed(batch[PACKED], s) > 0).astype(jnp.float32)
                for s in config.streams}
    return {s: jnp.sum(batch[s][schema.DECODER_LOSS_WEIGHTS] > 0).astype(jnp.float32) for s in config.streams}


def num_examples(batch: Mapping[str, Mapping[str, jax.Array]]) -> jax.Array:
    """Examples in a batch: label segments of packed rows (a segment starts at decoder position 0), else
    rows with a label target."""
    if is_packed(batch):
        rows = batch[PACKED]
        starts = (rows[schema.DECODER_POSITIONS] == 0) & (rows[schema.DECODER_STREAM_IDS] == schema.LABEL_STREAM_ID)
        return jnp.sum(starts).astype(jnp.float32)
    return jnp.sum(jnp.any(batch[schema.LABEL][schema.DECODER_LOSS_WEIGHTS] > 0, axis=1)).astype(jnp.float32)


def _packed_loss(model, params, rows, rng, config: ObjectiveConfig, enable_dropout, num_tokens):
    """Per-stream token-mean losses over packed rows: one forward pass, weights split by stream id."""
    logits = model.apply({"params": params}, **model_inputs(rows), enable_dropout=enable_dropout,
                         rngs={"dropout": rng})  # [rows, length, vocab]
    return {s: stream_loss(logits, {schema.DECODER_TARGET_TOKENS: rows[schema.DECODER_TARGET_TOKENS],
                                     schema.DECODER_LOSS_WEIGHTS: stream_weights_of_packed(rows, s)},
                            config, None if num_tokens is None else num_tokens[s])
            for s in config.streams}


def loss_fn(model, params, batch, rng, config: ObjectiveConfig, *, enable_dropout: bool = True,
            num_tokens: Mapping[str, jax.Array] | None = None):
    """`(loss, metrics)` for a paired or packed batch: the T5X-style `loss_fn(params, batch, rng)`.

    Metrics per stream: `label/loss`, `label/num_tokens`, `label/accuracy`, `label/z_loss` (likewise
    `rationale/...`), plus `loss` (the weighted total that is differentiated) and `num_examples`.
    A packed batch (`{"packed": rows}`) gives the same per-stream token means as the unpacked batch of the
    same examples: each stream's loss is a mean over that stream's target tokens either way.
    """
    weights = config.stream_weights()
    streams = config.streams
    if is_packed(batch):
        per_stream = _packed_loss(model, params, batch[PACKED], rng, config, enable_dropout, num_tokens)
        return combine(per_stream, weights, num_examples(batch))

    def apply(inputs, key):
        return model.apply({"params": params}, **model_inputs(inputs), enable_dropout=enable_dropout,
                           rngs={"dropout": key})

    if config.fused and len(streams) == 2:
        logits_by_stream = _fused_logits(model, params, batch[schema.LABEL], batch[schema.RATIONALE], rng,
                                         enable_dropout)
    else:
        keys = jax.random.split(rng, len(streams))
        logits_by_stream = {s: apply(batch[s], k) for s, k in zip(streams, keys)}

    per_stream = {s: stream_loss(logits_by_stream[s], batch[s], config,
                                  None if num_tokens is None else num_tokens[s]) for s in streams}
    return combine(per_stream, weights, num_examples(batch))


def combine(per_stream, weights, examples):
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for s, (loss, m) in per_stream.items():
        total = total + weights[s] * loss
        metrics.update({f"{s}/{k}": v for k, v in m.items()})
    metrics["loss"] = total
    metrics["num_examples"] = examples
    return total, metrics
