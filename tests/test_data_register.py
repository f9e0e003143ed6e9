"""Registering user tasks: the gin-callable form, re-registration, and bad input to the registration API."""
import dataclasses
import json
import re

import gin
import pytest
import seqio

from sbs_jax import tasks
from sbs_jax.data.records import arith
from sbs_jax.data.registry import register
from sbs_jax.data.vocab import sentencepiece_vocab as vocab
from sbs_jax.data.records.data_dir import DataError


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    texts = vocab.model_texts(arith.generate_splits(seed=0, sizes={"train": 300})["train"])
    return str(vocab.train_vocabulary(texts, tmp_path_factory.mktemp("vocab"), vocab_size=200, model_type="bpe"))


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_gin_callable_registration(tmp_path, spiece):
    files = {"train": _jsonl(tmp_path / "t.jsonl", [{"q": "Tom has 3 apples.", "a": "3", "r": "3 = 3."}] * 5)}
    gin.clear_config()
    try:
        gin.parse_config(f"""
            SPIECE_MODEL = "{spiece}"
            register_tasks.registrations = [@gintask/register_jsonl_task()]
            gintask/register_jsonl_task.name = "gintask"
            gintask/register_jsonl_task.files = {json.dumps(files)}
            gintask/register_jsonl_task.vocabulary = %SPIECE_MODEL
            gintask/register_jsonl_task.input_field = "q"
            gintask/register_jsonl_task.label_field = "a"
            gintask/register_jsonl_task.rationale_field = "r"
            gintask/register_jsonl_task.variants = ["sbs", "ft"]
        """)
        assert register.register_tasks() == ["gintask_sbs", "gintask_ft"]
    finally:
        gin.clear_config()
    task = seqio.get_mixture_or_task("gintask_sbs")
    assert task.source.num_input_examples("train") == 5
    assert register.get_task_info("gintask_sbs").split_data["train"].parse_failures == 0


def test_reregistering_replaces(tmp_path, spiece):
    for n in (3, 4):
        path = _jsonl(tmp_path / "r.jsonl", [{"input": f"x{i}", "label": "y", "rationale": "z"} for i in range(n)])
        register.register_jsonl_task("again", {"train": path}, vocabulary=spiece, variants=("ft",))
        assert seqio.get_mixture_or_task("again_ft").source.num_input_examples("train") == n


def test_jsonl_missing_label_names_file_and_line(tmp_path, spiece):
    path = _jsonl(tmp_path / "bad.jsonl", [{"input": "a", "label": "b"}, {"input": "c", "rationale": "d"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: missing field 'label'")):
        register.register_jsonl_task("bad", {"train": path}, vocabulary=spiece)


def test_jsonl_wrong_type_and_empty_input(tmp_path, spiece):
    path = _jsonl(tmp_path / "bad.jsonl", [{"input": ["a"], "label": "b"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'input' is list, expected a string")):
        register.register_jsonl_task("bad", {"train": path}, vocabulary=spiece)
    path = _jsonl(tmp_path / "bad2.jsonl", [{"input": "  ", "label": "b"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'input' is empty")):
        register.register_jsonl_task("bad", {"train": path}, vocabulary=spiece)


def test_jsonl_missing_file(tmp_path, spiece):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.jsonl'}: file not found")):
        register.register_jsonl_task("bad", {"train": str(tmp_path / "nope.jsonl")}, vocabulary=spiece)


def test_unknown_variant_and_metric(tmp_path, spiece):
    path = _jsonl(tmp_path / "ok.jsonl", [{"input": "a", "label": "b", "rationale": "c"}])
    with pytest.raises(ValueError, match="unknown variant\\(s\\) \\['cot'\\]"):
        register.register_jsonl_task("v", {"train": path}, vocabulary=spiece, variants=("cot",))
    with pytest.raises(ValueError, match="metric must be one of"):
        register.register_jsonl_task("v", {"train": path}, vocabulary=spiece, metric="bleu")


def test_paper_tasks_need_a_vocabulary(datasets_dir, monkeypatch):
    monkeypatch.delenv("SPIECE_MODEL", raising=False)
    with pytest.raises(ValueError, match="needs a vocabulary: pass vocabulary=<spiece.model path>"):
        tasks.register_paper_tasks(str(datasets_dir), datasets=["svamp"])


def test_paper_tasks_bad_data_dir_and_dataset(tmp_path, spiece, datasets_dir):
    with pytest.raises(DataError, match="holds none of the paper's datasets"):
        tasks.register_paper_tasks(str(tmp_path), vocabulary=spiece)
    with pytest.raises(DataError, match="unknown dataset 'gsm8k'"):
        tasks.register_paper_tasks(str(datasets_dir), datasets=["gsm8k"], vocabulary=spiece)
    with pytest.raises(DataError, match="no 'train' split to carve validation from"):
        tasks.register_paper_tasks(str(datasets_dir), datasets=["anli1"], vocabulary=spiece, valid_from_train=0.1)


def test_missing_split_at_pipeline_time(tmp_path, spiece):
    from sbs_jax.data.input_pipeline import pipeline
    path = _jsonl(tmp_path / "ok.jsonl", [{"input": "a b", "label": "b", "rationale": "c"}] * 4)
    register.register_jsonl_task("onesplit", {"train": path}, vocabulary=spiece, variants=("ft",))
    with pytest.raises(ValueError, match="has no split 'test'"):
        pipeline.get_eval_examples("onesplit_ft", split="test", task_feature_lengths={"inputs": 8})


@pytest.mark.slow  # model compile on CPU: ~1-3 minutes on 2 shared cores
def test_user_jsonl_task_trains_through_the_trainer(tmp_path, spiece):
    """A JSONL task registered by a user trains on the same path as the built-in tasks (both streams)."""
    from sbs_jax.model import get_config
    from sbs_jax.train import objective, optim, trainer

    rows = [{"input": ex.input, "label": ex.label, "rationale": ex.rationale}
            for ex in arith.generate_splits(seed=5, sizes={"train": 64})["train"]]
    rows[3]["rationale"] = None  # one example without a rationale: label stream only
    register.register_jsonl_task("userarith", {"train": _jsonl(tmp_path / "train.jsonl", rows)},
                                 vocabulary=spiece, variants=("sbs",))
    config = trainer.TrainConfig(
        model_dir=str(tmp_path / "run"), mixture_or_task_name="userarith_sbs",
        task_feature_lengths={"inputs": 48, "targets": 8, "rationales": 32}, train_steps=2, batch_size=8,
        model=get_config("t5_1_1_tiny", vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                         num_heads=2, dropout_rate=0.0, dtype="float32"),
        optimizer=optim.OptimizerConfig(learning_rate=1e-3), objective=objective.ObjectiveConfig(alpha=0.5),
        validation_split=None, test_split=None, save_every=2, tensorboard=False)
    assert trainer.train(config)["final_step"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"][-1]
    assert train["label/num_tokens"] > 0 and train["rationale/num_tokens"] > train["label/num_tokens"]
    assert 3.0 < train["label/loss"] < 7.0  # near ln(256) = 5.5 for a random student


def test_any_seqio_source_with_renamed_fields_and_int_labels(spiece):
    """A user DataSource with its own field names and integer labels, through the whole pipeline."""
    import numpy as np
    import tensorflow as tf

    from sbs_jax.data.input_pipeline import pipeline

    premises = [f"Tom has {i} apples." for i in range(12)]

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({
            "text": premises, "gold": np.arange(12, dtype=np.int64) % 3,
            "why": [f"{i} is {i}." if i % 3 else "" for i in range(12)]})

    source = seqio.FunctionDataSource(dataset_fn, splits=["train"])
    names = register.register_source_task(
        "custom", source, vocabulary=spiece, input_field="text", label_field="gold", rationale_field="why",
        label_names=["entailment", "neutral", "contradiction"], variants=("sbs",))
    assert names == ["custom_sbs"]
    lengths = {"inputs": 32, "targets": 24, "rationales": 16}
    batch = next(pipeline.get_train_dataset("custom_sbs", task_feature_lengths=lengths, batch_size=12,
                                            shuffle=False, num_epochs=1).as_numpy_iterator())
    vocab_ = register.get_vocabulary("custom_sbs")
    labels = [vocab_.decode(t.tolist()) for t in batch["label"]["decoder_target_tokens"]]
    assert labels == [["entailment", "neutral", "contradiction"][i % 3] for i in range(12)]
    assert (batch["rationale"]["decoder_loss_weights"].sum(1) > 0).tolist() == [bool(i % 3) for i in range(12)]
    # Truncation is counted for sources sbs_jax did not build too (one pass over the tokenized split).
    stats = pipeline.truncation_stats("custom_sbs", "train", {"inputs": 4, "rationales": 64})
    assert stats["inputs"] == {"examples": 12, "truncated": 12, "limit": 4}
    assert stats["rationales"]["truncated"] == 0


def test_tfds_registration_is_lazy_and_maps_fields(spiece):
    """Registering from TFDS touches no data until the first dataset is built (the builder may be remote)."""
    names = register.register_tfds_task(
        "tfdsnli", "anli/r1:0.1.0", vocabulary=spiece, input_field="hypothesis", label_field="label",
        rationale_field="reason", label_names=["entailment", "neutral", "contradiction"], variants=("sbs", "ft"))
    assert names == ["tfdsnli_sbs", "tfdsnli_ft"]
    task = seqio.get_mixture_or_task("tfdsnli_sbs")
    assert isinstance(task.source, seqio.TfdsDataSource)
    assert task.source.tfds_dataset.name == "anli/r1:0.1.0"
    assert [p.__name__ for p in task.preprocessors[:2]] == ["map_fields", "stream_features"]
    assert set(task.output_features) == {"inputs", "targets", "rationale_inputs", "rationales"}


def test_tfds_task_end_to_end(tmp_path, spiece):
    """A TFDS dataset prepared on disk (a user's own builder) trains through the same paired pipeline."""
    import tensorflow_datasets as tfds

    from sbs_jax.data.input_pipeline import pipeline

    class UserRationales(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            text = tfds.features.Text()
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"question": text, "answer": text, "why": text}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(8)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"question": f"Tom has {i} apples.", "answer": str(i), "why": f"{i} = {i}."}

    UserRationales(data_dir=str(tmp_path)).download_and_prepare()
    names = register.register_tfds_task("usertfds", "user_rationales:1.0.0", vocabulary=spiece,
                                        tfds_data_dir=str(tmp_path), input_field="question",
                                        label_field="answer", rationale_field="why", variants=("sbs",))
    assert names == ["usertfds_sbs"]
    batch = next(pipeline.get_train_dataset(
        "usertfds_sbs", task_feature_lengths={"inputs": 24, "targets": 8, "rationales": 12}, batch_size=8,
        shuffle=False, num_epochs=1).as_numpy_iterator())
    vocab_ = register.get_vocabulary("usertfds_sbs")
    decode = lambda rows: [vocab_.decode(t.tolist()) for t in rows]  # noqa: E731
    inputs = decode(batch["label"]["encoder_input_tokens"])
    # TFDS may shuffle records on disk: check pairing and content, not order.
    keys = sorted(int(s.split()[3]) for s in inputs)
    assert keys == list(range(8))
    assert decode(batch["rationale"]["encoder_input_tokens"]) == [s.replace("predict:", "explain:") for s in inputs]
    assert all(s.startswith("predict: ") for s in inputs)
    for inp, label, rationale in zip(inputs, decode(batch["label"]["decoder_target_tokens"]),
                                     decode(batch["rationale"]["decoder_target_tokens"])):
        i = inp.split()[3]
        assert (label, rationale) == (i, f"{i} = {i}.")


def test_in_memory_examples_carry_their_own_rationales(spiece):
    """A bare list of examples is step-by-step data when its examples have rationales; the missing ones count
    as unparsed, and a list with none at all is refused for a step-by-step run."""
    examples = arith.generate_splits(seed=0, sizes={"train": 40})["train"]
    register.register_examples_task("mem", {"train": examples}, vocabulary=str(spiece), variants=("sbs",))
    data = register.get_task_info("mem_sbs").split_data["train"]
    assert data.has_teacher and data.parse_failures == sum(not ex.rationale for ex in examples)
    note = register.check_rationales("mem_sbs", "train", max_unparsed_fraction=0.5)
    assert (note is None) if data.parse_failures == 0 else (f"{data.parse_failures} of 40" in note)
    bare = [dataclasses.replace(ex, rationale="", teacher_label="") for ex in examples]
    register.register_examples_task("bare", {"train": bare}, vocabulary=str(spiece), variants=("sbs",))
    assert not register.get_task_info("bare_sbs").split_data["train"].has_teacher
    with pytest.raises(DataError, match="trains step-by-step but split 'train' has no teacher rationales"):
        register.check_rationales("bare_sbs", "train", max_unparsed_fraction=0.5)
