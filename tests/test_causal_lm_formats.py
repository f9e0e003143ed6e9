"""Causal-LM rows of each format on a known example: exact tokens, targets, weights, stream ids, positions."""
import numpy as np
import pytest

from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm

SRC_EOS = 1
# Task features as SeqIO gives them (each ends with the vocabulary's EOS 1).
FEATURES = {"inputs": np.array([10, 11, 12, SRC_EOS]), "targets": np.array([20, SRC_EOS]),
            "rationale_inputs": np.array([13, 11, 12, SRC_EOS]), "rationales": np.array([30, 31, SRC_EOS])}
BOS, EOS, MARK = 5, 2, (7, 8)


def row(out, key, i=0):
    r = out[key]
    return {k: r[k][i].tolist() for k in schema.CAUSAL_KEYS}


def test_multitask_two_sequences_with_bos():
    layout = causal_lm.CausalLayout(schema.MULTITASK, eos_id=EOS, bos_id=BOS)
    lengths = layout.row_lengths({"inputs": 4, "targets": 2, "rationales": 3}, paired=True)
    assert lengths == {"label": 6, "rationale": 7}
    out = causal_lm.causal_rows([FEATURES], layout, paired=True, lengths=lengths)
    # sequence: BOS 10 11 12 | 20 EOS
    assert row(out, "label") == {
        "decoder_tokens": [5, 10, 11, 12, 20, 0], "decoder_target_tokens": [10, 11, 12, 20, 2, 0],
        "decoder_loss_weights": [0, 0, 0, 1, 1, 0], "decoder_positions": [0, 1, 2, 3, 4, 0],
        "decoder_valid": [1, 1, 1, 1, 1, 0], "decoder_stream_ids": [0, 0, 0, 1, 1, 0]}
    # sequence: BOS 13 11 12 | 30 31 EOS
    assert row(out, "rationale") == {
        "decoder_tokens": [5, 13, 11, 12, 30, 31, 0], "decoder_target_tokens": [13, 11, 12, 30, 31, 2, 0],
        "decoder_loss_weights": [0, 0, 0, 1, 1, 1, 0], "decoder_positions": [0, 1, 2, 3, 4, 5, 0],
        "decoder_valid": [1, 1, 1, 1, 1, 1, 0], "decoder_stream_ids": [0, 0, 0, 2, 2, 2, 0]}


def test_rationale_first_one_sequence_without_bos():
    layout = causal_lm.CausalLayout(schema.RATIONALE_FIRST, eos_id=EOS, bos_id=None, marker=MARK)
    lengths = layout.row_lengths({"inputs": 4, "targets": 2, "rationales": 3}, paired=True)
    assert lengths == {"sequence": 9}
    out = causal_lm.causal_rows([FEATURES], layout, paired=True, lengths=lengths)
    # sequence: 10 11 12 | 30 31 7 8 20 EOS
    assert row(out, "sequence") == {
        "decoder_tokens": [10, 11, 12, 30, 31, 7, 8, 20, 0],
        "decoder_target_tokens": [11, 12, 30, 31, 7, 8, 20, 2, 0],
        "decoder_loss_weights": [0, 0, 1, 1, 1, 1, 1, 1, 0],
        "decoder_positions": [0, 1, 2, 3, 4, 5, 6, 7, 0], "decoder_valid": [1] * 8 + [0],
        "decoder_stream_ids": [0, 0, 2, 2, 1, 1, 1, 1, 0]}


def test_label_first_one_sequence_with_bos():
    layout = causal_lm.CausalLayout(schema.LABEL_FIRST, eos_id=EOS, bos_id=BOS, marker=MARK)
    lengths = layout.row_lengths({"inputs": 4, "targets": 2, "rationales": 3}, paired=True)
    out = causal_lm.causal_rows([FEATURES], layout, paired=True, lengths=lengths)
    # sequence: BOS 10 11 12 | 20 7 8 30 31 EOS
    assert row(out, "sequence") == {
        "decoder_tokens": [5, 10, 11, 12, 20, 7, 8, 30, 31, 0][:lengths["sequence"]],
        "decoder_target_tokens": [10, 11, 12, 20, 7, 8, 30, 31, 2, 0][:lengths["sequence"]],
        "decoder_loss_weights": [0, 0, 0, 1, 1, 1, 1, 1, 1, 0][:lengths["sequence"]],
        "decoder_positions": [0, 1, 2, 3, 4, 5, 6, 7, 8, 0][:lengths["sequence"]],
        "decoder_valid": ([1] * 9 + [0])[:lengths["sequence"]],
        "decoder_stream_ids": [0, 0, 0, 1, 1, 1, 2, 2, 2, 0][:lengths["sequence"]]}
    assert lengths == {"sequence": 10}


def test_unparsed_rationale_and_label_only_tasks():
    unparsed = dict(FEATURES, rationales=np.array([SRC_EOS]))
    layout = causal_lm.CausalLayout(schema.MULTITASK, eos_id=EOS, bos_id=None)
    out = causal_lm.causal_rows([unparsed], layout, paired=True, lengths={"label": 6, "rationale": 6})
    assert out["rationale"]["decoder_loss_weights"].sum() == 0
    assert out["rationale"]["decoder_stream_ids"].sum() == 0
    assert out["label"]["decoder_loss_weights"].sum() == 2
    label_only = {k: FEATURES[k] for k in ("inputs", "targets")}
    layout = causal_lm.CausalLayout(schema.RATIONALE_FIRST, eos_id=EOS, bos_id=None, marker=MARK)
    out = causal_lm.causal_rows([label_only], layout, paired=False, lengths={"label": 5})
    assert list(out) == ["label"]
    assert out["label"]["decoder_target_tokens"][0].tolist() == [11, 12, 20, 2, 0]


def test_bad_layouts_and_rows_name_the_problem():
    with pytest.raises(ValueError, match="expected one of"):
        causal_lm.CausalLayout("cot", eos_id=EOS)
    with pytest.raises(ValueError, match="marker"):
        causal_lm.CausalLayout(schema.LABEL_FIRST, eos_id=EOS)
    layout = causal_lm.CausalLayout(schema.MULTITASK, eos_id=EOS, bos_id=BOS)
    with pytest.raises(ValueError, match="example 0 .label. has 5 tokens"):
        causal_lm.causal_rows([FEATURES], layout, paired=True, lengths={"label": 4, "rationale": 9})


class _Vocab:
    eos_id = 1

    def encode(self, text):
        return [100 + len(w) for w in text.split()]


def test_layout_for_a_model_and_vocabulary():
    from sbs_jax.model.decoder import presets
    qwen = presets.get_config("qwen2_tiny", eos_ids=(1,))
    llama = presets.get_config("llama_tiny", eos_ids=(1, 2))
    assert qwen.prompt_bos_id is None and llama.prompt_bos_id == llama.bos_id == 1
    layout = causal_lm.layout_for("rationale_first", _Vocab(), eos_ids=llama.eos_ids, bos_id=llama.prompt_bos_id)
    assert layout.marker == (102, 103, 106, 102) and layout.eos_id == 1 and layout.bos_id == 1  # "So the answer is"
    assert causal_lm.layout_for("multitask", _Vocab(), eos_ids=(1,), bos_id=None).marker == ()
    with pytest.raises(ValueError, match="eos_ids are .2,.; set the model's eos_ids to include 1"):
        causal_lm.layout_for("multitask", _Vocab(), eos_ids=(2,), bos_id=None)
