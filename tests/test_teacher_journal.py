"""The resume journal: torn tails from a killed run, corrupt lines, changed settings."""
import json

import pytest

from sbs_jax.teacher.client import TeacherError
from sbs_jax.teacher.journal import Journal

SETTINGS = {"model": "m", "temperature": 0.0}


def test_reopen_keeps_complete_lines_and_drops_a_torn_tail(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, SETTINGS, num_examples=5)
    assert j.open() == {}
    j.append({"index": 3, "output": "c"})
    j.append({"index": 0, "output": "a"}, {"index": 4, "output": "é"})
    j.close()
    complete = path.read_bytes()
    with open(path, "ab") as f:                   # a write cut short by SIGKILL
        f.write(b'{"index": 1, "outp')
    j = Journal(path, SETTINGS, num_examples=5)
    done = j.open()
    assert {i: r["output"] for i, r in done.items()} == {3: "c", 0: "a", 4: "é"}
    assert path.read_bytes() == complete          # truncated back to the last complete line
    j.append({"index": 1, "output": "b"})
    j.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"format": "sbs-teacher-journal/1", "settings": SETTINGS}
    assert [json.loads(l)["index"] for l in lines[1:]] == [3, 0, 4, 1]


def test_a_torn_header_starts_over(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"format": "sbs-te')
    j = Journal(path, SETTINGS, num_examples=2)
    assert j.open() == {}
    j.close()
    assert json.loads(path.read_text())["settings"] == SETTINGS


@pytest.mark.parametrize("body,match", [
    ('{"index": 0}\n{"index": 1,,}\n', r"j.jsonl:3: corrupt journal line"),
    ('{"index": 9}\n', r"j.jsonl:2: journal record index 9 is not an example index in \[0, 2\)"),
])
def test_bad_lines_are_named(tmp_path, body, match):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"format": "sbs-teacher-journal/1", "settings": SETTINGS}) + "\n" + body)
    with pytest.raises(TeacherError, match=match):
        Journal(path, SETTINGS, num_examples=2).open()


def test_other_settings_or_files_are_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, SETTINGS, num_examples=2)
    j.open()
    j.close()
    with pytest.raises(TeacherError, match=r"temperature: journal 0.0 vs now 0.7"):
        Journal(path, {"model": "m", "temperature": 0.7}, num_examples=2).open()
    other = tmp_path / "other.jsonl"
    other.write_text('{"some": "file"}\n')
    with pytest.raises(TeacherError, match="other.jsonl:1: not an sbs teacher journal"):
        Journal(other, SETTINGS, num_examples=2).open()
