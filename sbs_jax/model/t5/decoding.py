"""T5 KV-cache decoding: greedy and beam search, jit-compiled with static lengths.

Both run the encoder once, then one decoder step per generated token (`sbs_jax.model.search` owns the
loops and their HF-exact beam semantics). Outputs are `[batch, max_decode_length]` int32: the generated
tokens (no decoder start token), EOS included, 0 after EOS.
"""
from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp

from sbs_jax.model import search
from sbs_jax.model.t5.model import Transformer, init_decode_cache


def _step_fn(model: Transformer, params, encoded, encoder_input_tokens):
    def step(cache, tokens):
        """tokens [rows] -> (log-probs [rows, vocab] float32, new cache)."""
        logits, mutated = model.apply({"params": params, "cache": cache}, encoded, encoder_input_tokens,
                                      tokens[:, None], decode=True, method=Transformer.decode, mutable=["cache"])
        return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), mutated["cache"]
    return step


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "eos_id"))
def greedy_decode(model: Transformer, params, encoder_input_tokens, *, max_decode_length: int, eos_id: int = 1,
                  encoder_segment_ids=None):
    """Argmax decoding (HF `generate(num_beams=1, do_sample=False)`) -> [batch, max_decode_length] int32.

    `encoder_segment_ids` only restricts encoder self-attention (packed inputs); cross-attention sees every
    non-pad input position, as at inference there is one example per row.
    """
    cfg = model.config
    batch, enc_len = encoder_input_tokens.shape
    encoded = model.apply({"params": params}, encoder_input_tokens, encoder_segment_ids, method=Transformer.encode)
    cache = init_decode_cache(model, batch, max_decode_length, enc_len)
    start = jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32)
    return search.greedy(_step_fn(model, params, encoded, encoder_input_tokens), cache, start,
                         max_length=max_decode_length, eos_ids=(eos_id,), pad_id=cfg.pad_id)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "num_beams", "length_penalty",
                                             "eos_id", "early_stopping"))
def beam_search(model: Transformer, params, encoder_input_tokens, *, max_decode_length: int, num_beams: int = 4,
                length_penalty: float = 1.0, eos_id: int = 1, early_stopping: Union[bool, str] = False):
    """HF-exact beam search (see `sbs_jax.model.search`) -> best hypothesis per row, [batch, max_decode_length]."""
    cfg = model.config
    batch, enc_len = encoder_input_tokens.shape
    encoded = model.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)
    # The encoder runs once per example; its output is repeated for each beam.
    encoded = jnp.repeat(encoded, num_beams, axis=0)  # [batch * beams, enc_len, embed]
    enc_tokens = jnp.repeat(encoder_input_tokens, num_beams, axis=0)
    cache = init_decode_cache(model, batch * num_beams, max_decode_length, enc_len)
    start = jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32)
    return search.beam(_step_fn(model, params, encoded, enc_tokens), cache, start, num_beams=num_beams,
                       max_length=max_decode_length, eos_ids=(eos_id,), length_penalty=length_penalty,
                       early_stopping=early_stopping)
