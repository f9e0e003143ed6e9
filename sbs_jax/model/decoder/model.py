"""Decoder-only LM (Llama, Qwen2, Gemma 1/2/3) in flax linen; family differences come from `DecoderConfig`.

Teacher forcing:
    logits = model.apply({"params": params}, tokens, valid, positions)   # [batch, length, vocab] float32
`valid` [batch, length] bool is the attention mask (padding is never inferred from token ids: id 0 is a real
token in Llama 3). `positions` default to 0..L-1 as in transformers' forward; left-padded rows pass
`positions_from_mask(valid)` (what HF's `generate` computes). Packed rows pass `segment_ids` and restarted
positions. Tree-shaped rows (one shared prompt, several completions after it) pass `branch_ids`: 0 on the
prompt, k > 0 on the tokens of completion k, whose positions continue from the prompt's end; a token sees the
prompt and its own branch only (`branch_mask`), so each completion is computed as if it were alone after the
prompt. Sliding windows then count position (not slot) distances.

KV-cache decoding (`sbs_jax.model.decoder.decoding` builds on it):
    cache = init_decode_cache(model, batch, max_length)
    logits, mutated = model.apply({"params": params, "cache": cache}, tokens, valid, decode=True,
                                  mutable=["cache"])
Each call appends `tokens.shape[1]` slots to every row (a whole left-padded prompt, then one token per step);
positions continue from the number of real tokens a row holds. Every cache leaf has batch as its leading axis.

Parameter names follow transformers' state dict (`self_attn/q_proj`, `input_layernorm`, ...) except the MLP,
which is the shared `MlpBlock` (`wi_0` = gate_proj, `wi_1` = up_proj, `wo` = down_proj).
"""
from __future__ import annotations

import math
import flax.linen as nn
import jax
import jax.numpy as jnp

from sbs_jax.model.decoder.config import DecoderConfig
from sbs_jax.model.decoder.rope import apply_rope, inverse_frequencies, rope_tables
from sbs_jax.model.layers import NEG_INF, Dense, Embed, MlpBlock, RMSNorm, attention_mask
from sbs_jax.model.scan import apply_layer_stack

_EMBED_AXES = ("batch", "length", "embed")


def branch_mask(branch_ids):
    """Bool [b, 1, q, k]: the key is on the shared prompt (branch 0) or on the query's own branch."""
    keys = branch_ids[:, None, :]
    return ((keys == 0) | (keys == branch_ids[:, :, None]))[:, None]


def positions_from_mask(valid):
    """RoPE positions of (left-)padded rows: the count of real tokens before each one (HF `generate`)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)


def kernel_init(cfg):
    """HF's `_init_weights` for these families: every linear kernel normal(0, initializer_range)."""
    return nn.initializers.normal(cfg.initializer_range)


class Attention(nn.Module):
    """Grouped-query attention with RoPE; scores in float32, optional tanh soft-cap, boolean mask."""

    config: DecoderConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, mask, cos, sin, write_slot):
        """x [b, q, embed], mask bool [b, 1, q, k], cos/sin [b|1, q, head_dim], write_slot int32 [] or None."""
        cfg = self.config
        dtype = cfg.compute_dtype
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

        def project(name, n_heads):
            y = Dense(n_heads * head_dim, ("embed", "joined_kv"), dtype, kernel_init=kernel_init(cfg),
                      use_bias=cfg.attention_bias, name=name)(x)
            y = y.reshape(y.shape[:-1] + (n_heads, head_dim))
            return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        query, key, value = project("q_proj", heads), project("k_proj", kv_heads), project("v_proj", kv_heads)
        if cfg.qk_norm:
            query = RMSNorm(cfg.rms_norm_eps, dtype, plus_one=True, axis_name="kv", name="q_norm")(query)
            key = RMSNorm(cfg.rms_norm_eps, dtype, plus_one=True, axis_name="kv", name="k_norm")(key)
        query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)

        if self.decode:
            stepping = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            if stepping:
                key = jax.lax.dynamic_update_slice_in_dim(cached_key.value, key, write_slot, axis=1)
                value = jax.lax.dynamic_update_slice_in_dim(cached_value.value, value, write_slot, axis=1)
                cached_key.value, cached_value.value = key, value

        batch, q_len = x.shape[:2]
        grouped = query.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", grouped, key, preferred_element_type=jnp.float32)
        scores = scores * cfg.attention_scale
        if cfg.attn_logit_softcapping:
            scores = jnp.tanh(scores / cfg.attn_logit_softcapping) * cfg.attn_logit_softcapping
        scores = jnp.where(mask[:, :, None], scores, NEG_INF)  # mask [b, 1, q, k] -> [b, 1, 1, q, k]
        weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bkgqs,bskd->bqkgd", weights, value).reshape(batch, q_len, heads, head_dim)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out = Dense(cfg.hidden_size, ("joined_kv", "embed"), dtype, kernel_init=kernel_init(cfg),
                    use_bias=cfg.attention_out_bias, name="o_proj")(out.reshape(batch, q_len, heads * head_dim))
        return nn.with_logical_constraint(out, _EMBED_AXES)


class DecoderLayer(nn.Module):
    """Pre-norm block; Gemma 2/3 add the sandwich norms (after attention, around the MLP)."""

    config: DecoderConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, is_sliding, full_mask, sliding_mask, global_rope, local_rope, write_slot):
        cfg = self.config
        dtype = cfg.compute_dtype
        mask = full_mask if sliding_mask is None else jnp.where(is_sliding, sliding_mask, full_mask)
        cos, sin = global_rope
        if local_rope is not None:
            cos, sin = jnp.where(is_sliding, local_rope[0], cos), jnp.where(is_sliding, local_rope[1], sin)

        def norm(name):
            return RMSNorm(cfg.rms_norm_eps, dtype, plus_one=cfg.is_gemma, name=name)

        h = Attention(cfg, self.decode, name="self_attn")(norm("input_layernorm")(x), mask, cos, sin, write_slot)
        if cfg.sandwich_norms:
            h = norm("post_attention_layernorm")(h)
        x = x + h
        h = norm("pre_feedforward_layernorm" if cfg.sandwich_norms else "post_attention_layernorm")(x)
        h = MlpBlock(cfg.intermediate_size, cfg.hidden_act, True, dtype, use_bias=cfg.mlp_bias,
                     kernel_init=kernel_init(cfg), name="mlp")(h)
        if cfg.sandwich_norms:
            h = norm("post_feedforward_layernorm")(h)
        return nn.with_logical_constraint(x + h, _EMBED_AXES), None


class DecoderStack(nn.Module):
    config: DecoderConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, full_mask, sliding_mask, global_rope, local_rope, write_slot):
        cfg = self.config
        x = apply_layer_stack(DecoderLayer, cfg, cfg.num_hidden_layers, x, full_mask, sliding_mask, global_rope,
                              local_rope, write_slot, per_layer=jnp.asarray(cfg.sliding_layers), decode=self.decode)
        return RMSNorm(cfg.rms_norm_eps, cfg.compute_dtype, plus_one=cfg.is_gemma, name="norm")(x)


class DecoderLM(nn.Module):
    """Decoder-only causal LM; see the module docstring for training and decoding calls."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, tokens, valid=None, positions=None, segment_ids=None, decode: bool = False,
                 branch_ids=None):
        """tokens [batch, length] -> logits [batch, length, vocab] float32."""
        cfg = self.config
        if decode and branch_ids is not None:
            raise ValueError("DecoderLM: branch_ids are for teacher-forced tree rows; decoding runs one branch")
        dtype = cfg.compute_dtype
        batch, length = tokens.shape
        valid = jnp.ones((batch, length), jnp.bool_) if valid is None else valid.astype(jnp.bool_)
        embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype, init_std=cfg.initializer_range, name="embed_tokens")
        x = embed(tokens)
        if cfg.is_gemma:
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)  # the scale rounded to the compute dtype
        x = nn.with_logical_constraint(x, _EMBED_AXES)

        write_slot = None
        stepping = decode and self.has_variable("cache", "index")
        if decode:
            # Slots written so far (the same for every row) and which written slots hold real tokens.
            index = self.variable("cache", "index", jnp.zeros, (batch,), jnp.int32)
            key_valid = self.variable("cache", "key_valid", jnp.zeros, (batch, length), jnp.bool_)
        if stepping:
            write_slot = index.value[0]
            max_length = key_valid.value.shape[1]
            seen = jnp.sum(key_valid.value, axis=1, dtype=jnp.int32)
            positions = seen[:, None] + positions_from_mask(valid)
            key_valid.value = jax.lax.dynamic_update_slice(key_valid.value, valid, (0, write_slot))
            index.value = index.value + length
            query_slots = write_slot + jnp.arange(length)
            key_slots = jnp.arange(max_length)
            full = key_valid.value[:, None, :] & (key_slots[None, :] <= query_slots[:, None])[None]
            full = full[:, None]  # [b, 1, q, max_length]
        else:
            positions = jnp.arange(length, dtype=jnp.int32)[None, :] if positions is None else positions
            query_slots = key_slots = jnp.arange(length)
            full = attention_mask(valid, valid, segment_ids, segment_ids, causal=True)
            if branch_ids is not None:
                full = full & branch_mask(branch_ids)
        sliding = None
        if any(cfg.sliding_layers):
            if branch_ids is None:
                window = (key_slots[None, :] > query_slots[:, None] - cfg.sliding_window)[None, None]
            else:  # a later branch's slots sit past the earlier branches: its distances are position ones
                window = (positions[:, None, :] > positions[:, :, None] - cfg.sliding_window)[:, None]
            sliding = full & window

        global_rope = rope_tables(positions, inverse_frequencies(cfg))
        local_rope = rope_tables(positions, inverse_frequencies(cfg, local=True)) if cfg.rope_local_theta else None
        y = DecoderStack(cfg, decode, name="decoder")(x, full, sliding, global_rope, local_rope, write_slot)
        if cfg.tie_word_embeddings:
            logits = embed.attend(y)
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"), dtype, kernel_init=kernel_init(cfg),
                           out_dtype=jnp.float32, name="lm_head")(y)
        logits = logits.astype(jnp.float32)
        if cfg.final_logit_softcapping:
            logits = jnp.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def init_decode_cache(model: DecoderLM, batch_size: int, max_length: int):
    """An empty decode cache (all zeros) for `batch_size` rows and up to `max_length` slots (prompt + new).

    Shapes come from `jax.eval_shape`, so no parameters are materialised.
    """
    def init():
        return model.init(jax.random.key(0), jnp.ones((batch_size, max_length), jnp.int32), decode=True)

    shapes = jax.eval_shape(init)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
