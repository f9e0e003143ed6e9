"""T5-only layers: relative position buckets and biases, and T5 attention (unscaled, with a cross-attention
cache). The shared pieces (RMS norm, dense, embedding, MLP, masks) are in `sbs_jax.model.layers`."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbs_jax.model.layers import NEG_INF, Dense, fan_in_init
from sbs_jax.model.t5.config import T5Config


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int, max_distance: int):
    """Mesh-TF / HF T5 bucketing of `memory_position - query_position` (int32) into [0, num_buckets).

    Half the buckets are exact small distances, the rest logarithmic up to `max_distance`; float32 math
    in the same order as HF so the buckets agree exactly.
    """
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # max(distance, 1) only keeps log() finite on the branch that `where` discards.
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RelativePositionBiases(nn.Module):
    """Per-head additive attention bias from bucketed relative positions, shared by all layers of a stack."""

    config: T5Config

    @nn.compact
    def __call__(self, query_positions, key_positions, *, bidirectional: bool):
        """query_positions [b, q], key_positions [b, k] (b may be 1) -> bias [b, heads, q, k] float32."""
        cfg = self.config
        rel_embedding = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.d_model ** -0.5), ("heads", "relpos_buckets")),
            (cfg.num_heads, cfg.relative_attention_num_buckets), jnp.float32)
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
        bucket = relative_position_bucket(relative.astype(jnp.int32), bidirectional=bidirectional,
                                          num_buckets=cfg.relative_attention_num_buckets,
                                          max_distance=cfg.relative_attention_max_distance)
        bias = jnp.take(rel_embedding, bucket, axis=1)  # [heads, b, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3))


class MultiHeadAttention(nn.Module):
    """T5 attention: no 1/sqrt(d_kv) scaling, additive relative bias, boolean mask.

    `decode=True` keeps keys/values in the `cache` collection. The first call (inside `init`) only creates
    `cached_key`/`cached_value`; later calls take one query token per row at `decode_position`:
    - self-attention writes this token's key/value into slot `decode_position` and attends over the cache;
    - cross-attention (`cross_attention=True`) projects the encoder output once, at position 0, and reuses
      the cached projection afterwards (as HF's cache does), instead of re-projecting it every step.
    """

    config: T5Config
    deterministic: bool = True
    decode: bool = False
    cross_attention: bool = False

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, mask, bias=None, decode_position=None):
        """inputs_q [b, q, embed], inputs_kv [b, k, embed], mask bool [b|1, 1|heads, q, k],
        bias float32 [b|1, heads, q, k] or None, decode_position int32 [b] -> [b, q, embed]."""
        cfg = self.config
        dtype = cfg.compute_dtype
        heads, d_kv = cfg.num_heads, cfg.d_kv

        def project(name, x, init=fan_in_init()):
            y = Dense(cfg.joined_kv, ("embed", "joined_kv"), dtype, kernel_init=init, name=name)(x)
            y = y.reshape(y.shape[:-1] + (heads, d_kv))
            return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        # HF init: query std (d_model * d_kv)**-0.5, the others d_model**-0.5.
        query = project("query", inputs_q, fan_in_init(d_kv ** -0.5))  # [b, q, heads, kv]
        stepping = self.decode and self.has_variable("cache", "cached_key")
        if stepping and inputs_q.shape[1] != 1:
            raise ValueError(f"decode=True takes one token per step, got length {inputs_q.shape[1]}")

        if stepping and self.cross_attention:
            first = decode_position == 0  # [b]: rows that start decoding now need the projection

            def fresh(mdl, kv):
                cached_k, cached_v = mdl.get_variable("cache", "cached_key"), mdl.get_variable("cache", "cached_value")
                keep = first[:, None, None, None]
                return (jnp.where(keep, project("key", kv), cached_k),
                        jnp.where(keep, project("value", kv), cached_v))

            def reuse(mdl, kv):
                return mdl.get_variable("cache", "cached_key"), mdl.get_variable("cache", "cached_value")

            key, value = nn.cond(jnp.any(first), fresh, reuse, self, inputs_kv)
            self.put_variable("cache", "cached_key", key)
            self.put_variable("cache", "cached_value", value)
        else:
            key = project("key", inputs_kv)  # [b, k, heads, kv]
            value = project("value", inputs_kv)
            if self.decode:
                cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
                cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            if stepping:
                length = cached_key.value.shape[1]
                # One-hot write of this step's key/value at each row's position (TPU friendly, no scatter).
                slot = jax.nn.one_hot(decode_position, length, dtype=key.dtype)[:, :, None, None]  # [b, L, 1, 1]
                key = cached_key.value * (1 - slot) + slot * key
                value = cached_value.value * (1 - slot) + slot * value
                cached_key.value, cached_value.value = key, value

        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)  # [b, h, q, k]
        if bias is not None:
            scores = scores + bias
        scores = jnp.where(mask, scores, NEG_INF)
        weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
        weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=self.deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # [b, q, heads, kv]
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(out.shape[:-2] + (cfg.joined_kv,))
        # HF init for `o`: std (heads * d_kv)**-0.5 == fan_in.
        out = Dense(cfg.d_model, ("joined_kv", "embed"), dtype, name="out")(out)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))
