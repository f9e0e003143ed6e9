"""Decoder-only KV-cache generation: greedy and HF-exact beam search (`sbs_jax.model.search` owns the loops).

Prompts are left-padded `[batch, prompt_length]` tokens with a `valid` mask (`left_pad` builds both), as
HF's `generate` batches them: every row's last prompt token sits in the last column, so all rows step
together. The prompt minus its last token is written to the cache in one call; the search then feeds the
last prompt token as its first step. Outputs are `[batch, max_new_tokens]` int32: the generated tokens, EOS
included, 0 after EOS.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from sbs_jax.model import search
from sbs_jax.model.decoder.model import DecoderLM, init_decode_cache


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (tokens [batch, longest] int32, valid [batch, longest] bool), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad: every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), longest), pad_id, np.int32)
    valid = np.zeros((len(prompts), longest), np.bool_)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p):] = p
        valid[i, longest - len(p):] = True
    return tokens, valid


def _prefill(model: DecoderLM, params, tokens, valid, max_new_tokens: int):
    batch, prompt_length = tokens.shape
    cache = init_decode_cache(model, batch, prompt_length + max_new_tokens)
    if prompt_length > 1:
        _, mutated = model.apply({"params": params, "cache": cache}, tokens[:, :-1], valid[:, :-1], decode=True,
                                 mutable=["cache"])
        cache = mutated["cache"]
    return cache


def _step_fn(model: DecoderLM, params):
    def step(cache, tokens):
        logits, mutated = model.apply({"params": params, "cache": cache}, tokens[:, None], decode=True,
                                      mutable=["cache"])
        return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), mutated["cache"]
    return step


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_ids"))
def greedy_decode(model: DecoderLM, params, tokens, valid, *, max_new_tokens: int,
                  eos_ids: Optional[tuple] = None):
    """Argmax continuation of left-padded prompts (HF `generate(num_beams=1, do_sample=False)`)."""
    eos_ids = tuple(eos_ids or model.config.eos_ids)
    cache = _prefill(model, params, tokens, valid, max_new_tokens)
    return search.greedy(_step_fn(model, params), cache, tokens[:, -1], max_length=max_new_tokens,
                         eos_ids=eos_ids)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_beams", "length_penalty", "eos_ids",
                                             "early_stopping"))
def beam_search(model: DecoderLM, params, tokens, valid, *, max_new_tokens: int, num_beams: int = 4,
                length_penalty: float = 1.0, eos_ids: Optional[tuple] = None,
                early_stopping: Union[bool, str] = False):
    """HF-exact beam search over left-padded prompts -> best continuation per row, [batch, max_new_tokens]."""
    eos_ids = tuple(eos_ids or model.config.eos_ids)
    cache = _prefill(model, params, tokens, valid, max_new_tokens)
    # The prompt is written once per example; its cache is repeated for each beam.
    cache = jax.tree.map(lambda c: jnp.repeat(c, num_beams, axis=0), cache)
    return search.beam(_step_fn(model, params), cache, tokens[:, -1], num_beams=num_beams,
                       max_length=max_new_tokens, eos_ids=eos_ids, length_penalty=length_penalty,
                       early_stopping=early_stopping)
