"""Causal training batches from the embedded task: the examples of the T5 batches of the same seed, in the same
order, each row the format's sequence of those examples' text."""
import numpy as np
import pytest

from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_batches, causal_lm, pipeline
from sbs_jax.data.registry import register

LENGTHS = {"inputs": 40, "targets": 4, "rationales": 12}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from sbs_jax import tasks
    tasks.register_arith_tasks(vocab_cache_dir=str(tmp_path_factory.mktemp("vocab")))
    return register.get_vocabulary("arith_sbs")


def text(vocab, ids):
    return vocab.decode([int(t) for t in ids])


@pytest.mark.parametrize("fmt", ["multitask", "rationale_first"])
def test_rows_hold_the_t5_batches_examples(vocab, fmt):
    marker = tuple(vocab.encode(schema.FORMAT_MARKERS[fmt])) if fmt != "multitask" else ()
    layout = causal_lm.CausalLayout(fmt, eos_id=vocab.eos_id, bos_id=None, source_eos_id=vocab.eos_id,
                                    marker=marker)
    ours = next(causal_batches.train_batches("arith_sbs", layout, task_feature_lengths=LENGTHS, batch_size=4,
                                             paired=True, seed=3))
    t5 = next(pipeline.train_batches("arith_sbs", task_feature_lengths=LENGTHS, batch_size=4, seed=3,
                                     backend="numpy"))
    for i in range(4):
        prompt, label, rationale = (text(vocab, x[x > 1]) for x in (
            t5["label"]["encoder_input_tokens"][i], t5["label"]["decoder_target_tokens"][i],
            t5["rationale"]["decoder_target_tokens"][i]))
        rows = ours["label" if fmt == "multitask" else "sequence"]
        valid = rows["decoder_valid"][i] > 0
        weighted = rows["decoder_loss_weights"][i] > 0
        full = np.concatenate([rows["decoder_tokens"][i][valid][:1], rows["decoder_target_tokens"][i][valid]])
        assert full[-1] == vocab.eos_id
        completion = text(vocab, rows["decoder_target_tokens"][i][weighted][:-1])
        if fmt == "multitask":
            assert completion == label
            r = ours["rationale"]
            assert text(vocab, r["decoder_target_tokens"][i][r["decoder_loss_weights"][i] > 0][:-1]) == rationale
        else:
            # SentencePiece joins the parts' pieces; spacing aside, the text is rationale, marker, label.
            assert completion.replace(" ", "") == (rationale + schema.FORMAT_MARKERS[fmt] + label).replace(" ", "")
        assert prompt.startswith("predict: ")
        assert text(vocab, full[:int(valid.sum()) + 1 - int(weighted.sum())]) == prompt
