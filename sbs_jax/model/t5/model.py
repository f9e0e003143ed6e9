"""T5 encoder-decoder (v1.0 and v1.1) in flax linen, with T5X parameter names and logical axes.

Training / teacher forcing:
    logits = model.apply({"params": params}, encoder_input_tokens, decoder_input_tokens,
                         decoder_target_tokens, enable_dropout=True, rngs={"dropout": rng})

Autoregressive decoding with a key/value cache (what `sbs_jax.model.t5.decoding` builds on):
    cache = init_decode_cache(model, batch_size, max_decode_length, encoder_length)
    encoded = model.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)
    logits, mutated = model.apply({"params": params, "cache": cache}, encoded, encoder_input_tokens,
                                  tokens,                      # [batch, 1]: the previous token of each row
                                  decode=True, method=Transformer.decode, mutable=["cache"])
    cache = mutated["cache"]                                   # logits: [batch, 1, vocab] float32
Each call appends one position per row. Every cache leaf has batch as its leading axis (beam search may
gather/tile along it). Cross-attention keys/values are projected from `encoded` at a row's first step and
cached; `encoded` must stay the same for a row across its steps.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbs_jax.model.layers import Dense, Embed, MlpBlock, RMSNorm, attention_mask, default_positions
from sbs_jax.model.scan import apply_layer_stack
from sbs_jax.model.t5.config import T5Config
from sbs_jax.model.t5.layers import MultiHeadAttention, RelativePositionBiases

_EMBED_AXES = ("batch", "length", "embed")


def _mlp(cfg: T5Config, deterministic: bool) -> MlpBlock:
    return MlpBlock(cfg.d_ff, cfg.activation, cfg.is_gated, cfg.compute_dtype, cfg.dropout_rate, deterministic,
                    name="mlp")


class EncoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, bias):  # x [batch, length, embed]
        cfg = self.config
        h = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="pre_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, self.deterministic, name="attention")(h, h, mask, bias)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="pre_mlp_layer_norm")(x)
        h = _mlp(cfg, self.deterministic)(h)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(x, _EMBED_AXES), None


class DecoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x, encoded, self_mask, cross_mask, self_bias, decode_position):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="pre_self_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, self.deterministic, self.decode, name="self_attention")(
            h, h, self_mask, self_bias, decode_position)
        x = x + drop(h, deterministic=self.deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="pre_cross_attention_layer_norm")(x)
        # T5 has no position bias in cross-attention.
        h = MultiHeadAttention(cfg, self.deterministic, self.decode, cross_attention=True,
                               name="encoder_decoder_attention")(h, encoded, cross_mask, None, decode_position)
        x = x + drop(h, deterministic=self.deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="pre_mlp_layer_norm")(x)
        h = _mlp(cfg, self.deterministic)(h)
        x = x + drop(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(x, _EMBED_AXES), None


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, deterministic: bool = True):
        """tokens [batch, length] -> encoded [batch, length, embed] (compute dtype)."""
        cfg = self.config
        x = nn.with_logical_constraint(self.shared_embedding(tokens), _EMBED_AXES)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        positions = default_positions(tokens, positions)
        bias = RelativePositionBiases(cfg, name="relpos_bias")(positions, positions, bidirectional=True)
        valid = tokens != cfg.pad_id
        mask = attention_mask(valid, valid, segment_ids, segment_ids)
        x = apply_layer_stack(EncoderLayer, cfg, cfg.num_layers, x, mask, bias, deterministic=deterministic)
        x = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded, encoder_tokens, decoder_input_tokens, decoder_target_tokens=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
                 deterministic: bool = True, decode: bool = False):
        """-> logits [batch, length, vocab] float32."""
        cfg = self.config
        relpos = RelativePositionBiases(cfg, name="relpos_bias")
        encoder_valid = encoder_tokens != cfg.pad_id
        batch, length = decoder_input_tokens.shape
        decode_position = None
        stepping = decode and self.has_variable("cache", "written")
        if decode:
            # Which cache slots hold a decoded position, per row; created full-length by the init call.
            written = self.variable("cache", "written", jnp.zeros, (batch, length), jnp.bool_)
        if stepping:
            if length != 1:
                raise ValueError(f"decode=True takes one token per step, got decoder length {length}")
            max_length = written.value.shape[1]
            decode_position = jnp.sum(written.value, axis=1, dtype=jnp.int32)  # [batch]
            written.value = written.value | jax.nn.one_hot(decode_position, max_length, dtype=jnp.bool_)
            self_mask = written.value[:, None, None, :]  # [batch, 1, 1, max_length]
            key_positions = jnp.arange(max_length, dtype=jnp.int32)[None, :]
            self_bias = relpos(decode_position[:, None], key_positions, bidirectional=False)
            cross_mask = attention_mask(jnp.ones((batch, 1), jnp.bool_), encoder_valid)
        else:
            # T5X: padding comes from the targets, since decoder inputs start with the pad id (BOS = 0).
            mask_tokens = decoder_input_tokens if decoder_target_tokens is None else decoder_target_tokens
            valid = mask_tokens != cfg.pad_id
            positions = default_positions(decoder_input_tokens, decoder_positions)
            self_bias = relpos(positions, positions, bidirectional=False)
            self_mask = attention_mask(valid, valid, decoder_segment_ids, decoder_segment_ids, causal=True)
            cross_mask = attention_mask(valid, encoder_valid, decoder_segment_ids, encoder_segment_ids)

        y = nn.with_logical_constraint(self.shared_embedding(decoder_input_tokens), _EMBED_AXES)
        y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        y = apply_layer_stack(DecoderLayer, cfg, cfg.decoder_layers, y, encoded, self_mask, cross_mask,
                              self_bias, decode_position, deterministic=deterministic, decode=decode)
        y = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="decoder_norm")(y)
        y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        if cfg.tie_word_embeddings:
            # v1.0 / HF: (y * d_model**-0.5) @ E.T; scaled after the float32 matmul (same value, less rounding).
            logits = self.shared_embedding.attend(y) * (cfg.d_model ** -0.5)
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"), cfg.compute_dtype, out_dtype=jnp.float32,
                           name="logits_dense")(y)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class Transformer(nn.Module):
    """T5 encoder-decoder; see the module docstring for training and decoding calls."""

    config: T5Config

    def setup(self):
        self.token_embedder = Embed(self.config.vocab_size, self.config.d_model, self.config.compute_dtype)
        self.encoder = Encoder(self.config, self.token_embedder)
        self.decoder = Decoder(self.config, self.token_embedder)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
               enable_dropout: bool = False):
        """[batch, length] tokens -> [batch, length, embed] encoded (compute dtype)."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
               enable_dropout: bool = False, decode: bool = False):
        """Decoder logits [batch, length, vocab] float32. With `decode=True` and an initialised cache, takes
        one token per row ([batch, 1]) and appends it to the cache (apply with `mutable=["cache"]`)."""
        return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                            encoder_segment_ids, decoder_segment_ids, decoder_positions,
                            deterministic=not enable_dropout, decode=decode)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
                 decoder_positions=None, enable_dropout: bool = False, decode: bool = False):
        """Teacher-forced logits [batch, target_length, vocab] float32. `decode=True` here (inside `init`)
        creates the decode cache sized by `decoder_input_tokens`; see `init_decode_cache`."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                           encoder_segment_ids, decoder_segment_ids, decoder_positions, enable_dropout, decode)


def init_decode_cache(model: Transformer, batch_size: int, max_decode_length: int, encoder_length: int):
    """An empty decode cache (all zeros) for `batch_size` rows and up to `max_decode_length` steps.

    Shapes come from `jax.eval_shape`, so no parameters are materialised.
    """
    def init():
        return model.init(jax.random.key(0), jnp.ones((batch_size, encoder_length), jnp.int32),
                          jnp.ones((batch_size, max_decode_length), jnp.int32), decode=True)

    shapes = jax.eval_shape(init)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
