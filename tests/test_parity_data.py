"""Parity with the official code's data handling, against a reference built with HF `datasets`/`transformers`
(bench/parity_reference.py): example selection for every dataset / fraction / run, the tokens of every
example, and the scoring of decoded predictions (SVAMP equations without executing anything)."""
import collections
import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from bench import parity_reference as ref  # noqa: E402
from sbs_jax.data.records import formats  # noqa: E402
from sbs_jax.data.scoring import metrics
from sbs_jax.data.registry import prefixes
from sbs_jax.data.records import data_dir as records
from sbs_jax.data.registry import selection
from sbs_jax.data.registry import splits
from sbs_jax.data.vocab import sentencepiece_vocab as vocab

FRACTIONS = (0.125, 0.25, 0.5, 1.0)
RUNS = (0, 1, 2)
# Datasets whose data dir has a train split get the official validation carve-out; e-SNLI and ANLI keep
# their own validation split, and the only split present here ("valid") stands in for the subsampled one.
SUBSAMPLED_SPLIT = {"cqa": "train", "svamp": "train", "esnli": "valid", "anli1": "valid"}


def _raw(datasets_dir, name, split):
    path = datasets_dir / name / f"{name}_{split}.json"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("n,test_size,seed", [(10, 0.1, 0), (9741, 0.875, 2), (800, 0.75, 1), (1000, 0.5, 0),
                                              (7, 0.3, 5), (1217, 0.1, 0)])
def test_hf_split_indices_equal_datasets_in_order(n, test_size, seed):
    import datasets

    ds = datasets.Dataset.from_dict({"row": list(range(n))}).train_test_split(test_size=test_size, seed=seed)
    train, test = selection.hf_train_test_split(n, test_size, seed)
    assert train.tolist() == ds["train"]["row"] and test.tolist() == ds["test"]["row"]


@pytest.mark.parametrize("name", sorted(SUBSAMPLED_SPLIT))
def test_official_selection_equals_reference(name, datasets_dir):
    split = SUBSAMPLED_SPLIT[name]
    examples = records.read_split(datasets_dir, name, split).examples
    row_of = {id(ex): i for i, ex in enumerate(examples)}
    carve = split == "train"
    for fraction in FRACTIONS:
        for run in RUNS:
            planned = splits.plan_splits({"train": examples}, valid_from_train=0.1 if carve else None,
                                         train_fraction=fraction, seed=run, selection="official")
            ref_train, ref_valid = ref.reference_selection(len(examples), fraction, run, carve)
            ours_train = [row_of[id(ex)] for ex in planned["train"]]
            assert ours_train == sorted(ref_train), (name, fraction, run)  # same rows, kept in file order
            # ... and the same example sets by input text
            assert (collections.Counter(ex.input for ex in planned["train"])
                    == collections.Counter(examples[i].input for i in ref_train))
            if carve:
                assert [row_of[id(ex)] for ex in planned["validation"]] == sorted(ref_valid)
            else:
                assert "validation" not in planned


def test_official_and_our_selection_differ_where_documented(datasets_dir):
    examples = records.read_split(datasets_dir, "svamp", "train").examples
    official = [splits.plan_splits({"train": examples}, valid_from_train=0.1, train_fraction=f, seed=0,
                                   selection="official") for f in (0.25, 1.0)]
    ours = [splits.plan_splits({"train": examples}, valid_from_train=0.1, train_fraction=f, seed=0)
            for f in (0.25, 1.0)]
    # Ours: one validation split for every fraction. Official: carved from each subsample (10% of it).
    assert ours[0]["validation"] == ours[1]["validation"] and len(ours[0]["validation"]) == 80
    assert len(official[0]["validation"]) == math.ceil(0.1 * 200) and len(official[1]["validation"]) == 80
    assert not set(map(id, official[0]["validation"])) & set(map(id, official[0]["train"]))


def test_selection_needs_no_datasets_at_runtime():
    code = ("import sys; from sbs_jax.data.registry import selection, splits; import sbs_jax.commands.export; "
            "selection.hf_train_test_split(10, 0.5, 0); assert 'datasets' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_selection_settings_are_clear_errors():
    examples = [records.Example(f"q{i}", "a") for i in range(3)]
    with pytest.raises(ValueError, match="selection must be one of"):
        splits.plan_splits({"train": examples}, train_fraction=0.5, selection="paper")
    with pytest.raises(records.DataError, match="3 train examples.*leave no train examples"):
        splits.plan_splits({"train": examples}, train_fraction=0.125, selection="official")


# ------------------------------------------------------------------------------------------------ tokens
@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory, datasets_dir):
    """A unigram SentencePiece model over text of all four datasets (HF's T5Tokenizer reads unigram exactly)."""
    texts = []
    for name, split in SUBSAMPLED_SPLIT.items():
        texts += vocab.model_texts(records.read_split(datasets_dir, name, split).examples[:150])
    directory = tmp_path_factory.mktemp("spiece")
    vocab.train_vocabulary(texts, directory, vocab_size=1000, seed=0)
    return directory


def _our_tokens(task_name, split, lengths, limit):
    import seqio

    ds = seqio.get_mixture_or_task(task_name).get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
    return [{k: v.tolist() for k, v in ex.items() if k in lengths} for ex in ds.take(limit).as_numpy_iterator()]


def _check_tokens(name, variant, spiece_dir, datasets_dir, limit):
    from sbs_jax import tasks

    split = SUBSAMPLED_SPLIT[name]
    tasks.register_paper_tasks(str(datasets_dir), datasets=[name], vocabulary=str(spiece_dir / "spiece.model"),
                               variants=[variant], selection="official", prefix_style="official")
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(spiece_dir), extra_ids=0)
    lengths = {"inputs": 1024, "targets": 256, "rationale_inputs": 1024, "rationales": 256}
    ours = _our_tokens(f"{name}_{variant}", split, lengths, limit)
    raw = _raw(datasets_dir, name, split)[:len(ours)]
    assert len(ours) == min(limit, len(_raw(datasets_dir, name, split)))
    method = "step_by_step" if variant == "sbs" else "standard"
    predict, explain = ref.reference_prefixes(method)
    inputs = [ref.reference_input(name, r, tokenizer.eos_token) for r in raw]
    expected = {"inputs": ref.reference_tokens(tokenizer, [predict + x for x in inputs], 1024),
                "targets": ref.reference_tokens(tokenizer, [ref.reference_label(name, r) for r in raw], 256)}
    if variant == "sbs":
        parsed = records.read_split(datasets_dir, name, split).examples[:len(ours)]
        expected["rationale_inputs"] = ref.reference_tokens(tokenizer, [explain + x for x in inputs], 1024)
        expected["rationales"] = ref.reference_tokens(tokenizer, [ex.rationale for ex in parsed], 256)
    for feature, rows in expected.items():
        for i, (mine, theirs) in enumerate(zip((o[feature] for o in ours), rows)):
            assert mine == theirs, (name, variant, feature, i)
    return ours


@pytest.mark.parametrize("name", sorted(SUBSAMPLED_SPLIT))
def test_tokens_equal_hf_tokenizer(name, spiece_dir, datasets_dir):
    """First 40 examples of each dataset, step-by-step (prefixed) and standard (bare input) as officially."""
    sbs = _check_tokens(name, "sbs", spiece_dir, datasets_dir, limit=40)
    ft = _check_tokens(name, "ft", spiece_dir, datasets_dir, limit=40)
    assert sbs[0]["inputs"][:3] != ft[0]["inputs"][:3]  # the prefix really is absent on standard finetuning


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SUBSAMPLED_SPLIT))
def test_tokens_equal_hf_tokenizer_every_example(name, spiece_dir, datasets_dir):
    _check_tokens(name, "sbs", spiece_dir, datasets_dir, limit=1_000_000)


def test_prefix_styles():
    assert prefixes.stream_prefixes(False, "official") == ("", "")
    assert prefixes.stream_prefixes(True, "official") == ("predict: ", "explain: ")
    assert prefixes.stream_prefixes(False, "ours") == ("predict: ", "explain: ")


# ------------------------------------------------------------------------------------------------ scoring
HOSTILE = ["__import__('os').system('touch /tmp/parity_pwned')", "(1).__class__", "open('/etc/passwd')",
           "9 ** 9 ** 9", "2 ** 10", "lambda: 1", "[1, 2]", "1 if 1 else 2", "x + 1", "1e3", "(", "((1)", "1 +",
           "", "   ", "( 84.0 / 0 )", "1 // 2", "3 % 2", "True + 1", "1; 2", "'1' + '2'", "0x10", "1_000",
           "( 1.0 +* 2 )", "((((((((((((((((((((1))))))))))))))))))))", "-(-3)", "+4", "(4.)", "(.5 * 2)",
           "007 + 1", "00 + 1", "007.5", "1.2.3", "( 3.0 ) ( 2.0 )", "2 (3)", "- - 2", "1 / 3 * 3"]
# Our grammar: digits with an optional decimal point, + - * /, parentheses, spaces. Within it our values are
# Python's; outside it every string is wrong (the official eval would accept `1e3`, `0x10`, `1_000`).
OUR_GRAMMAR = re.compile(r"[0-9.+\-*/() ]*")


def _equations(datasets_dir):
    out = [r["label"] for split in ("train", "test") for r in _raw(datasets_dir, "svamp", split)]
    for split in ("train", "test"):  # the teacher's equations, as parsed (model output: anything goes)
        out += [ex.teacher_label for ex in records.read_split(datasets_dir, "svamp", split).examples
                if ex.teacher_label]
    return out


def test_equation_values_equal_python_eval_on_all_svamp_equations(datasets_dir):
    equations = _equations(datasets_dir)
    assert len(equations) > 1900
    for eq in equations:
        theirs = ref.reference_eval_equation(eq)
        ours = metrics.try_evaluate_equation(eq)
        assert (ours is None) == math.isnan(theirs), eq
        if ours is not None:
            assert ours == theirs, eq  # bit-equal: same IEEE operations in the same order


def test_hostile_and_malformed_equations_are_wrong_and_never_run(tmp_path):
    for text in HOSTILE:
        value = metrics.try_evaluate_equation(text)
        if ref.is_plain_arithmetic(text) and OUR_GRAMMAR.fullmatch(text):
            assert value == ref.reference_eval_equation(text) or (value is None and math.isnan(
                ref.reference_eval_equation(text))), text
        else:
            assert value is None, text
        assert not (tmp_path.parent / "parity_pwned").exists() and not pathlib.Path("/tmp/parity_pwned").exists()


@pytest.mark.parametrize("name", sorted(formats.FORMATS))
def test_accuracy_equals_reference_on_decoded_predictions(name, datasets_dir, spiece_dir):
    """Fixed predictions (gold, other labels, the teacher's, hostile strings) go through token ids; our decode +
    metric equals the official batch_decode(skip_special_tokens) + `==` / eval scoring."""
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(spiece_dir), extra_ids=0)
    v = vocab.load_vocabulary(spiece_dir / "spiece.model")
    examples = records.read_split(datasets_dir, name, SUBSAMPLED_SPLIT[name]).examples[:300]
    rng = np.random.default_rng(0)
    gold = [ex.label for ex in examples]
    preds = [ex.teacher_label or ex.label for ex in examples]
    preds = [p if rng.random() < 0.7 else gold[int(rng.integers(len(gold)))] for p in preds]
    if name == "svamp":
        preds[:len(HOSTILE)] = HOSTILE
    ids = [list(v.encode(p)) + [1] for p in preds]
    gold_ids = [list(v.encode(g)) + [1] for g in gold]
    metric = metrics.OFFICIAL_METRICS[formats.FORMATS[name].metric]
    ours = metrics.METRICS[metric]([metrics.postprocess(v.decode(t[:-1])) for t in gold_ids],
                                   [metrics.postprocess(v.decode(t[:-1])) for t in ids])["accuracy"]
    theirs = ref.reference_accuracy(metric, tokenizer.batch_decode(gold_ids, skip_special_tokens=True),
                                     tokenizer.batch_decode(ids, skip_special_tokens=True))
    assert 20.0 < theirs < 95.0  # a mix of right and wrong predictions
    assert ours == pytest.approx(theirs, abs=1e-9)


# ------------------------------------------------------------------------------------------------ manifest
def test_run_manifest_lists_the_reference_selection_and_prefix(spiece_dir, datasets_dir, tmp_path):
    from sbs_jax import tasks
    from sbs_jax.train import infer

    tasks.register_paper_tasks(str(datasets_dir), datasets=["svamp"], vocabulary=str(spiece_dir / "spiece.model"),
                               variants=["sbs", "ft"], selection="official", prefix_style="official",
                               valid_from_train=0.1, train_fraction=0.5, seed=1)
    raw = {s: _raw(datasets_dir, "svamp", s) for s in ("train", "test")}
    ref_train, ref_valid = ref.reference_selection(len(raw["train"]), 0.5, 1, carve_validation=True)
    expected = {"train": sorted(ref_train), "validation": sorted(ref_valid)}
    for variant, prefix in (("ft", ""), ("sbs", "predict: ")):
        run_dir = tmp_path / variant
        selection.write_task_selection_manifest(run_dir, f"svamp_{variant}")
        record = selection.read_selection_manifest(run_dir)
        assert record["settings"] == {
            "task": f"svamp_{variant}", "variant": variant, "label_source": "gold", "prefix_style": "official",
            "label_prefix": prefix, "rationale_prefix": "explain: " if variant == "sbs" else None,
            "selection": "official", "train_fraction": 0.5, "seed": 1, "valid_from_train": 0.1,
            "rationale_sampling": "one_per_epoch", "rationale_filters": {
                "agree_with_gold": False, "drop_unparsed": False, "min_words": 0, "max_tokens": None,
                "drop_duplicates": False, "without_rationale": "label_only"}}
        for split, rows in expected.items():
            assert record["splits"][split]["inputs"] == [
                selection.input_hash(ref.reference_input("svamp", raw["train"][i])) for i in rows]
        assert record["splits"]["test"]["inputs"] == [selection.input_hash(r["input"]) for r in raw["test"]]
        # Serving reads the run's prefix: none for the official code's standard finetuning.
        assert selection.run_label_prefix(run_dir, default="predict: ") == prefix
        v = vocab.load_vocabulary(spiece_dir / "spiece.model")
        tokens = infer._examples(v, [{"input": "Tom has 3 apples."}], 32, prefix).encoder_input_tokens
        assert tokens[0][tokens[0] > 0].tolist() == list(v.encode(prefix + "Tom has 3 apples.")) + [1]
    assert selection.run_label_prefix(tmp_path / "no_run", default="predict: ") == "predict: "
    # What the trainer writes: a single task's manifest as above; a mixture's per task, with no run-wide prefix.
    selection.write_run_selection_manifest(tmp_path / "one", ["svamp_ft"])
    assert selection.read_selection_manifest(tmp_path / "one") == selection.read_selection_manifest(tmp_path / "ft")
    selection.write_run_selection_manifest(tmp_path / "mix", ["svamp_ft", "svamp_sbs"], mixture="svamp_mix")
    record = selection.read_selection_manifest(tmp_path / "mix")
    assert record["settings"] == {"mixture": "svamp_mix"} and sorted(record["tasks"]) == ["svamp_ft", "svamp_sbs"]
    assert record["tasks"]["svamp_sbs"] == selection.read_selection_manifest(tmp_path / "sbs")
    assert selection.run_label_prefix(tmp_path / "mix", default="predict: ") == "predict: "


def test_bad_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "selection.json").write_text("{not json")
    with pytest.raises(records.DataError, match=r"selection.json:1: malformed JSON"):
        selection.read_selection_manifest(tmp_path)


def test_official_gin_overrides_the_dataset_and_run_files():
    import gin

    from sbs_jax.commands import gin_utils

    gin_utils.register_configurables()
    try:
        for files in (["models/t5_1_1_tiny.gin", "runs/finetune.gin", "datasets/cqa.gin", "runs/official.gin"],
                      ["runs/eval.gin", "datasets/svamp.gin", "runs/official.gin"]):
            gin_utils.parse(files, ["RUN = 2"])
            q = gin.query_parameter
            assert q("sbs_jax.tasks.register_paper_tasks.selection") == "official"
            assert q("sbs_jax.tasks.register_paper_tasks.prefix_style") == "official"
            assert q("sbs_jax.tasks.register_paper_tasks.scoring") == "official"
            assert str(q("SEED/macro.value")) == "%RUN" and q("RUN/macro.value") == 2
            assert q("OptimizerConfig.clip_norm") == 1.0 and q("OptimizerConfig.eps") == 1e-8
            assert gin.get_configurable("DecodeConfig")().max_label_length == 63
    finally:
        gin.clear_config()


def test_svamp_files_are_the_official_split_of_svamp_json(datasets_dir):
    """The official SVAMP loader: `np.random.RandomState(0).permutation` of SVAMP.json, 800 train, rest test,
    input `Body\\nQuestion`, label the equation string."""
    full = json.loads((datasets_dir / "svamp" / "SVAMP.json").read_text())
    rows = [{"input": full[i]["Body"] + "\n" + full[i]["Question"], "label": full[i]["Equation"]}
            for i in np.random.RandomState(0).permutation(len(full))]
    assert rows[:800] == _raw(datasets_dir, "svamp", "train") and rows[800:] == _raw(datasets_dir, "svamp", "test")
