"""The numpy back end (`host_pipeline`) yields exactly the tf.data path's batches: same examples, order, packing."""
import itertools

import numpy as np
import pytest

from sbs_jax import tasks
from sbs_jax.data.input_pipeline import pipeline
from sbs_jax.data.vocab import sentencepiece_vocab as vocab
from sbs_jax.train import inputs

# Short inputs and rationales, so that trimming and EOS-after-trim are exercised too.
LENGTHS = {"inputs": 40, "targets": 8, "rationales": 24}


@pytest.fixture(scope="module")
def svamp(tmp_path_factory, datasets_dir):
    from sbs_jax.data.records import data_dir as records
    texts = vocab.model_texts(records.read_split(datasets_dir, "svamp", "train").examples)
    spiece = vocab.train_vocabulary(texts, tmp_path_factory.mktemp("vocab"), vocab_size=600, seed=0)
    tasks.register_paper_tasks(str(datasets_dir), datasets=["svamp"], valid_from_train=0.1, vocabulary=str(spiece))
    return "svamp_sbs"


def _assert_same(reference, candidate, n: int):
    for i, (want, got) in enumerate(itertools.islice(zip(reference, candidate), n)):
        assert sorted(want) == sorted(got), i
        for stream in want:
            assert sorted(want[stream]) == sorted(got[stream]), (i, stream)
            for key in want[stream]:
                assert got[stream][key].dtype == want[stream][key].dtype, (i, stream, key)
                np.testing.assert_array_equal(got[stream][key], want[stream][key], err_msg=f"batch {i} {stream}/{key}")


def _both(task, **kw):
    return (pipeline.train_batches(task, task_feature_lengths=LENGTHS, backend="tf.data", **kw),
            pipeline.train_batches(task, task_feature_lengths=LENGTHS, backend="numpy", **kw))


@pytest.mark.parametrize("task", ["svamp_sbs", "svamp_ft"])
def test_unpacked_batches_equal_the_tf_data_path_across_epochs(svamp, task):
    # 720 train examples: 100 batches of 8 cross the first epoch boundary (shuffling spans it).
    _assert_same(*_both(task, batch_size=8, seed=3), n=100)


def test_packed_batches_equal_the_tf_data_path(svamp):
    # 120 rows of 4 batches hold ~1.3 epochs of segments.
    _assert_same(*_both(svamp, batch_size=4, seed=5, pack=True), n=120)
    _assert_same(*_both(svamp, batch_size=4, seed=5, pack=True, packed_streams=("label",)), n=40)


def test_one_unshuffled_epoch_equals_the_tf_data_path(svamp):
    want, got = _both(svamp, batch_size=16, shuffle=False, num_epochs=1)
    want, got = list(want), list(got)
    assert len(got) == len(want) == 720 // 16  # drop_remainder
    _assert_same(want, got, n=len(want))


@pytest.mark.parametrize("pack", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_trainer_input_shards_and_resume_equal_the_tf_data_path(svamp, pack):
    kw = dict(task_feature_lengths=LENGTHS, batch_size=8, seed=1, streams=("label", "rationale"),
              num_input_shards=2, start_batch=7, pack=pack)
    _assert_same(inputs.train_batches(svamp, backend="tf.data", **kw),
                 inputs.train_batches(svamp, backend="numpy", **kw), n=40)


def test_numpy_backend_refuses_a_mixture(svamp):
    import seqio

    seqio.MixtureRegistry.remove("svamp_mix_hp")
    seqio.MixtureRegistry.add("svamp_mix_hp", [("svamp_sbs", 1.0), ("svamp_sbs_llm", 1.0)])
    with pytest.raises(ValueError, match="single task over in-memory examples"):
        pipeline.train_batches("svamp_mix_hp", task_feature_lengths=LENGTHS, batch_size=8, backend="numpy")
    # "auto" falls back to tf.data for it.
    batch = next(pipeline.train_batches("svamp_mix_hp", task_feature_lengths=LENGTHS, batch_size=8))
    assert batch["label"]["encoder_input_tokens"].shape == (8, 40)
