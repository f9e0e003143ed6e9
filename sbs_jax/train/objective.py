"""The distilling step-by-step objective: per-stream token-mean cross-entropy, weighted and summed.

The paper writes `L = L_label + λ·L_rationale`; the official code computes `α·L_label + (1−α)·L_rationale`
(α = 0.5, i.e. λ = 1 up to a factor 1/2). Each stream is normalised by its own token count, as HF's loss is,
so the two streams weigh what their weights say regardless of how long rationales are compared to labels.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sbs_jax.model import losses

MODES = ("step_by_step", "finetune", "distill")
STREAMS = ("label", "rationale")
# Keys of a stream batch that the model consumes; `decoder_loss_weights` is the loss's own.
_DECODER_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                 "decoder_segment_ids", "decoder_positions")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """How the streams are combined.

    mode: `step_by_step` (label + rationale streams), `finetune` (gold labels) or `distill` (teacher labels);
      the latter two train on the label stream only, which holds gold or teacher labels depending on the task.
    rationale_weight: λ in `L_label + λ·L_rationale`.
    alpha: if set, use the official code's `α·L_label + (1−α)·L_rationale` instead (overrides λ).
    fused: compute both streams in one forward pass over the concatenated batch (same loss and gradients).
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
        return STREAMS if self.mode == "step_by_step" else ("label",)

    def stream_weights(self) -> dict[str, float]:
        if self.mode != "step_by_step":
            return {"label": 1.0}
        if self.alpha is not None:
            return {"label": self.alpha, "rationale": 1.0 - self.alpha}
        return {"label": 1.0, "rationale": self.rationale_weight}


def check_batch(config: ObjectiveConfig, batch: Mapping[str, Any]) -> None:
    """Fails early, naming the stream, when a task's batches do not fit the training mode."""
    missing = [s for s in config.streams if s not in batch]
    if missing:
        raise ValueError(f"objective mode {config.mode!r} needs batch streams {config.streams}, the batch has "
                         f"{tuple(batch)}; missing {missing} (step-by-step needs a `*_sbs*` task)")


def model_inputs(stream: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: v for k, v in stream.items() if k != "decoder_loss_weights"}


def _pad_length(x: jax.Array, length: int) -> jax.Array:
    return jnp.pad(x, [(0, 0), (0, length - x.shape[1])])


def fuse_streams(label: Mapping[str, jax.Array], rationale: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """One batch of 2B rows: label rows then rationale rows, decoder features right-padded to a common length.

    Padding after a target is invisible to earlier positions (causal decoder, weight 0), so the fused logits at
    real target positions equal the per-stream ones.
    """
    if set(label) != set(rationale):
        raise ValueError(f"streams differ in features: label {sorted(label)} vs rationale {sorted(rationale)}")
    length = max(label["decoder_target_tokens"].shape[1], rationale["decoder_target_tokens"].shape[1])
    fused = {}
    for key in label:
        a, b = label[key], rationale[key]
        if key in _DECODER_KEYS:
            a, b = _pad_length(a, length), _pad_length(b, length)
        fused[key] = jnp.concatenate([a, b], axis=0)
    return fused


def _stream_loss(logits, stream, config: ObjectiveConfig, num_tokens=None):
    """Token-mean loss of one stream; with `num_tokens`, normalised by that (global) count instead."""
    loss, metrics = losses.token_mean_cross_entropy(
        logits, stream["decoder_target_tokens"], stream["decoder_loss_weights"],
        label_smoothing=config.label_smoothing, z_loss=config.z_loss)
    if num_tokens is not None:
        # Token-sum over this microbatch divided by the whole batch's count: microbatch losses then add up to
        # exactly the full-batch token mean.
        loss = loss * metrics["num_tokens"] / jnp.maximum(num_tokens, 1.0)
    return loss, metrics


def token_counts(config: ObjectiveConfig, batch: Mapping[str, Mapping[str, jax.Array]]) -> dict[str, jax.Array]:
    """Number of target tokens (weight > 0) per stream."""
    return {s: jnp.sum(batch[s]["decoder_loss_weights"] > 0).astype(jnp.float32) for s in config.streams}


def loss_fn(model, params, batch, rng, config: ObjectiveConfig, *, enable_dropout: bool = True,
            num_tokens: Mapping[str, jax.Array] | None = None):
    """`(loss, metrics)` for a paired batch: the T5X-style `loss_fn(params, batch, rng)`.

    Metrics per stream: `label/loss`, `label/num_tokens`, `label/accuracy`, `label/z_loss` (likewise
    `rationale/...`), plus `loss` (the weighted total that is differentiated).
    """
    weights = config.stream_weights()
    streams = config.streams

    def apply(inputs, key):
        return model.apply({"params": params}, **model_inputs(inputs), enable_dropout=enable_dropout,
                           rngs={"dropout": key})

    if config.fused and len(streams) == 2:
        label, rationale = batch["label"], batch["rationale"]
        logits = apply(fuse_streams(label, rationale), rng)  # [2*batch, length, vocab]
        b = label["decoder_target_tokens"].shape[0]
        logits_by_stream = {"label": logits[:b, :label["decoder_target_tokens"].shape[1]],
                            "rationale": logits[b:, :rationale["decoder_target_tokens"].shape[1]]}
    else:
        keys = jax.random.split(rng, len(streams))
        logits_by_stream = {s: apply(batch[s], k) for s, k in zip(streams, keys)}

    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for s in streams:
        loss, m = _stream_loss(logits_by_stream[s], batch[s], config,
                               None if num_tokens is None else num_tokens[s])
        total = total + weights[s] * loss
        metrics.update({f"{s}/{k}": v for k, v in m.items()})
    metrics["loss"] = total
    return total, metrics
