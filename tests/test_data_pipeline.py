"""Paired batches from registered tasks: pairing, rationale weights, determinism, sharding, eval order."""
import json

import numpy as np
import pytest
import seqio

from sbs_jax import tasks
from sbs_jax.data.scoring import metrics
from sbs_jax.data.input_pipeline import pipeline
from sbs_jax.data.registry import register
from sbs_jax.data.vocab import sentencepiece_vocab as vocab

LENGTHS = {"inputs": 128, "targets": 48, "rationales": 128}


@pytest.fixture(scope="module")
def spiece(tmp_path_factory, datasets_dir):
    from sbs_jax.data.records import data_dir as records
    texts = vocab.model_texts(records.read_split(datasets_dir, "svamp", "train").examples)
    return vocab.train_vocabulary(texts, tmp_path_factory.mktemp("vocab"), vocab_size=600, seed=0)


@pytest.fixture(scope="module")
def svamp(spiece, datasets_dir):
    names = tasks.register_paper_tasks(str(datasets_dir), datasets=["svamp"], valid_from_train=0.1,
                                       vocabulary=str(spiece))
    assert names == ["svamp_sbs", "svamp_sbs_llm", "svamp_ft", "svamp_distill"]
    return {s: d.examples for s, d in register.get_task_info("svamp_sbs").split_data.items()}


def _decode(task, ids):
    return register.get_vocabulary(task).decode([int(i) for i in ids])


def test_paired_batch_pairs_the_same_examples(svamp):
    ds = pipeline.get_train_dataset("svamp_sbs", task_feature_lengths=LENGTHS, batch_size=8, seed=3)
    batch = next(ds.as_numpy_iterator())
    assert set(batch) == {"label", "rationale"}
    assert batch["label"]["encoder_input_tokens"].shape == (8, 128)
    assert batch["rationale"]["decoder_target_tokens"].shape == (8, 128)
    assert all(a.dtype == np.int32 for s in batch.values() for a in s.values())
    for row in range(8):
        label_in = _decode("svamp_sbs", batch["label"]["encoder_input_tokens"][row])
        explain_in = _decode("svamp_sbs", batch["rationale"]["encoder_input_tokens"][row])
        assert label_in.startswith("predict: ") and explain_in.startswith("explain: ")
        assert label_in[len("predict: "):] == explain_in[len("explain: "):]
        target = _decode("svamp_sbs", batch["label"]["decoder_target_tokens"][row])
        matches = [ex for ex in svamp["train"] if " ".join(ex.input.split()) == label_in[9:]]
        assert len(matches) >= 1 and any(ex.label == target for ex in matches)
    # Teacher-forcing inputs are the targets shifted right behind BOS 0.
    lab = batch["label"]
    np.testing.assert_array_equal(lab["decoder_input_tokens"][:, 1:], lab["decoder_target_tokens"][:, :-1])
    assert (lab["decoder_input_tokens"][:, 0] == 0).all()


def test_unparsed_rationales_get_zero_weight_and_labels_train(svamp):
    train = svamp["train"]
    assert len(train) == 720
    ds = pipeline.get_train_dataset("svamp_sbs", task_feature_lengths=LENGTHS, batch_size=8, shuffle=False,
                                    num_epochs=1)
    zero_rows = label_rows = 0
    for batch in ds.as_numpy_iterator():
        zero_rows += int((batch["rationale"]["decoder_loss_weights"].sum(1) == 0).sum())
        label_rows += int((batch["label"]["decoder_loss_weights"].sum(1) > 0).sum())
    assert zero_rows == register.get_task_info("svamp_sbs").split_data["train"].parse_failures
    assert zero_rows == sum(not ex.rationale for ex in train) > 0
    assert label_rows == 720


def test_same_seed_same_batches_other_seed_differs(svamp):
    def first(seed):
        ds = pipeline.get_train_dataset("svamp_sbs", task_feature_lengths=LENGTHS, batch_size=4, seed=seed)
        it = ds.as_numpy_iterator()
        return [next(it)["label"]["encoder_input_tokens"] for _ in range(3)]
    a, b, c = first(11), first(11), first(12)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == z).all() for x, z in zip(a, c))


def test_label_only_variants_and_teacher_labels(svamp):
    ds = pipeline.get_train_dataset("svamp_distill", task_feature_lengths=LENGTHS, batch_size=720,
                                    shuffle=False, num_epochs=1)
    batch = next(ds.as_numpy_iterator())
    assert set(batch) == {"label"}
    targets = [_decode("svamp_distill", t) for t in batch["label"]["decoder_target_tokens"]]
    expected = [ex.teacher_label or ex.label for ex in svamp["train"]]
    normalise = lambda s: " ".join(s.split())  # noqa: E731  (SentencePiece folds runs of spaces)
    assert [normalise(t) for t in targets] == [normalise(e) for e in expected]
    assert any(not ex.teacher_label for ex in svamp["train"])  # unparsed rows fell back to gold


def test_eval_examples_every_example_once_in_order(svamp):
    examples = pipeline.get_eval_examples("svamp_sbs_llm", split="validation", task_feature_lengths=LENGTHS)
    valid = svamp["validation"]
    assert len(valid) == 80 and len(examples) == 80
    assert list(examples.inputs) == [ex.input for ex in valid]
    assert list(examples.targets) == [ex.label for ex in valid]  # gold labels, also for the teacher-label variant
    assert list(examples.rationales) == [ex.rationale for ex in valid]
    assert examples.encoder_input_tokens.shape == (80, 128)
    assert _decode("svamp_sbs_llm", examples.encoder_input_tokens[0]).startswith("predict: ")
    # Validation carved from train is disjoint from what stays in train.
    assert not {ex.input for ex in valid} & {ex.input for ex in svamp["train"]}


def test_shards_split_the_examples(svamp):
    seen = []
    for index in range(2):
        shard = seqio.ShardInfo(index=index, num_shards=2)
        examples = pipeline.get_eval_examples("svamp_ft", split="test", task_feature_lengths=LENGTHS,
                                              shard_info=shard)
        seen.append(list(examples.inputs))
        train = pipeline.get_train_dataset("svamp_ft", task_feature_lengths=LENGTHS, batch_size=8,
                                           shard_info=shard)
        assert next(train.as_numpy_iterator())["label"]["encoder_input_tokens"].shape == (4, 128)
    assert len(seen[0]) == len(seen[1]) == 100
    assert not set(seen[0]) & set(seen[1])
    # 80 validation examples over 3 hosts: 27/27/26 rows.
    counts = [len(pipeline.get_eval_examples("svamp_ft", split="validation", task_feature_lengths=LENGTHS,
                                             shard_info=seqio.ShardInfo(index, 3))) for index in range(3)]
    assert counts == [27, 27, 26]


def test_truncation_is_counted(svamp):
    stats = pipeline.truncation_stats("svamp_sbs", "train", {"inputs": 64, "rationales": 16})
    assert stats["inputs"]["examples"] == 720
    assert 0 < stats["inputs"]["truncated"] < 720
    assert 0 < stats["rationales"]["truncated"] < 720
    assert pipeline.truncation_stats("svamp_sbs", "train", {"inputs": 10_000})["inputs"]["truncated"] == 0


def test_score_uses_the_task_metric(svamp):
    assert metrics.score("svamp_ft", ["( 84.0 / 2.0 )", "( 1.0 + 2.0 )"], ["(84 / 2)", "(2 + 2)"]) == {
        "accuracy": 50.0}


def test_user_jsonl_task_and_mixture(svamp, spiece, tmp_path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i),
             "why": f"{i} + {i} = {2 * i}." if i % 4 else None} for i in range(1, 41)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    names = register.register_jsonl_task("plus", {"train": str(path)}, vocabulary=str(spiece),
                                         input_field="question", label_field="answer", rationale_field="why",
                                         variants=("sbs", "ft"))
    assert names == ["plus_sbs", "plus_ft"]
    info = register.get_task_info("plus_sbs").split_data["train"]
    assert info.parse_failures == 10 and info.teacher_accuracy is None
    ds = pipeline.get_train_dataset("plus_sbs", task_feature_lengths=LENGTHS, batch_size=40, shuffle=False,
                                    num_epochs=1)
    batch = next(ds.as_numpy_iterator())
    np.testing.assert_array_equal(batch["rationale"]["decoder_loss_weights"].sum(1) > 0,
                                  [bool(r["why"]) for r in rows])
    seqio.MixtureRegistry.remove("plus_and_svamp")
    seqio.MixtureRegistry.add("plus_and_svamp", [("plus_sbs", 1.0), ("svamp_sbs", 1.0)])
    mixed = pipeline.get_train_dataset("plus_and_svamp", task_feature_lengths=LENGTHS, batch_size=16, seed=0)
    inputs = [_decode("plus_sbs", t) for b in mixed.take(4).as_numpy_iterator()
              for t in b["label"]["encoder_input_tokens"]]
    assert any("plus" in x for x in inputs) and any("plus" not in x for x in inputs)
    # A batch holds one kind: seqio itself refuses to mix paired and label-only tasks.
    with pytest.raises(ValueError, match="different output features"):
        seqio.Mixture("mixed_kinds", [("plus_sbs", 1.0), ("plus_ft", 1.0)])
