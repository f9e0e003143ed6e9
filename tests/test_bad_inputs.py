"""Bad input, as a new user makes it: each case runs an `sbs` command in-process on copies of the shared data and
asserts the exit code (2 = user mistake), that the message names the file/line/field/tensor/macro, that no
traceback is printed, and that the inputs and any pre-existing run directory are byte-identical afterwards.

The run directory used as "an existing run" is made once by the trainer's own code (run files, a step-0 state
saved as checkpoint 1) without compiling a train step; the kill test (slow) trains for real in a subprocess.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

from sbs_jax import cli, errors, run_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
LENGTHS = "{'inputs': 32, 'targets': 8, 'rationales': 16}"
NON_UTF8 = b"\xff\xfe not utf-8 \xc3\x28"


# ------------------------------------------------------------------------------------------ helpers
def tree_hashes(*roots: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under the roots (and the set of paths): byte-identity of whole trees."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def sbs(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_error(code: int, err: str, expected_code: int, *needles: str) -> str:
    """The contract: exit code, no traceback, one `sbs <cmd>: error:` message of at most two lines that
    contains every needle."""
    assert "Traceback" not in err, err
    assert code == expected_code, err
    start = err.find(": error: ")
    assert start >= 0 and err[:start].rsplit("\n", 1)[-1].startswith("sbs"), err
    message = err[start + len(": error: "):].strip()
    assert len(message.splitlines()) <= 2, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def _write_jsonl(path: pathlib.Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _copy_dataset(src: pathlib.Path, dst: pathlib.Path, name: str, split: str, n: int) -> None:
    """The first n examples of a split and their teacher outputs, in the official layout."""
    lines = (src / name / f"{name}_{split}.json").read_text(encoding="utf-8").splitlines()[:n]
    _write_jsonl(dst / name / f"{name}_{split}.json", lines)
    outputs = []
    for i in range(20):
        f = src / name / "llm" / f"{split}_CoT_{i}.json"
        if not f.exists() or len(outputs) >= n:
            break
        outputs += json.loads(f.read_text(encoding="utf-8"))
    (dst / name / "llm").mkdir(parents=True, exist_ok=True)
    (dst / name / "llm" / f"{split}_CoT_0.json").write_text(json.dumps(outputs[:n]), encoding="utf-8")


@pytest.fixture(scope="module")
def small_data(datasets_dir, tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("small_data")
    _copy_dataset(datasets_dir, root, "svamp", "train", 80)
    _copy_dataset(datasets_dir, root, "svamp", "test", 16)
    _copy_dataset(datasets_dir, root, "cqa", "train", 40)
    _copy_dataset(datasets_dir, root, "esnli", "valid", 30)
    _copy_dataset(datasets_dir, root, "anli1", "valid", 30)
    return root


@pytest.fixture
def data(small_data, tmp_path) -> pathlib.Path:
    """A private copy of the small data dir that a case may break."""
    return pathlib.Path(shutil.copytree(small_data, tmp_path / "data"))


@pytest.fixture(scope="module")
def spm(small_data, tmp_path_factory) -> pathlib.Path:
    from sbs_jax.data.records import data_dir as records
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

    examples = records.read_split(small_data, "svamp", "train").examples
    return vocab_lib.train_vocabulary(vocab_lib.model_texts(examples), tmp_path_factory.mktemp("spm"),
                                      vocab_size=200)


def train_flags(data_dir, spm_path, model_dir, *extra, model="t5_1_1_tiny", run="finetune") -> list[str]:
    return [f"--gin_file=models/{model}.gin", f"--gin_file=runs/{run}.gin", "--gin_file=datasets/svamp.gin",
            f"--gin.DATA_DIR='{data_dir}'", f"--gin.SPIECE_MODEL='{spm_path}'", f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.VOCAB_SIZE=256", "--gin.model_config.d_model=16", "--gin.model_config.num_layers=1",
            "--gin.COMPUTE_DTYPE='float32'", "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8", "--gin.EVAL_EVERY=0",
            "--gin.VALIDATION_SPLIT=None", "--gin.TEST_SPLIT=None", "--gin.SAVE_EVERY=1",
            f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.TrainConfig.tensorboard=False", *extra]


@pytest.fixture(scope="module")
def existing_run(small_data, spm, tmp_path_factory) -> pathlib.Path:
    """A t5_1_1_tiny svamp_ft run directory as `sbs train` leaves it after saving step 1, made with the
    trainer's own code (operative config, run files, a checkpoint) but without compiling a train step."""
    from sbs_jax.commands import gin_utils, train as train_main
    from sbs_jax.train import trainer

    model_dir = tmp_path_factory.mktemp("existing") / "run"
    fv = train_main._flags()
    fv(["sbs train"] + gin_utils.rewrite_gin_args(train_flags(small_data, spm, model_dir)))
    gin_utils.parse(fv.gin_file, fv.gin_bindings)
    config = gin_utils.build("TrainConfig")
    t = trainer.Trainer(config)
    gin_utils.write_operative_config(model_dir)
    t.write_run_files()
    state, _ = t.initial_state()
    t.checkpointer.save(1, state, data_position=1, seed=config.seed)
    t.checkpointer.close()
    return model_dir


@pytest.fixture
def run(existing_run, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(existing_run, tmp_path / "run"))


# ------------------------------------------------------------------------------------------ data files
def _edit_line(path: pathlib.Path, index: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[index])
    edit(record)
    lines[index] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


DATA_CASES = {
    # name: (dataset, break(data_dir), needles)
    "cqa answer not among choices": (
        "cqa", lambda d: _edit_line(d / "cqa/cqa_train.json", 4, lambda r: r.update(answer="zebra crossing")),
        ["cqa_train.json:5", "'answer'", "zebra crossing", "choices"]),
    "cqa choices empty": (
        "cqa", lambda d: _edit_line(d / "cqa/cqa_train.json", 0, lambda r: r.update(choices=[])),
        ["cqa_train.json:1", "'choices'", "0 entries"]),
    "nli label out of the label set": (
        "esnli", lambda d: _edit_line(d / "esnli/esnli_valid.json", 2, lambda r: r.update(label=5)),
        ["esnli_valid.json:3", "'label'", "0, 1 or 2"]),
    "nli label as a string": (
        "anli1", lambda d: _edit_line(d / "anli1/anli1_valid.json", 0, lambda r: r.update(label="entailment")),
        ["anli1_valid.json:1", "'label'", "expected int"]),
    "svamp equation does not parse": (
        "svamp", lambda d: _edit_line(d / "svamp/svamp_train.json", 6, lambda r: r.update(label="( 84.0 / ")),
        ["svamp_train.json:7", "'label'", "does not parse"]),
    "svamp equation with a name": (
        "svamp", lambda d: _edit_line(d / "svamp/svamp_test.json", 0, lambda r: r.update(label="( x + 2.0 )")),
        ["svamp_test.json:1", "name 'x'"]),
    "svamp equation is code": (
        "svamp", lambda d: _edit_line(d / "svamp/svamp_train.json", 0, lambda r: r.update(
            label="__import__('pathlib').Path('PWNED').touch()")),
        ["svamp_train.json:1", "is not allowed"]),
    "missing field": (
        "svamp", lambda d: _edit_line(d / "svamp/svamp_train.json", 2, lambda r: r.pop("input")),
        ["svamp_train.json:3", "missing field 'input'"]),
    "malformed JSON line": (
        "svamp", lambda d: (d / "svamp/svamp_train.json").write_text(
            (d / "svamp/svamp_train.json").read_text() + '{"input": "x", "label": \n'),
        ["svamp_train.json:81", "malformed JSON"]),
    "non-UTF-8 split file": (
        "svamp", lambda d: (d / "svamp/svamp_test.json").write_bytes(NON_UTF8),
        ["svamp_test.json", "not UTF-8"]),
    "non-UTF-8 teacher file": (
        "cqa", lambda d: (d / "cqa/llm/train_CoT_0.json").write_bytes(b'["ok", "' + NON_UTF8 + b'"]'),
        ["cqa/llm/train_CoT_0.json", "not UTF-8"]),
    "teacher outputs fewer than examples": (
        "svamp", lambda d: (d / "svamp/llm/test_CoT_0.json").write_text(json.dumps(["The answer is (1)."] * 3)),
        ["test_CoT_*.json", "3 teacher outputs for 16 examples"]),
    "teacher file not a list": (
        "anli1", lambda d: (d / "anli1/llm/valid_CoT_0.json").write_text('{"0": "x"}'),
        ["anli1/llm/valid_CoT_0.json", "expected a JSON list"]),
    "teacher files not numbered from 0": (
        "esnli", lambda d: (d / "esnli/llm/valid_CoT_0.json").rename(d / "esnli/llm/valid_CoT_1.json"),
        ["esnli/llm", "missing valid_CoT_0.json"]),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_data_check_names_the_bad_record(case, data, capsys):
    dataset, breaking, needles = DATA_CASES[case]
    breaking(data)
    before = tree_hashes(data)
    code, err = sbs(capsys, "data", "check", "--data_dir", data, "--dataset", dataset)
    assert_error(code, err, 2, *needles)
    assert tree_hashes(data) == before
    assert not pathlib.Path("PWNED").exists()  # the equation was never evaluated


def test_data_check_of_a_missing_data_dir_and_unknown_dataset(tmp_path, capsys):
    code, err = sbs(capsys, "data", "check", "--data_dir", tmp_path / "nope", "--dataset", "svamp")
    assert_error(code, err, 2, str(tmp_path / "nope"), "does not exist")
    code, err = sbs(capsys, "data", "check", "--data_dir", tmp_path, "--dataset", "gsm8k")
    assert_error(code, err, 2, "gsm8k", "expected one of")


def test_a_spiece_model_of_random_bytes_is_named(data, tmp_path, capsys):
    bad = tmp_path / "spiece.model"
    bad.write_bytes(bytes(range(256)) * 8)  # not a serialized SentencePiece model
    before = tree_hashes(data)
    code, err = sbs(capsys, "data", "check", "--data_dir", data, "--dataset", "svamp", "--spiece_model", bad)
    assert_error(code, err, 2, str(bad), "not a SentencePiece model")
    code, err = sbs(capsys, "train", *train_flags(data, bad, tmp_path / "new"))
    assert_error(code, err, 2, str(bad), "not a SentencePiece model")
    assert tree_hashes(data) == before and not (tmp_path / "new").exists()


def test_a_fraction_that_rounds_and_every_filter_say_what_they_kept(data, spm, capsys):
    from sbs_jax import tasks

    capsys.readouterr()
    tasks.register_paper_tasks(str(data), datasets=["svamp"], vocabulary=str(spm), valid_from_train=0.1,
                               train_fraction=0.001)
    # 80 examples, 8 carved off for validation: 0.1 % of 72 is 0.072 examples, and one is kept.
    assert "note: svamp: train_fraction 0.001 of 72 train examples is 0.072; keeping 1 (1.39 %)" in \
        capsys.readouterr().out
    tasks.register_paper_tasks(str(data), datasets=["svamp"], vocabulary=str(spm), valid_from_train=0.1,
                               train_fraction=0.5)
    assert "train_fraction" not in capsys.readouterr().out  # 36 of 72: no rounding, nothing to say
    tasks.register_paper_tasks(str(data), datasets=["svamp"], vocabulary=str(spm),
                               rationale_filters={"agree_with_gold": True, "drop_unparsed": True})
    out = capsys.readouterr().out
    for split in ("train", "test"):
        assert f"note: svamp {split}: rationale filters kept " in out and "unparsed -" in out, out


def test_the_unbroken_copies_pass(small_data, capsys):
    """The cases above fail because of their one break: the same data unbroken is accepted."""
    code, err = sbs(capsys, "data", "check", "--data_dir", small_data)
    assert code == 0, err


# ------------------------------------------------------------------------------------------ train
def test_another_architecture_into_an_existing_run_is_refused_and_damages_nothing(run, data, spm, tmp_path,
                                                                                  capsys):
    before = tree_hashes(run, data)
    code, err = sbs(capsys, "train", *train_flags(data, spm, run, model="t5_1_0_tiny"))
    assert_error(code, err, 2, str(run), "feed_forward_proj: 'gated-gelu' in the run, 'relu' now",
                 "tie_word_embeddings", "nothing was written")
    assert tree_hashes(run, data) == before
    code, err = sbs(capsys, "export", "--checkpoint", run, "--format", "hf", "--output", tmp_path / "hf")
    assert code == 0, err  # the old run still exports
    assert (tmp_path / "hf" / "config.json").is_file()


def test_another_task_or_seed_into_an_existing_run_is_refused(run, data, spm, capsys):
    before = tree_hashes(run, data)
    code, err = sbs(capsys, "train", *train_flags(data, spm, run, run="step_by_step"))
    assert_error(code, err, 2, "task: 'svamp_ft' in the run, 'svamp_sbs' now")
    code, err = sbs(capsys, "train", *train_flags(data, spm, run, "--gin.SEED=7"))
    assert_error(code, err, 2, "seed: 0 in the run, 7 now")
    assert tree_hashes(run, data) == before


def test_model_dir_that_is_a_file(data, spm, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    code, err = sbs(capsys, "train", *train_flags(data, spm, target))
    assert_error(code, err, 2, str(target), "is a file")
    assert target.read_text() == "keep me"


def test_step_by_step_without_teacher_outputs_is_an_error(data, spm, tmp_path, capsys):
    shutil.rmtree(data / "svamp" / "llm")
    before = tree_hashes(data)
    code, err = sbs(capsys, "train", *train_flags(data, spm, tmp_path / "new", run="step_by_step"))
    assert_error(code, err, 2, f"{data / 'svamp'}/llm/train_CoT_0.json", "sbs teacher generate", "svamp_sbs")
    assert tree_hashes(data) == before and not (tmp_path / "new").exists()


def test_step_by_step_with_too_many_unparsed_outputs_stops_with_the_counts(data, spm, tmp_path, capsys):
    teacher = data / "svamp" / "llm" / "train_CoT_0.json"
    outputs = json.loads(teacher.read_text())
    teacher.write_text(json.dumps(["no answer here"] * 30 + outputs[30:]))
    before = tree_hashes(data)
    code, err = sbs(capsys, "train", *train_flags(data, spm, tmp_path / "new", run="step_by_step"))
    # 80 examples, 10 % carved off for validation: the train split keeps 72; unparsed ones are recounted there.
    message = assert_error(code, err, 2, "svamp_sbs", "of 72 teacher outputs", "max_unparsed_fraction")
    assert tree_hashes(data) == before and not (tmp_path / "new").exists()
    # Below the limit the same data trains, with the count reported (the limit is TrainConfig's, gin-settable).
    from sbs_jax.data.registry import register

    missing = int(message.split("': ")[1].split(" of 72")[0])
    assert 25 <= missing <= 40  # 30 broken outputs, minus those carved into validation, plus natural failures
    note = register.check_rationales("svamp_sbs", "train", 0.6)
    assert note.startswith(f"note: svamp_sbs train: {missing} of 72 teacher outputs")


GIN_CASES = {
    "unclosed bracket in a gin file": (["--gin_file={bad_gin}"], ["bad.gin", "line 2", "unclosed '['"]),
    "unquoted string macro": (["--gin.MODEL_DIR=/x"], ["MODEL_DIR", "--gin.MODEL_DIR=\"'/x'\""]),
    "unknown configurable": (["--gin.NoSuchConfig.x=1"], ["NoSuchConfig"]),
    "gin file not found": (["--gin_file=runs/no_such_file.gin"], ["no_such_file.gin", "not found"]),
    "required macro unset": (["--gin.MODEL_DIR=%gin.REQUIRED"], ["MODEL_DIR", "required but not set"]),
    "batch size zero": (["--gin.BATCH_SIZE=0"], ["TrainConfig.batch_size", "positive integer"]),
    "pack with length buckets": (["--gin.PACK=True", "--gin.LENGTH_BUCKETS=True"], ["PACK", "LENGTH_BUCKETS"]),
    "unparsed fraction out of range": (["--gin.MAX_UNPARSED_FRACTION=1.5"], ["max_unparsed_fraction", "[0, 1]"]),
    "bad flag value": (["--log_level"], ["log_level"]),
}


@pytest.mark.parametrize("case", sorted(GIN_CASES))
def test_gin_and_flag_mistakes(case, data, spm, tmp_path, capsys):
    extra, needles = GIN_CASES[case]
    bad_gin = tmp_path / "bad.gin"
    bad_gin.write_text("TRAIN_STEPS = 1\nTrainConfig.batch_size = [4\n")
    extra = [e.format(bad_gin=bad_gin) for e in extra]
    before = tree_hashes(data)
    code, err = sbs(capsys, "train", *train_flags(data, spm, tmp_path / "new"), *extra)
    assert_error(code, err, 2, *needles)
    assert tree_hashes(data) == before and not (tmp_path / "new").exists()


def test_missing_initial_checkpoint_is_named(data, spm, tmp_path, capsys):
    missing = tmp_path / "no_such_checkpoint"
    code, err = sbs(capsys, "train", *train_flags(data, spm, tmp_path / "new",
                                                  f"--gin.INITIAL_CHECKPOINT_PATH='{missing}'"))
    assert_error(code, err, 2, str(missing), "no such file or directory")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------ infer, eval, export
def _infer(capsys, run_path, input_path, out):
    return sbs(capsys, "infer", "--gin_file=runs/infer.gin", f"--gin.MODEL_DIR='{run_path}'",
               f"--gin.INFER_INPUT='{input_path}'", f"--gin.INFER_OUTPUT='{out}'", "--gin.INPUT_LENGTH=32",
               "--gin.TARGET_LENGTH=8")


def test_infer_on_a_run_without_checkpoints(run, tmp_path, capsys):
    shutil.rmtree(run / "checkpoints")
    questions = tmp_path / "q.txt"
    questions.write_text("Tom has 3 apples.\n")
    before = tree_hashes(run, questions)
    code, err = _infer(capsys, run, questions, tmp_path / "out.jsonl")
    assert_error(code, err, 2, str(run / "checkpoints"), "no checkpoints")
    assert tree_hashes(run, questions) == before and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("name,content,needles", [
    ("q.txt", b"fine line\n" + NON_UTF8 + b"\n", ["q.txt:2", "not UTF-8"]),
    ("q.jsonl", b'{"input": "a"}\n{"input": \n', ["q.jsonl:2", "not valid JSON"]),
    ("q.jsonl", b'{"input": "a"}\n{"question": "b"}\n', ["q.jsonl:2", "string field 'input'"]),
])
def test_infer_bad_input_file(run, tmp_path, capsys, name, content, needles):
    path = tmp_path / name
    path.write_bytes(content)
    before = tree_hashes(run, path)
    code, err = _infer(capsys, run, path, tmp_path / "out.jsonl")
    assert_error(code, err, 2, *needles)
    assert tree_hashes(run, path) == before and not (tmp_path / "out.jsonl").exists()


def test_infer_missing_input_file(run, tmp_path, capsys):
    code, err = _infer(capsys, run, tmp_path / "absent.txt", tmp_path / "out.jsonl")
    assert_error(code, err, 2, str(tmp_path / "absent.txt"), "not found")


def test_eval_on_a_run_without_checkpoints(run, data, spm, capsys):
    shutil.rmtree(run / "checkpoints")
    before = tree_hashes(run, data)
    code, err = sbs(capsys, "eval", "--gin_file=runs/eval.gin", "--gin_file=datasets/svamp.gin",
                    f"--gin.DATA_DIR='{data}'", f"--gin.SPIECE_MODEL='{spm}'", f"--gin.MODEL_DIR='{run}'",
                    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}")
    assert_error(code, err, 2, str(run / "checkpoints"), "no checkpoints")
    assert tree_hashes(run, data) == before


def test_export_reads_lengths_from_run_json_and_names_a_broken_one(run, tmp_path, capsys):
    from sbs_jax.commands import export as export_cli

    assert export_cli.run_feature_lengths(run) == {"inputs": 32, "targets": 8, "rationales": 16}
    (run / "run.json").write_text('{"task": "svamp_ft", ')
    before = tree_hashes(run)
    code, err = sbs(capsys, "export", "--checkpoint", run, "--format", "hf", "--output", tmp_path / "hf")
    assert_error(code, err, 2, str(run / "run.json"), "not valid JSON")
    assert tree_hashes(run) == before


def test_export_and_convert_of_missing_checkpoints(tmp_path, capsys):
    code, err = sbs(capsys, "export", "--checkpoint", tmp_path / "nope", "--format", "hf", "--output", tmp_path / "o")
    assert_error(code, err, 2, str(tmp_path / "nope"))
    code, err = sbs(capsys, "convert", "--from", "hf", "--input", tmp_path / "nope", "--output", tmp_path / "o")
    assert_error(code, err, 2, str(tmp_path / "nope"))
    assert not (tmp_path / "o").exists()


def test_vocab_train_on_a_non_utf8_text_file(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"hello\n" + NON_UTF8)
    code, err = sbs(capsys, "vocab", "train", "--text_file", text, "--output_dir", tmp_path / "v", "--vocab_size", 50)
    assert_error(code, err, 2, "corpus.txt:2", "not UTF-8")
    assert not (tmp_path / "v").exists()


def test_teacher_generate_with_a_missing_examples_file(tmp_path, capsys):
    code, err = sbs(capsys, "teacher", "generate", "--task", "svamp", "--split", "train", "--data_dir", tmp_path,
                    "--endpoint", "http://127.0.0.1:9", "--model", "t", "--out", tmp_path / "out")
    assert_error(code, err, 2, "svamp_train.json", "not found")


def test_quickstart_with_an_unparsable_binding(tmp_path, capsys):
    code, err = sbs(capsys, "quickstart", "--workdir", tmp_path / "qs", "--gin", "TRAIN_STEPS = = 2")
    assert_error(code, err, 2, "TRAIN_STEPS = = 2")
    assert not list((tmp_path / "qs").rglob("*.gin"))


# ------------------------------------------------------------------------------------------ the boundary itself
def test_internal_failure_is_one_line_exit_1_and_traceback_only_when_asked(monkeypatch, tmp_path, capsys):
    from sbs_jax.data.records import datasets

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(datasets, "load_splits", broken)
    (tmp_path / "svamp").mkdir()
    code, err = sbs(capsys, "data", "check", "--data_dir", tmp_path, "--dataset", "svamp")
    message = assert_error(code, err, 1, "internal error: RuntimeError: simulated bug", "--verbose")
    assert len(message.splitlines()) == 2
    code, err = sbs(capsys, "data", "check", "--data_dir", tmp_path, "--dataset", "svamp", "--verbose")
    assert code == 1 and "Traceback" in err and "simulated bug" in err
    monkeypatch.setenv("SBS_DEBUG", "1")
    code, err = sbs(capsys, "data", "check", "--data_dir", tmp_path, "--dataset", "svamp")
    assert code == 1 and "Traceback" in err


def test_unknown_command(capsys):
    code, err = sbs(capsys, "trian")
    assert_error(code, err, 2, "unknown command 'trian'", "train")


def test_value_error_from_a_library_is_internal_not_a_user_mistake():
    import numpy as np

    try:
        np.reshape(np.zeros(3), (2, 2))
    except ValueError as e:
        code, message = errors.classify(e)
    assert code == 1 and message.startswith("internal error: ValueError")
    from sbs_jax.model import get_config

    try:
        get_config("t5_9_9_huge")  # a ValueError our own validation raises: a user mistake
    except ValueError as e:
        code, message = errors.classify(e)
    assert code == 2 and message.startswith("unknown T5 preset 't5_9_9_huge'")


# ------------------------------------------------------------------------------------------ atomic writes
@pytest.mark.slow  # a real `sbs train` in a subprocess: start-up, task registration and one compiled step
def test_sigkill_while_writing_run_files_leaves_the_run_loadable(existing_run, small_data, spm, tmp_path):
    """Resume an existing run and SIGKILL the process half-way through writing run.json (after it has
    rewritten config.gin and model_config.json): every file is whole, old or new, and the run still loads."""
    model_dir = pathlib.Path(shutil.copytree(existing_run, tmp_path / "run"))
    old = {name: (model_dir / name).read_bytes() for name in ("config.gin", "model_config.json", "run.json")}
    env = {**os.environ, "SBS_TEST_KILL_DURING_WRITE": "run.json", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "sbs_jax.cli", "train", *train_flags(small_data, spm, model_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (model_dir / "run.json").read_bytes() == old["run.json"]
    assert json.loads((model_dir / "model_config.json").read_text()) == json.loads(old["model_config.json"])
    assert run_dir.read_run_info(model_dir)["task"] == "svamp_ft"
    config, params, vocab = run_dir.load_params(model_dir)
    assert config.d_model == 16 and vocab is not None and "token_embedder" in params
    leftovers = list(model_dir.glob(".run.json.tmp*"))
    assert leftovers and 0 < leftovers[0].stat().st_size < len(old["run.json"])  # the kill did land mid-write
    # And the interrupted run resumes: the same command without the hook trains to the end.
    del env["SBS_TEST_KILL_DURING_WRITE"]
    proc = subprocess.run([sys.executable, "-m", "sbs_jax.cli", "train", *train_flags(small_data, spm, model_dir),
                           "--gin.TRAIN_STEPS=2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((model_dir / "summary.json").read_text())["final_step"] == 2
    assert run_dir.read_run_info(model_dir)["created"] == json.loads(old["run.json"])["created"]  # kept on resume
