"""Greedy and beam search over any model's one-token step, inside a `lax.while_loop` that exits as soon as
every row is finished. The families' decoding modules (`t5/decoding.py`, `decoder/decoding.py`) build the
step function and the first tokens; this module owns the search itself.

`step(cache, tokens [rows]) -> (log-probs [rows, vocab] float32, cache)` appends one position per row; every
cache leaf has rows as its leading axis (beam search reorders rows by gathering along it). Outputs are
`[batch, max_length]` int32: the generated tokens, EOS included, 0 after EOS.

Beam search reproduces HF `transformers` `generate(num_beams=K, do_sample=False)` (5.x `_beam_search`):
- each step keeps the top 2K (beam, token) continuations by accumulated log-probability;
- the best K that did not just finish continue; a continuation that ends in EOS (or reaches the maximum
  length) becomes a finished hypothesis only if it ranks within the top K of the 2K, and is scored
  `sum_logprobs / generated_length ** length_penalty`, with generated_length counting the EOS and not the
  prompt (HF's `cur_len + 1 - decoder_prompt_len`);
- per row the K best finished hypotheses are kept; a row stops accepting new ones once the early-stop
  heuristic says no running beam can beat its worst finished hypothesis (early_stopping=False: the best
  running beam's score divided by the current length; "never": by the maximum length when
  length_penalty > 0; True: stop as soon as K hypotheses are finished);
- the answer is the best finished hypothesis.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

# HF's "minus infinity" for beams that may not be chosen. Finite and in float32, so -1e9 + a log-prob
# rounds to -1e9 exactly as it does in torch: keeping the same constant keeps tie-breaking the same.
_NEG = -1.0e9

Step = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


def _is_eos(tokens, eos_ids: Sequence[int]):
    return jnp.isin(tokens, jnp.asarray(tuple(eos_ids), jnp.int32))


def greedy(step: Step, cache, first_tokens, *, max_length: int, eos_ids: Sequence[int], pad_id: int = 0):
    """Argmax decoding (HF `generate(num_beams=1, do_sample=False)`): first_tokens [batch] -> [batch, max_length]."""
    batch = first_tokens.shape[0]

    def cond(state):
        index, _, _, _, done = state
        return (index < max_length) & ~jnp.all(done)

    def body(state):
        index, out, cache, prev, done = state
        log_probs, cache = step(cache, prev)
        token = jnp.where(done, pad_id, jnp.argmax(log_probs, axis=-1).astype(jnp.int32))  # [batch]
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, index))
        return index + 1, out, cache, token, done | _is_eos(token, eos_ids)

    out = jnp.zeros((batch, max_length), jnp.int32)
    state = (jnp.int32(0), out, cache, first_tokens.astype(jnp.int32), jnp.zeros((batch,), jnp.bool_))
    return jax.lax.while_loop(cond, body, state)[1]


class BeamState(NamedTuple):
    """The loop state of `beam` (a pytree: jax.lax.while_loop carries it)."""
    step: jax.Array             # [] int32: tokens generated so far
    running: jax.Array          # [batch, beams, length] int32: the live hypotheses
    running_scores: jax.Array   # [batch, beams] float32: their summed log-probabilities
    finished: jax.Array         # [batch, beams, length] int32: the best finished hypotheses so far
    finished_scores: jax.Array  # [batch, beams] float32: their length-penalised scores
    is_finished: jax.Array      # [batch, beams] bool: which slots of `finished` hold a hypothesis
    unsatisfied: jax.Array      # [batch] bool: a running beam may still beat the worst finished one
    cache: Any                  # the model's KV cache, [batch * beams, ...] leaves
    go_on: jax.Array            # [] bool: whether another step is needed


def _gather_beams(x, index):
    """x [batch, beams, ...], index [batch, k] -> [batch, k, ...]."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam(step: Step, cache, first_tokens, *, num_beams: int, max_length: int, eos_ids: Sequence[int],
         length_penalty: float = 1.0, early_stopping: Union[bool, str] = False):
    """HF-exact beam search -> best hypothesis per row, [batch, max_length] int32.

    `cache` has batch * num_beams rows (row b * num_beams + j is beam j of example b); first_tokens [batch].
    """
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    batch = first_tokens.shape[0]
    k, length = num_beams, max_length
    rows = batch * k
    top_k_mask = jnp.arange(2 * k) < k  # only the top K of the 2K candidates may finish a hypothesis
    batch_offset = (jnp.arange(batch) * k)[:, None]
    first = jnp.repeat(first_tokens.astype(jnp.int32), k)  # [rows]

    def body(state: BeamState) -> BeamState:
        step_index, running, running_scores = state.step, state.running, state.running_scores
        finished_scores, is_finished, unsatisfied = state.finished_scores, state.is_finished, state.unsatisfied
        previous = jax.lax.dynamic_index_in_dim(running, jnp.maximum(step_index - 1, 0), axis=2, keepdims=False)
        prev = jnp.where(step_index == 0, first, previous.reshape(rows))
        log_probs, cache = step(state.cache, prev)
        vocab = log_probs.shape[-1]
        scores = (log_probs.reshape(batch, k, vocab) + running_scores[:, :, None]).reshape(batch, k * vocab)
        # Top 2K continuations over all beams of a row.
        topk_scores, topk_index = jax.lax.top_k(scores, 2 * k)  # [batch, 2K]
        topk_beam = topk_index // vocab
        topk_token = (topk_index % vocab).astype(jnp.int32)
        topk_seqs = _gather_beams(running, topk_beam)  # [batch, 2K, length]
        topk_seqs = jax.lax.dynamic_update_slice_in_dim(topk_seqs, topk_token[:, :, None], step_index, axis=2)
        hits = _is_eos(topk_token, eos_ids) | (step_index + 1 >= length)  # EOS or maximum length reached

        # Running beams for the next step: the best K continuations that did not just finish.
        next_scores, next_index = jax.lax.top_k(topk_scores + hits.astype(jnp.float32) * _NEG, k)
        next_running = _gather_beams(topk_seqs, next_index)
        source_beam = _gather_beams(topk_beam, next_index)  # [batch, K]: which old beam each one extends

        # Finished hypotheses: merge the newly finished (top-K-ranked) ones and keep the best K.
        just_finished = hits & top_k_mask[None, :]
        new_scores = topk_scores / jnp.power(jnp.float32(1.0) * (step_index + 1), jnp.float32(length_penalty))
        if early_stopping is True:
            new_scores += jnp.all(is_finished, axis=1, keepdims=True).astype(jnp.float32) * _NEG
        new_scores += (~unsatisfied).astype(jnp.float32)[:, None] * _NEG
        new_scores += (~just_finished).astype(jnp.float32) * _NEG
        merged_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        keep_scores, keep = jax.lax.top_k(merged_scores, k)
        finished = _gather_beams(jnp.concatenate([state.finished, topk_seqs], axis=1), keep)
        is_finished = _gather_beams(jnp.concatenate([is_finished, just_finished], axis=1), keep)

        cache = jax.tree.map(lambda c: jnp.take(c, (source_beam + batch_offset).reshape(rows), axis=0), cache)

        # Can a running beam still beat the worst finished hypothesis? (HF `_check_early_stop_heuristic`)
        generated = step_index + 1
        best_length = length if (early_stopping == "never" and length_penalty > 0.0) else generated
        best_running = next_scores[:, 0] / jnp.power(jnp.float32(1.0) * best_length, jnp.float32(length_penalty))
        worst_finished = jnp.where(is_finished, jnp.min(keep_scores, axis=1, keepdims=True), _NEG)
        unsatisfied = unsatisfied & jnp.any(best_running[:, None] > worst_finished, axis=1)
        go_on = jnp.any(unsatisfied) & ~jnp.all(hits)
        if early_stopping is True:
            go_on &= ~jnp.all(is_finished)
        return BeamState(step=generated, running=next_running, running_scores=next_scores, finished=finished,
                         finished_scores=keep_scores, is_finished=is_finished, unsatisfied=unsatisfied,
                         cache=cache, go_on=go_on)

    # Only beam 0 is live at the start, so the first step does not pick K copies of the same token.
    running_scores = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(_NEG)
    seqs = jnp.zeros((batch, k, length), jnp.int32)
    state = BeamState(step=jnp.int32(0), running=seqs, running_scores=running_scores, finished=seqs,
                      finished_scores=jnp.full((batch, k), _NEG, jnp.float32),
                      is_finished=jnp.zeros((batch, k), jnp.bool_), unsatisfied=jnp.ones((batch,), jnp.bool_),
                      cache=cache, go_on=jnp.bool_(True))
    state = jax.lax.while_loop(lambda s: s.go_on & (s.step < length), body, state)
    best = state.finished[:, 0]  # [batch, length]
    # Tokens after the first EOS are 0 (the hypothesis buffers are zero-initialised; this makes it explicit).
    ends = _is_eos(best, eos_ids)
    after_eos = jnp.cumsum(ends, axis=1) - ends > 0
    return jnp.where(after_eos, 0, best)
