"""`multitask_shared_prompt`: one tree-shaped row per example (`[BOS] x | label-prefix label EOS | explain-prefix
rationale EOS`, branch-masked attention) gives the losses and gradients of the two plain sequences
`[BOS] x label-prefix label EOS` and `[BOS] x explain-prefix rationale EOS` (the `multitask` step over rows with
the same prefix placement), for tiny random Llama / Qwen2 / Gemma 1-3 configs, sliding windows included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoder_cases as cases
from causal_cases import BOS, EOS, FEATURE_LENGTHS, SRC_EOS, random_examples
from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm
from sbs_jax.data.scoring import causal_labels
from sbs_jax.model.decoder import DecoderConfig, DecoderLM
from sbs_jax.model.decoder.model import branch_mask
from sbs_jax.train import causal_evaluation, causal_objective
from sbs_jax.train.objective import ObjectiveConfig

LABEL_PREFIX, RATIONALE_PREFIX = (11,), (12,)  # what causal_cases' inputs / rationale_inputs start with
SHARED = schema.MULTITASK_SHARED_PROMPT


def shared_layout(bos=BOS, label_prefix=LABEL_PREFIX, rationale_prefix=RATIONALE_PREFIX):
    return causal_lm.CausalLayout(SHARED, eos_id=EOS, bos_id=bos, source_eos_id=SRC_EOS,
                                  label_prefix=label_prefix, rationale_prefix=rationale_prefix)


def prefix_after_input(ex, label_prefix=LABEL_PREFIX, rationale_prefix=RATIONALE_PREFIX):
    """The example with each stream's prefix moved after the input: its `multitask` rows are the two plain
    sequences the tree row must reproduce."""
    out = dict(ex)
    for key, prefix in (("inputs", label_prefix), ("rationale_inputs", rationale_prefix)):
        tokens = np.asarray(ex[key])
        out[key] = np.concatenate([tokens[len(prefix):-1], prefix, tokens[-1:]])
    return out


def config_of(case: str) -> DecoderConfig:
    d = dict(cases.CASES[case])
    return DecoderConfig.from_hf_dict({**d, "vocab_size": cases.VOCAB, "bos_token_id": 1, "eos_token_id": EOS,
                                       "pad_token_id": 0}, dtype="float32")


def test_branch_mask():
    # prompt (2 tokens) | branch 1 (2) | branch 2 (3) | padding
    ids = jnp.array([[0, 0, 1, 1, 2, 2, 2, 0]])
    expected = np.array([[1, 1, 0, 0, 0, 0, 0, 1],
                         [1, 1, 0, 0, 0, 0, 0, 1],
                         [1, 1, 1, 1, 0, 0, 0, 1],
                         [1, 1, 1, 1, 0, 0, 0, 1],
                         [1, 1, 0, 0, 1, 1, 1, 1],
                         [1, 1, 0, 0, 1, 1, 1, 1],
                         [1, 1, 0, 0, 1, 1, 1, 1],
                         [1, 1, 0, 0, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(np.asarray(branch_mask(ids))[0, 0], expected)


@pytest.mark.parametrize("bos", [BOS, None])
def test_tree_rows_hold_both_sequences(bos):
    layout = shared_layout(bos)
    examples = random_examples(3, n=4)
    lengths = layout.row_lengths(FEATURE_LENGTHS, True)
    rows = causal_lm.causal_rows(examples, layout, paired=True, lengths=lengths)[schema.SEQUENCE]
    plain_layout = causal_lm.CausalLayout(schema.MULTITASK, eos_id=EOS, bos_id=bos, source_eos_id=SRC_EOS)
    plain = causal_lm.causal_rows([prefix_after_input(ex) for ex in examples], plain_layout, paired=True,
                                  lengths=plain_layout.row_lengths(FEATURE_LENGTHS, True))
    assert set(rows) == set(schema.CAUSAL_KEYS) | {schema.DECODER_BRANCH_IDS}
    for i, ex in enumerate(examples):
        branch = rows[schema.DECODER_BRANCH_IDS][i]
        valid = rows[schema.DECODER_VALID][i] > 0
        prompt = (branch == 0) & valid
        x = ex["inputs"][1:-1].tolist()
        assert rows[schema.DECODER_TOKENS][i][prompt].tolist() == ([] if bos is None else [bos]) + x
        for stream in schema.STREAMS:
            # The prompt's slots then the branch's: exactly the plain sequence's row (except the last prompt
            # slot's target, an unweighted prompt target shared by both branches).
            mine = prompt | (branch == schema.STREAM_IDS[stream])
            theirs = plain[stream][schema.DECODER_VALID][i] > 0
            for key in (schema.DECODER_TOKENS, schema.DECODER_POSITIONS, schema.DECODER_LOSS_WEIGHTS,
                        schema.DECODER_STREAM_IDS):
                assert rows[key][i][mine].tolist() == plain[stream][key][i][theirs].tolist(), (stream, key)
            targets = rows[schema.DECODER_TARGET_TOKENS][i][mine]
            expected = plain[stream][schema.DECODER_TARGET_TOKENS][i][theirs]
            n = int(prompt.sum())
            assert targets[n:].tolist() == expected[n:].tolist() and targets[:n - 1].tolist() == expected[:n - 1].tolist()
        # Row length: the prompt once, then each branch (a two-sequence batch holds the prompt twice).
        assert valid.sum() == sum((plain[s][schema.DECODER_VALID][i] > 0).sum() for s in schema.STREAMS) - prompt.sum()


def test_empty_prefix_repeats_the_last_prompt_token():
    # With no label prefix the last prompt slot would predict the label's first token (weighted) in one branch
    # and the explain prefix in the other: each branch then repeats the last prompt token.
    layout = shared_layout(label_prefix=())
    ex = random_examples(4, n=1)[0]
    ex = {**ex, "inputs": ex["inputs"][1:]}
    rows = causal_lm.causal_rows([ex], layout, paired=True, lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    rows = rows[schema.SEQUENCE]
    x = ex["inputs"][:-1].tolist()
    branch, tokens = rows[schema.DECODER_BRANCH_IDS][0], rows[schema.DECODER_TOKENS][0]
    assert tokens[branch == 0].tolist()[:len(x)] == [BOS] + x[:-1]
    assert tokens[branch == 1].tolist()[0] == x[-1] and tokens[branch == 2].tolist()[0] == x[-1]
    assert rows[schema.DECODER_POSITIONS][0][branch == 1][0] == len(x)  # BOS is position 0


def test_label_prompt_bad_inputs_and_parsing():
    layout = shared_layout()
    assert causal_lm.label_prompt(layout, [11, 5, 6, 7]) == [BOS, 5, 6, 7, 11]
    plain = causal_lm.CausalLayout(schema.MULTITASK, eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS)
    assert causal_lm.label_prompt(plain, [11, 5, 6, 7]) == [BOS, 11, 5, 6, 7]
    # Evaluation generates from it (the label-stream inputs as EvalExamples hold them: prefix first, EOS, padding).
    held = schema.EvalExamples(np.array([[11, 5, 6, 7, SRC_EOS, 0], [11, 8, SRC_EOS, 0, 0, 0]]), None, None, None)
    assert causal_evaluation.prompts(held.encoder_input_tokens, layout) == [[BOS, 5, 6, 7, 11], [BOS, 8, 11]]
    examples = random_examples(3, n=3)
    bad = [examples[0], {**examples[1], "inputs": examples[1]["inputs"][1:]}]
    with pytest.raises(ValueError, match=r"example 1: inputs does not start with the stream prefix tokens \[11\]"):
        causal_lm.causal_rows(bad, layout, paired=True, lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    differ = {**examples[2], "rationale_inputs": examples[2]["rationale_inputs"][:-2]}
    with pytest.raises(ValueError, match="example 0: inputs and rationale_inputs differ after their prefixes"):
        causal_lm.causal_rows([differ], layout, paired=True, lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    with pytest.raises(ValueError, match="packing does not take them"):
        causal_lm.packed_rows(examples, layout, paired=True, row_length=64)
    with pytest.raises(ValueError, match="same prompt"):
        causal_lm.causal_rows(examples, shared_layout(rationale_prefix=LABEL_PREFIX), paired=True,
                              lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    # Label-only tasks: the one label row, its prefix after the input too (the prompt generation starts from).
    rows = causal_lm.causal_rows(examples, layout, paired=False, lengths=layout.row_lengths(FEATURE_LENGTHS, False))
    x = examples[0]["inputs"][1:-1].tolist()
    assert rows[schema.LABEL][schema.DECODER_TOKENS][0][:len(x) + 2].tolist() == [BOS] + x + [11]
    assert causal_labels.parse_generation(" yes ", SHARED).label == "yes"
    assert not layout.generates_rationale


class _Vocab:
    eos_id = SRC_EOS

    def encode(self, text):
        return [{"predict: ": 11, "explain: ": 12}[text], 13]


def test_layout_for_tokenizes_the_task_prefixes():
    layout = causal_lm.layout_for(SHARED, _Vocab(), eos_ids=(SRC_EOS,), bos_id=BOS)
    assert (layout.label_prefix, layout.rationale_prefix) == ((11, 13), (12, 13))
    assert causal_lm.layout_for(schema.MULTITASK, _Vocab(), eos_ids=(SRC_EOS,), bos_id=BOS).label_prefix == ()


def _loss_and_grads(model, params, batch):
    objective = ObjectiveConfig(rationale_weight=0.6)
    fn = jax.value_and_grad(lambda p: causal_objective.loss_fn(model, p, batch, None, objective), has_aux=True)
    return jax.jit(fn)(params)


# Default suite: Gemma 2 (sliding window 6 on alternate layers, soft-caps); ~15 s each on the shared CPU.
@pytest.mark.parametrize("case", ["gemma2_capped", pytest.param("llama3_scaled", marks=pytest.mark.slow),
                                  pytest.param("qwen2_sliding", marks=pytest.mark.slow),
                                  pytest.param("llama_tied", marks=pytest.mark.slow),
                                  pytest.param("gemma", marks=pytest.mark.slow),
                                  pytest.param("gemma3", marks=pytest.mark.slow)])
def test_shared_prompt_step_equals_two_sequence_step(case):
    config = config_of(case)
    model = DecoderLM(config)
    params = model.init(jax.random.key(1), jnp.ones((1, 4), jnp.int32))["params"]
    # Larger weights than the init's: peaked attention, so a branch that sees the other changes the loss.
    params = jax.tree.map(lambda p: p * 3.0 if p.ndim == 2 else p, params)
    examples = random_examples(11, n=5)
    layout = shared_layout()
    tree = causal_lm.causal_rows(examples, layout, paired=True, lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    plain_layout = causal_lm.CausalLayout(schema.MULTITASK, eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS)
    plain = causal_lm.causal_rows([prefix_after_input(ex) for ex in examples], plain_layout, paired=True,
                                  lengths=plain_layout.row_lengths(FEATURE_LENGTHS, True))
    (l_t, m_t), g_t = _loss_and_grads(model, params, tree)
    (l_p, m_p), g_p = _loss_and_grads(model, params, plain)
    for k in ("label/loss", "rationale/loss", "label/num_tokens", "rationale/num_tokens", "num_examples"):
        np.testing.assert_allclose(m_t[k], m_p[k], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(l_t, l_p, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_t), jax.tree.leaves(g_p), strict=True):
        scale = float(np.max(np.abs(b)))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_sbs_train_with_the_shared_prompt_format(tmp_path):
    """`sbs train` (subprocess, embedded arith task): two steps on tree rows, then validation by generation from
    `[BOS] x predict:` and teacher-forced per-stream losses."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBS_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    run = tmp_path / "run"
    subprocess.run(["timeout", "-s", "KILL", "600", sys.executable, "-m", "sbs_jax.cli", "train",
                    "--gin_file=models/llama_tiny.gin", "--gin_file=runs/step_by_step.gin",
                    "--gin_file=datasets/arith.gin", f"--gin.MODEL_DIR='{run}'", "--gin.BATCH_SIZE=8",
                    "--gin.TRAIN_STEPS=2", "--gin.CAUSAL_FORMAT='multitask_shared_prompt'", "--gin.EVAL_EVERY=0",
                    "--gin.TEST_SPLIT=None", "--gin.TrainConfig.tensorboard=False"],
                   cwd=repo, env=env, check=True, capture_output=True, text=True)
    validation = json.loads((run / "summary.json").read_text())["validation"]
    assert validation["num_examples"] > 0 and validation["parse_failures"] == 0
    assert validation["label/num_tokens"] > 0 and validation["rationale/num_tokens"] > 0
    rows = [json.loads(line) for line in (run / "predictions" / "validation_step2.jsonl").read_text().splitlines()]
    assert len(rows) == validation["num_examples"]


@pytest.mark.parametrize("fmt,global_counts", [(SHARED, True), pytest.param(SHARED, False, marks=pytest.mark.slow),
                                                pytest.param("rationale_first", False, marks=pytest.mark.slow)])
def test_one_pass_gradient_equals_the_per_stream_sum(fmt, global_counts):
    """`causal_objective.loss_fn` differentiates one cross-entropy per group of rows (`group_loss`); its value
    and gradient are those of `sum_s weight_s · L_s` taken stream by stream (with global token counts too, as
    gradient accumulation passes them)."""
    from sbs_jax.train import objective as objective_lib

    config = DecoderConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_ids=(EOS,), dtype="float32")
    model = DecoderLM(config)
    params = model.init(jax.random.key(2), jnp.ones((1, 4), jnp.int32))["params"]
    layout = (shared_layout() if fmt == SHARED else
              causal_lm.CausalLayout(fmt, eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS, marker=(9, 10)))
    batch = causal_lm.causal_rows(random_examples(6, n=4), layout, paired=True,
                                  lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    objective = ObjectiveConfig(alpha=0.3, z_loss=1e-3)
    counts = ({s: jnp.float32(v * 3) for s, v in causal_objective.token_counts(objective, batch).items()}
              if global_counts else None)
    rows = batch[schema.SEQUENCE]

    def per_stream_sum(p):
        group_logits = causal_objective.logits(model, p, rows)
        per_stream = {s: objective_lib.stream_loss(
            group_logits, {schema.DECODER_TARGET_TOKENS: rows[schema.DECODER_TARGET_TOKENS],
                           schema.DECODER_LOSS_WEIGHTS: causal_objective.stream_weights(rows, s)},
            objective, None if counts is None else counts[s]) for s in objective.streams}
        return objective_lib.combine(per_stream, objective.stream_weights(), 0.0)[0]

    l_ref, g_ref = jax.jit(jax.value_and_grad(per_stream_sum))(params)
    (l_one, _), g_one = jax.jit(jax.value_and_grad(
        lambda p: causal_objective.loss_fn(model, p, batch, None, objective, num_tokens=counts), has_aux=True))(params)
    np.testing.assert_allclose(l_one, l_ref, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_one), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))))
