"""Length-bucketed decoding: the plan, and predictions identical to full-length padding, in the original order."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax import partitioning
from sbs_jax.data import schema
from sbs_jax.model import T5Config, Transformer
from sbs_jax.train import decode_batching, evaluation

VOCAB, FULL, BATCH = 40, 72, 8


class _CharVocab:
    """Characters <-> ids 2.. (0 pad, 1 EOS): enough vocabulary for decoding and the `explain:` inputs."""
    pad_id, eos_id = 0, 1

    def encode(self, text):
        return [2 + ord(c) % (VOCAB - 2) for c in text]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module")
def tiny():
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1,
                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dtype="float32")
    model = Transformer(config)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), dummy, dummy)["params"])
    # Random models rarely emit EOS; boost it so rows finish at different steps.
    kernel = params["decoder"]["logits_dense"]["kernel"]
    params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, 1].multiply(2.0)
    mesh, rules = partitioning.make_mesh(data=-1, model=1), partitioning.get_rules("data_parallel")
    return model, params, mesh, rules


def _split(num=37, seed=0):
    """`get_eval_examples`-style examples with input lengths 3..FULL (EOS-terminated)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, FULL + 1, num)
    lengths[:3] = (FULL, 3, 17)  # the extremes and a length just past a bucket
    tokens = np.zeros((num, FULL), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n - 1] = rng.integers(2, VOCAB, n - 1)
        tokens[i, n - 1] = 1
    texts = np.array([f"question {i} " + "x" * int(n // 4) for i, n in enumerate(lengths)], dtype=object)
    golds = np.array([str(i) for i in range(num)], dtype=object)
    examples = schema.EvalExamples(encoder_input_tokens=tokens, inputs=texts, targets=golds,
                                   rationales=np.full((num,), "", dtype=object))
    return examples, lengths


def test_plan_covers_every_row_once_in_few_shapes():
    assert decode_batching.bucket_lengths(72) == (16, 32, 64, 72)
    assert decode_batching.bucket_lengths(512) == (16, 32, 64, 128, 256, 512)
    assert decode_batching.bucket_lengths(16) == (16,) and decode_batching.bucket_lengths(10) == (10,)
    lengths = np.array([5, 70, 16, 17, 3, 64, 33, 2, 40])
    plan = decode_batching.plan_batches(lengths, 4, decode_batching.bucket_lengths(72), 72)
    rows = np.concatenate([b.rows for b in plan])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert [lengths[b.rows].tolist() for b in plan] == [[2, 3, 5, 16], [17, 33, 40, 64], [70]]
    assert [b.length for b in plan] == [16, 64, 72]
    # Without buckets: the original order at the full length.
    plain = decode_batching.plan_batches(lengths, 4, None, 72)
    assert [b.rows.tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]] and {b.length for b in plain} == {72}
    tokens = np.array([[5, 6, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [4, 4, 4, 4, 1]])
    assert decode_batching.row_lengths(tokens).tolist() == [3, 1, 0, 5]
    with pytest.raises(ValueError, match="more than the full length"):
        decode_batching.plan_batches(np.array([80]), 4, (16, 72), 72)


def test_bucketed_predictions_equal_full_padding_in_original_order(tiny):
    model, params, mesh, rules = tiny
    examples, lengths = _split()
    results, decoders = {}, {}
    for bucketed in (False, True):
        decoder = evaluation.Decoder(model, mesh, rules, evaluation.DecodeConfig(length_sorted_batches=bucketed))
        results[bucketed] = evaluation.predict_split(decoder, params, _CharVocab(), examples, batch_size=BATCH,
                                                     target_length=6, rationale_length=5)
        decoders[bucketed] = decoder
    plain, bucketed = results[False], results[True]
    assert len(bucketed) == len(lengths) == 37
    # Same predictions and rationales (greedy decoding is deterministic), rows in the split's order.
    assert bucketed == plain
    assert [r["gold"] for r in bucketed] == [str(i) for i in range(37)]
    assert len({r["prediction"] for r in bucketed}) > 5  # the rows really differ
    # Shapes: full padding compiles one per decode length; bucketing at most one per bucket, and uses short ones.
    assert decoders[False].shapes == {(BATCH, FULL, 6), (BATCH, FULL, 5)}
    label_shapes = {s for s in decoders[True].shapes if s[2] == 6}
    assert len(label_shapes) <= len(decode_batching.bucket_lengths(FULL)) and min(s[1] for s in label_shapes) == 16
    assert decoders[True]._fns[6]._cache_size() == len(label_shapes)


def test_max_examples_decodes_the_first_rows(tiny):
    model, params, mesh, rules = tiny
    examples, _ = _split()
    decoder = evaluation.Decoder(model, mesh, rules, evaluation.DecodeConfig())
    rows = evaluation.predict_split(decoder, params, _CharVocab(), examples, batch_size=BATCH, target_length=4,
                                    max_examples=11)
    assert [r["gold"] for r in rows] == [str(i) for i in range(11)]


def test_shorter_bucket_gives_the_same_logits(tiny):
    model, params, _, _ = tiny
    examples, lengths = _split()
    tokens = examples.encoder_input_tokens
    short = np.flatnonzero(lengths <= 32)[:BATCH]
    rng = np.random.default_rng(1)
    targets = rng.integers(2, VOCAB, (len(short), 6)).astype(np.int32)
    decoder_inputs = np.pad(targets[:, :-1], [(0, 0), (1, 0)])  # shifted right, start token 0
    forward = jax.jit(model.apply)
    full = forward({"params": params}, tokens[short], decoder_inputs, targets)
    cut = forward({"params": params}, tokens[short, :32], decoder_inputs, targets)
    # Padding keys are masked out of encoder self-attention and cross-attention, and relative positions only
    # depend on the distance between real tokens: cutting padding changes nothing but summation lengths.
    np.testing.assert_allclose(np.asarray(cut), np.asarray(full), rtol=0, atol=2e-5)
    assert np.array_equal(np.argmax(cut, -1), np.argmax(full, -1))
