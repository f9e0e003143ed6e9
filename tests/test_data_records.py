"""Reading the official layout: teacher statistics against the datasets README, and bad input."""
import json
import re
import shutil

import pytest

from sbs_jax.data.records import data_dir as records
from sbs_jax.data.records.data_dir import DataError

SPLITS = [("cqa", "train", "CQA train"), ("esnli", "valid", "e-SNLI valid"), ("anli1", "valid", "ANLI-R1 valid"),
          ("svamp", "train", "SVAMP train"), ("svamp", "test", "SVAMP test")]


def _readme_numbers(datasets_dir):
    """Parse failures and teacher accuracy as the README states them (its own, independent computation)."""
    text = " ".join((datasets_dir / "README.md").read_text().split())
    fails_text = re.search(r"counted with the rules above: (.*?)\)", text).group(1)
    acc_text = re.search(r"Teacher accuracy .*?: (CQA train.*?) \(equations", text).group(1)
    # "SVAMP train 73.25% and test 74.00%": the test split is named once for both SVAMP numbers.
    acc_text = acc_text.replace("and test", "SVAMP test")
    fails = {label: int(re.search(re.escape(label) + r" (\d+)", fails_text).group(1)) for *_, label in SPLITS}
    acc = {label: float(re.search(re.escape(label) + r" ([\d.]+)%", acc_text).group(1)) for *_, label in SPLITS}
    return fails, acc


@pytest.mark.parametrize("name,split,label", SPLITS)
def test_teacher_statistics_match_readme(datasets_dir, name, split, label):
    fails, acc = _readme_numbers(datasets_dir)
    data = records.read_split(datasets_dir, name, split)
    assert data.parse_failures == fails[label]
    assert round(data.teacher_accuracy, 2) == acc[label]
    assert all(bool(ex.rationale) == bool(ex.teacher_label) for ex in data.examples)
    assert sum(not ex.rationale for ex in data.examples) == fails[label]


def test_model_inputs_follow_the_paper(datasets_dir):
    cqa = records.read_split(datasets_dir, "cqa", "train").examples[0]
    assert cqa.input.startswith('"There are 10 apples')
    assert cqa.input.endswith("\nAnswer Choices:\n(a) park\n(b) coloring book\n(c) garden center\n"
                              "(d) math problem\n(e) gravity")
    assert cqa.label == "math problem" and cqa.teacher_label == "math problem"
    esnli = records.read_split(datasets_dir, "esnli", "valid").examples[0]
    assert esnli.input == ("Two women are embracing while holding to go packages.</s>The sisters are hugging "
                           "goodbye while holding to go packages after just eating lunch.")
    assert esnli.label == "neutral"
    svamp = records.read_split(datasets_dir, "svamp", "test").examples[0]
    assert svamp.label == "( 10.0 * 45.0 )" and "\nHow many seeds" in svamp.input
    assert records.list_splits(datasets_dir, "svamp") == ["test", "train"]


# --- bad input: one clear error naming the file, line or field -----------------------------------------


@pytest.fixture()
def svamp_dir(tmp_path, datasets_dir):
    """A small writable copy of the svamp layout: 3 examples, 3 teacher outputs."""
    root = tmp_path / "data"
    (root / "svamp" / "llm").mkdir(parents=True)
    lines = (datasets_dir / "svamp" / "svamp_test.json").read_text().splitlines()[:3]
    (root / "svamp" / "svamp_test.json").write_text("\n".join(lines) + "\n")
    outs = json.loads((datasets_dir / "svamp" / "llm" / "test_CoT_0.json").read_text())[:3]
    (root / "svamp" / "llm" / "test_CoT_0.json").write_text(json.dumps(outs))
    return root


def _write_line(root, lineno, text):
    path = root / "svamp" / "svamp_test.json"
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def test_small_copy_reads(svamp_dir):
    assert len(records.read_split(svamp_dir, "svamp", "test").examples) == 3


def test_malformed_json_line(svamp_dir):
    path = _write_line(svamp_dir, 2, '{"input": "x", "label": ')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: malformed JSON")):
        records.read_split(svamp_dir, "svamp", "test")


def test_missing_field(svamp_dir):
    path = _write_line(svamp_dir, 3, '{"input": "How many?"}')
    with pytest.raises(DataError, match=re.escape(f"{path}:3: missing field 'label'")):
        records.read_split(svamp_dir, "svamp", "test")


def test_wrong_field_type(svamp_dir):
    path = _write_line(svamp_dir, 1, '{"input": "How many?", "label": 3}')
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'label' is int")):
        records.read_split(svamp_dir, "svamp", "test")


def test_not_an_object(svamp_dir):
    path = _write_line(svamp_dir, 1, '["input", "label"]')
    with pytest.raises(DataError, match=re.escape(f"{path}:1: expected a JSON object")):
        records.read_split(svamp_dir, "svamp", "test")


def test_blank_line(svamp_dir):
    path = _write_line(svamp_dir, 2, "   ")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: blank line")):
        records.read_split(svamp_dir, "svamp", "test")


def test_empty_split_file(svamp_dir):
    (svamp_dir / "svamp" / "svamp_test.json").write_text("")
    with pytest.raises(DataError, match="svamp_test.json: no examples"):
        records.read_split(svamp_dir, "svamp", "test")


def test_teacher_count_mismatch(svamp_dir):
    (svamp_dir / "svamp" / "llm" / "test_CoT_0.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match=r"test_CoT_\*\.json \(1 files\): 2 teacher outputs for 3 examples"):
        records.read_split(svamp_dir, "svamp", "test")


def test_teacher_file_not_a_list_of_strings(svamp_dir):
    path = svamp_dir / "svamp" / "llm" / "test_CoT_0.json"
    path.write_text(json.dumps(["a", 7, "c"]))
    with pytest.raises(DataError, match=re.escape(f"{path}: item 1 is int, expected a string")):
        records.read_split(svamp_dir, "svamp", "test")
    path.write_text('{"a": 1}')
    with pytest.raises(DataError, match="expected a JSON list of teacher completions, got dict"):
        records.read_split(svamp_dir, "svamp", "test")


def test_teacher_files_with_a_gap(svamp_dir):
    llm = svamp_dir / "svamp" / "llm"
    shutil.copy(llm / "test_CoT_0.json", llm / "test_CoT_2.json")
    with pytest.raises(DataError, match=r"missing test_CoT_1\.json"):
        records.read_split(svamp_dir, "svamp", "test")


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match=f"data dir {tmp_path / 'nope'} does not exist"):
        records.list_splits(tmp_path / "nope", "svamp")


def test_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match="no folder for dataset 'svamp' \\(data dir holds nothing\\)"):
        records.list_splits(tmp_path, "svamp")
    (tmp_path / "svamp").mkdir()
    with pytest.raises(DataError, match="no split files \\(expected svamp_<split>.json"):
        records.list_splits(tmp_path, "svamp")


def test_unknown_dataset(svamp_dir):
    with pytest.raises(ValueError, match="unknown dataset 'gsm8k'; expected one of"):
        records.read_split(svamp_dir, "gsm8k", "train")


def test_missing_split(svamp_dir):
    with pytest.raises(DataError, match="split 'train' does not exist for svamp \\(found splits: test\\)"):
        records.read_split(svamp_dir, "svamp", "train")


def test_bad_nli_label(tmp_path):
    (tmp_path / "esnli").mkdir()
    path = tmp_path / "esnli" / "esnli_valid.json"
    path.write_text('{"premise": "p", "hypothesis": "h", "label": 5}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'label' is 5, expected 0, 1 or 2")):
        records.read_split(tmp_path, "esnli", "valid")
