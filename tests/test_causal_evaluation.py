"""Decoder-only evaluation: prompts are exactly the training rows' prompt part; generations equal a naive argmax
loop over the full forward pass (no cache); parsed labels are scored."""
import jax
import jax.numpy as jnp
import numpy as np

from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm
from sbs_jax.model.decoder import DecoderConfig, DecoderLM
from sbs_jax.train import causal_evaluation

SRC_EOS, BOS, NEW = 1, 5, 5


class WordVocab:
    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


def naive_greedy(forward, params, prompt, steps, eos, width=16):
    """Full forward passes over the sequence so far (right-padded to one width: causal attention keeps the
    padding out of the last real position's logits)."""
    seq = list(prompt)
    out = []
    for _ in range(steps):
        logits = forward(params, jnp.asarray([seq + [0] * (width - len(seq))], jnp.int32))
        t = int(jnp.argmax(logits[0, len(seq) - 1]))
        out.append(t)
        if t == eos:
            break
        seq.append(t)
    return out


def test_prompts_match_training_rows_and_generation_matches_naive_loop():
    config = DecoderConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_ids=(SRC_EOS,), bos_id=BOS,
                           dtype="float32")
    model = DecoderLM(config)
    params = model.init(jax.random.key(1), jnp.ones((1, 4), jnp.int32))["params"]
    params = jax.tree.map(lambda p: p * 4.0 if p.ndim == 2 else p, params)  # peaked logits: varied tokens
    rows = np.array([[7, 8, 9, 10, SRC_EOS, 0], [7, 11, SRC_EOS, 0, 0, 0], [12, 13, 14, 15, 16, SRC_EOS]], np.int32)
    layout = causal_lm.CausalLayout(schema.MULTITASK, eos_id=SRC_EOS, bos_id=BOS, source_eos_id=SRC_EOS)
    examples = schema.EvalExamples(rows, np.array(["a", "b", "c"], object), np.array(["?", "?", "?"], object),
                                   np.array(["", "", ""], object))
    prompts = causal_evaluation.prompts(examples.encoder_input_tokens, layout)
    for row, prompt in zip(rows, prompts):
        n = int(np.flatnonzero(row == SRC_EOS)[0]) + 1
        parts = causal_lm.example_parts({"inputs": row[:n], "targets": np.array([20, SRC_EOS])}, layout, paired=False)
        trained_prompt = [int(t) for tokens, weight, _ in parts["label"] if weight == 0 for t in tokens]
        assert prompt == trained_prompt
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    expected = [naive_greedy(forward, params, p, NEW, SRC_EOS) for p in prompts]
    texts = [WordVocab().decode([t for t in e if t != SRC_EOS]) for e in expected]
    examples = schema.EvalExamples(rows, examples.inputs, np.array([texts[0], "nope", texts[2]], object),
                                   examples.rationales)
    result, out = causal_evaluation.predict_split(model, params, WordVocab(), examples, layout,
                                                  metric="exact_match", batch_size=2, max_new_tokens=NEW)
    assert [r["generation"] for r in out] == texts
    assert len(set(texts)) > 1
    assert result == {"accuracy": 200 / 3, "parse_failures": 0.0, "num_examples": 3.0}


def test_label_first_stops_after_the_label_unless_the_rationale_is_wanted():
    from sbs_jax.data.input_pipeline import causal_lm
    from sbs_jax.model.decoder import presets

    config = presets.get_config("llama_tiny", eos_ids=(1, 7))
    marker = (40, 41, 42)
    layout = causal_lm.CausalLayout("label_first", eos_id=1, bos_id=2, source_eos_id=1, marker=marker)
    assert causal_evaluation.stop_ids(config, layout, label_only=True) == (1, 7, 40)
    assert causal_evaluation.stop_ids(config, layout, label_only=False) == (1, 7)
    other = causal_lm.CausalLayout("rationale_first", eos_id=1, bos_id=2, source_eos_id=1, marker=marker)
    assert causal_evaluation.stop_ids(config, other, label_only=True) == (1, 7)  # its label comes last
    # The marker token ends the label; text after it (none was generated) and the marker itself are not kept.
    assert causal_evaluation.cut_at_stop([5, 6, 40, 0, 0], (1, 7, 40), 1) == [5, 6, 1]
    assert causal_evaluation.cut_at_stop([5, 6, 7, 0], (1, 7, 40), 1) == [5, 6, 1]
    assert causal_evaluation.cut_at_stop([5, 6], (1, 7, 40), 1) == [5, 6]
