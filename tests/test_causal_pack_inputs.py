"""Packed causal rows for training decoder-only students: the streaming packer packs as the one-shot packer does,
the trainer's input (`inputs.train_batches` with a layout and `pack`) packs the examples of the unpacked batches
in their order for every format and resumes at any batch, PACKED_LENGTHS is checked, and `aot.train_shapes`
gives the shapes those batches have."""
import dataclasses

import jax
import numpy as np
import pytest

from causal_cases import BOS, EOS, FEATURE_LENGTHS, MARK, SRC_EOS, random_examples
from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm
from sbs_jax.model.decoder import DecoderConfig
from sbs_jax.train import aot, inputs, trainer

LENGTHS = {"inputs": 40, "targets": 4, "rationales": 12}  # arith's longest: 35, 2, 11 tokens
FORMATS = ("multitask", "rationale_first", "label_first")


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    from sbs_jax import tasks
    from sbs_jax.data.registry import register

    tasks.register_arith_tasks(vocab_cache_dir=str(tmp_path_factory.mktemp("arith_vocab")))
    return register.get_vocabulary("arith_sbs")


def _layout(vocab, fmt):
    return causal_lm.layout_for(fmt, vocab, eos_ids=(1,), bos_id=2)


def _sequences(rows):
    """The (tokens, targets, weights, stream ids) of every real sequence of causal rows, in row order; packed
    rows give one per segment."""
    out = []
    segment_ids = rows.get(schema.DECODER_SEGMENT_IDS, rows[schema.DECODER_VALID])
    for r in range(segment_ids.shape[0]):
        for s in range(1, int(segment_ids[r].max()) + 1):
            mask = segment_ids[r] == s
            out.append(tuple(tuple(rows[k][r][mask].tolist()) for k in (
                schema.DECODER_TOKENS, schema.DECODER_TARGET_TOKENS, schema.DECODER_LOSS_WEIGHTS,
                schema.DECODER_STREAM_IDS, schema.DECODER_POSITIONS)))
    return out


def test_streaming_packer_packs_as_the_one_shot_packer():
    layout = causal_lm.CausalLayout("label_first", eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS, marker=MARK)
    examples = random_examples(3, n=9)
    whole = causal_lm.packed_rows(examples, layout, paired=True, row_length=40)[schema.PACKED]
    packer = causal_lm.GreedyPacker(40)
    for chunk in (examples[:2], examples[2:3], examples[3:7], examples[7:]):
        packer.add(causal_lm.packable_sequences(chunk, layout, paired=True, row_length=40))
    first = packer.take(2)
    packer.flush()
    rows = causal_lm.row_arrays(first + packer.take(100), 40)
    assert rows.keys() == whole.keys()
    for k in whole:
        np.testing.assert_array_equal(rows[k], whole[k], err_msg=k)
    assert whole[schema.DECODER_SEGMENT_IDS].max() > 1


def test_packed_length_default_and_errors():
    layout = causal_lm.CausalLayout("multitask", eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS)
    rows = layout.row_lengths(FEATURE_LENGTHS, True)  # label 9+4-1+1 = 13, rationale 9+8-1+1 = 17
    assert causal_lm.resolve_packed_length(rows, None) == 13 + 17
    assert causal_lm.resolve_packed_length(rows, {"decoder": 17}) == 17
    with pytest.raises(ValueError, match=r"packed_lengths\['decoder'\] = 16 is shorter .* at least 17"):
        causal_lm.resolve_packed_length(rows, {"decoder": 16})
    with pytest.raises(ValueError, match=r"expected \{'decoder': L\}, got keys \['inputs', 'targets'\]"):
        causal_lm.resolve_packed_length(rows, {"inputs": 64, "targets": 24})


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_batches_hold_the_unpacked_batches_examples_in_order(arith, fmt):
    layout = _layout(arith, fmt)
    common = dict(task_feature_lengths=LENGTHS, batch_size=8, seed=3, streams=("label", "rationale"), layout=layout)
    unpacked = inputs.train_batches("arith_sbs", **common)
    packed = inputs.train_batches("arith_sbs", pack=True, packed_lengths={"decoder": 160}, **common)
    batches = [next(packed) for _ in range(3)]
    for b in batches:
        assert list(b) == ["packed"] and all(v.shape == (8, 160) for v in b["packed"].values())
    got = [s for b in batches for s in _sequences(b["packed"])]
    assert len(got) > 3 * 8 * len(layout.groups(True)) // 2  # rows hold more than one sequence on average
    expected = []
    while len(expected) < len(got):
        b = next(unpacked)
        per_key = [_sequences(b[k]) for k in layout.groups(True)]
        # Data order: each example's sequences (label then rationale for multitask), example after example;
        # a sequence with no weighted target (an unparsed teacher output's rationale) is not packed.
        expected += [s for seqs in zip(*per_key) for s in seqs if any(s[2])]
    assert got == expected[:len(got)]
    # Resuming at batch 2 (the trainer's data position) gives batch 2.
    resumed = next(inputs.train_batches("arith_sbs", pack=True, packed_lengths={"decoder": 160}, start_batch=2,
                                        **common))
    for k, v in batches[2]["packed"].items():
        np.testing.assert_array_equal(resumed["packed"][k], v, err_msg=k)


def test_label_only_runs_pack_the_label_sequences(arith):
    layout = _layout(arith, "rationale_first")  # the format has no say over label-only rows
    b = next(inputs.train_batches("arith_ft", task_feature_lengths=LENGTHS, batch_size=8, seed=0, streams=("label",),
                                  layout=layout, pack=True))
    rows = b["packed"]
    assert rows[schema.DECODER_TOKENS].shape == (8, 40 + 4 - 1 + 1)  # default: one label row's length
    assert set(np.unique(rows[schema.DECODER_STREAM_IDS])) == {0, schema.LABEL_STREAM_ID}


def _decoder_config(**kw):
    model = DecoderConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_ids=(1,), bos_id=2,
                          dtype="float32")
    return trainer.TrainConfig(model_dir="/tmp/unused", mixture_or_task_name="arith_sbs", task_feature_lengths=LENGTHS,
                               train_steps=1, batch_size=8, model=model, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_compile_shapes_are_the_causal_batches_the_run_feeds(arith, fmt):
    """`aot.train_shapes` (what `sbs compile` compiles) for decoder-only runs: unpacked and packed batches have
    exactly the shapes given; the bucketed shapes are tested with the cutter (test_causal_batch_cutting.py)."""
    for pack, packed_lengths in ((False, None), (True, None), (True, {"decoder": 128})):
        config = _decoder_config(causal_format=fmt, pack=pack, packed_lengths=packed_lengths)
        layout = _layout(arith, fmt)
        batch = next(inputs.train_batches("arith_sbs", task_feature_lengths=LENGTHS, batch_size=8, seed=0,
                                          streams=config.objective.streams, layout=layout, pack=pack,
                                          packed_lengths=packed_lengths))
        fed = jax.tree.map(lambda x: (x.shape, str(x.dtype)), batch)
        for given in (layout, None):  # the trainer's layout, and the one `causal_layout` builds from the config
            shapes, count = aot.train_shapes(config, layout=given)
            assert count == 1
            assert fed == jax.tree.map(lambda s: (s, "int32"), shapes[0], is_leaf=lambda x: isinstance(x, tuple))


def test_compile_shapes_errors(arith):
    config = _decoder_config(pack=True, packed_lengths={"decoder": 20})
    with pytest.raises(aot.PlanError, match=r"packed_lengths\['decoder'\] = 20 is shorter"):
        aot.train_shapes(config)
    unregistered = dataclasses.replace(_decoder_config(causal_format="label_first"),
                                       mixture_or_task_name="not_registered")
    with pytest.raises(aot.PlanError, match="' Explanation: ', whose length needs the task's vocabulary"):
        aot.train_shapes(unregistered)
    # Multitask rows hold no marker: no vocabulary needed.
    multitask = dataclasses.replace(_decoder_config(), mixture_or_task_name="not_registered")
    assert aot.train_shapes(multitask)[0][0]["label"]["decoder_tokens"] == (8, 44)
