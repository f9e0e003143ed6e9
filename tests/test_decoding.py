"""KV-cache decoding checked against cache-free recomputation and for batch independence.

(Token-for-token agreement with HF `generate` is in test_hf_parity.py.)
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax.model import T5Config, Transformer
from sbs_jax.model.t5 import decoding

VOCAB, LENGTH = 48, 8


@functools.lru_cache(maxsize=None)
def _init(dtype):
    """(model, jitted init): one compile per dtype for the whole module."""
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dtype=dtype)
    model = Transformer(config)
    return model, jax.jit(model.init)


def _model_and_params(dtype="float32", seed=0):
    model, init = _init(dtype)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.meta.unbox(init(jax.random.key(seed), dummy, dummy)["params"])
    # Boost the EOS output column so some rows finish early (random models rarely emit EOS).
    kernel = params["decoder"]["logits_dense"]["kernel"]
    params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, 1].multiply(2.0).at[:, 0].multiply(0.1)
    return model, params


def _inputs(seed=0, batch=6, length=10):
    rng = np.random.default_rng(seed)
    x = rng.integers(2, VOCAB, (batch, length)).astype(np.int32)
    for i, n in enumerate(rng.integers(3, length + 1, batch)):
        x[i, n - 1], x[i, n:] = 1, 0
    return x


def _reference_greedy(model, params, inputs, eos_id=1):
    """Argmax decoding by recomputing the whole decoder every step (no cache)."""
    forward = jax.jit(model.apply)
    out = np.zeros((len(inputs), LENGTH), np.int32)
    done = np.zeros(len(inputs), bool)
    for t in range(LENGTH):
        decoder_inputs = np.concatenate([np.zeros((len(inputs), 1), np.int32), out[:, :-1]], axis=1)
        logits = np.asarray(forward({"params": params}, inputs, decoder_inputs, np.ones_like(decoder_inputs)))
        token = np.where(done, 0, logits[:, t].argmax(-1))
        out[:, t] = token
        done |= token == eos_id
    return out


def test_greedy_with_cache_equals_recomputation():
    model, params = _model_and_params()
    inputs = _inputs()
    ours = np.asarray(decoding.greedy_decode(model, params, jnp.asarray(inputs), max_decode_length=LENGTH))
    ref = _reference_greedy(model, params, inputs)
    np.testing.assert_array_equal(ours, ref)
    lengths = [int(np.argmax(r == 1)) + 1 if (r == 1).any() else LENGTH for r in ref]
    assert len(set(lengths)) > 1 and len({tuple(r) for r in ref}) > 3  # non-trivial outputs


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_rows_decode_independently_of_batch_and_padding(search):
    model, params = _model_and_params()
    inputs = _inputs(1)

    def run(x):
        if search == "greedy":
            return np.asarray(decoding.greedy_decode(model, params, jnp.asarray(x), max_decode_length=LENGTH))
        return np.asarray(decoding.beam_search(model, params, jnp.asarray(x), max_decode_length=LENGTH, num_beams=3))

    together = run(inputs)
    # More padding on every row, and the rows in another order: same tokens per row.
    padded = np.concatenate([inputs, np.zeros((len(inputs), 5), np.int32)], axis=1)
    np.testing.assert_array_equal(run(padded), together)
    np.testing.assert_array_equal(run(inputs[::-1])[::-1], together)


def test_beam_search_output_format_and_scores_beat_greedy_on_average():
    model, params = _model_and_params(seed=1)
    inputs = jnp.asarray(_inputs(2))
    beams = np.asarray(decoding.beam_search(model, params, inputs, max_decode_length=LENGTH, num_beams=4))
    greedy = np.asarray(decoding.greedy_decode(model, params, inputs, max_decode_length=LENGTH))
    assert beams.shape == greedy.shape == (6, LENGTH) and beams.dtype == np.int32
    for row in beams:  # EOS included, 0 after it
        if (row == 1).any():
            assert not row[int(np.argmax(row == 1)) + 1:].any()

    def normalised_log_prob(tokens):
        decoder_inputs = np.concatenate([np.zeros((len(tokens), 1), np.int32), tokens[:, :-1]], axis=1)
        logits = jax.jit(model.apply)({"params": params}, inputs, decoder_inputs, np.ones_like(decoder_inputs))
        log_probs = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[..., None], -1)[..., 0]
        lengths = np.array([int(np.argmax(r == 1)) + 1 if (r == 1).any() else LENGTH for r in tokens])
        mask = np.arange(LENGTH)[None] < lengths[:, None]
        return (log_probs * mask).sum(1) / lengths

    # Beam search maximises the length-normalised score approximately: never worse on average than greedy.
    assert normalised_log_prob(beams).mean() >= normalised_log_prob(greedy).mean()


@pytest.mark.parametrize("length_penalty", [-0.5, 1.0])
def test_beam_search_as_wide_as_the_vocabulary_finds_the_exact_best(length_penalty):
    """With num_beams = vocabulary size and two decode steps, beam search sees every hypothesis: its answer must
    be the exhaustive best of `sum log p / length ** length_penalty` over `[EOS]` and every `[x, y]` (x != EOS)."""
    model, params = _model_and_params(seed=1)
    inputs = _inputs(4)
    beams = np.asarray(decoding.beam_search(model, params, jnp.asarray(inputs), max_decode_length=2,
                                            num_beams=VOCAB, length_penalty=length_penalty))
    batch = len(inputs)
    # Every first token x, as decoder input [0, x]: log p(x) at step 0 and log p(y | x) at step 1.
    first = np.arange(VOCAB, dtype=np.int32)
    dec_in = np.stack([np.zeros(VOCAB, np.int32), first], axis=1)  # [vocab, 2]
    enc = np.repeat(inputs, VOCAB, axis=0)  # [batch * vocab, length]
    logits = jax.jit(model.apply)({"params": params}, enc, np.tile(dec_in, (batch, 1)),
                                  np.ones((batch * VOCAB, 2), np.int32))
    log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32))).reshape(batch, VOCAB, 2, VOCAB)
    for row in range(batch):
        step0 = log_probs[row, 0, 0]  # [vocab]: the same for every x
        two = (step0[:, None] + log_probs[row, :, 1]) / 2.0 ** length_penalty  # [x, y]
        two[1] = -np.inf  # x = EOS ends the hypothesis at length 1
        x, y = np.unravel_index(np.argmax(two), two.shape)
        expected = [1, 0] if step0[1] > two[x, y] else [x, y]
        assert beams[row].tolist() == expected, (row, beams[row], expected)
    assert len({tuple(r) for r in beams.tolist()}) > 1  # the rows' answers differ
    if length_penalty < 0:  # favours short answers: here one row's best is to stop at once, the others' not
        assert [1, 0] in beams.tolist() and any(r != [1, 0] for r in beams.tolist())


def test_bfloat16_decoding_runs_and_is_well_formed():
    model, params = _model_and_params(dtype="bfloat16")
    inputs = _inputs(3)
    out = np.asarray(decoding.greedy_decode(model, params, jnp.asarray(inputs), max_decode_length=LENGTH))
    assert out.dtype == np.int32 and out.shape == (6, LENGTH) and ((out >= 0) & (out < VOCAB)).all()
    assert out[:, 0].any()
    # The cached bfloat16 decode is the argmax decode of the same bfloat16 model recomputed without a cache.
    np.testing.assert_array_equal(out, _reference_greedy(model, params, inputs))


def test_invalid_early_stopping_is_rejected():
    model, params = _model_and_params()
    with pytest.raises(ValueError, match="early_stopping must be True, False or 'never'"):
        decoding.beam_search(model, params, jnp.asarray(_inputs()), max_decode_length=LENGTH, early_stopping="yes")
