"""Token-level cross-entropy with the weighting in plain sight: a mean over the weighted (real) tokens."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_mean_cross_entropy(logits, targets, weights, *, label_smoothing: float = 0.0, z_loss: float = 0.0):
    """Weighted mean cross-entropy over tokens.

    logits [batch, length, vocab], targets [batch, length] int, weights [batch, length] (1 = real token,
    0 = padding; SeqIO's `decoder_loss_weights`). With 0/1 weights and no smoothing/z-loss the loss equals HF's
    `CrossEntropyLoss(ignore_index=-100)` mean over non-pad tokens.

    label_smoothing: T5X-style soft targets (1 - s on the target, s / (vocab - 1) elsewhere) minus the targets'
      own entropy, so a perfect prediction scores 0.
    z_loss: adds z_loss * log(Z)**2 per token (PaLM/T5X) to keep the softmax normaliser near 1.

    Returns (loss, {"loss", "z_loss", "cross_entropy", "num_tokens", "accuracy"}); an all-zero `weights`
    gives loss 0 instead of NaN.
    """
    if logits.shape[:-1] != targets.shape or targets.shape != weights.shape:
        raise ValueError(f"token_mean_cross_entropy: logits {logits.shape}, targets {targets.shape} and "
                         f"weights {weights.shape} must agree on [batch, length]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
        # sum_v soft_v * log p_v with soft = low everywhere plus (confidence - low) on the target.
        smoothed = low * jnp.sum(log_probs, axis=-1) + (confidence - low) * target_log_prob
        token_ce = -smoothed - entropy
    else:
        token_ce = -target_log_prob
    token_z = z_loss * jnp.square(log_z)

    total = jnp.sum(weights)
    def mean(x):
        return jnp.where(total > 0, jnp.sum(x * weights) / jnp.where(total > 0, total, 1.0), 0.0)

    cross_entropy = mean(token_ce)
    z_term = mean(token_z)
    loss = cross_entropy + z_term
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "cross_entropy": cross_entropy,
        "z_loss": z_term,
        "num_tokens": jnp.sum(weights > 0),
        "accuracy": mean(correct),
    }
    return loss, metrics
