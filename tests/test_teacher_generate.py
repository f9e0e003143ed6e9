"""`sbs teacher generate` end to end against a real HTTP server on 127.0.0.1 (tests/teacher_fake_server.py)."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from sbs_jax.data.records import data_dir as records_lib
from sbs_jax.commands import teacher as cli
from sbs_jax.teacher.templates import load_template
from teacher_fake_server import FakeTeacher

REPO = pathlib.Path(__file__).resolve().parents[1]
SECRET = "sk-test-0123456789-SECRET-abcdef"
FINAL = ("{n}_{s}.json", "teacher_{s}.jsonl", "teacher_{s}_summary.json")


def official(datasets_dir, name, split, count):
    """The first `count` examples (raw lines) and teacher outputs of a shared dataset."""
    lines = (datasets_dir / name / f"{name}_{split}.json").read_text(encoding="utf-8").splitlines()[:count]
    outputs = json.loads((datasets_dir / name / "llm" / f"{split}_CoT_0.json").read_text())[:count]
    return lines, outputs


def make_data_dir(root: pathlib.Path, name, split, lines) -> pathlib.Path:
    (root / name).mkdir(parents=True)
    (root / name / f"{name}_{split}.json").write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return root


def answers_for(template_name, lines, outputs):
    template = load_template(template_name)
    return {template.render_query(json.loads(l)): o for l, o in zip(lines, outputs)}


def final_files(out: pathlib.Path, name, split) -> dict[str, bytes]:
    d = out / name
    files = {f.format(n=name, s=split): None for f in FINAL}
    files.update({f"llm/{p.name}": None for p in (d / "llm").glob(f"{split}_CoT_*.json")})
    return {k: (d / k).read_bytes() for k in sorted(files)}


def run_cli(*args):
    argv = ["generate", *map(str, args), "--backoff", "0.01", "--max_backoff", "3", "--log_level", "WARNING"]
    return cli.main(argv)


def test_layout_matches_official_and_reads_back(tmp_path, datasets_dir, capsys):
    lines, outputs = official(datasets_dir, "cqa", "train", 30)
    data = make_data_dir(tmp_path / "data", "cqa", "train", lines)
    with FakeTeacher(answers_for("cqa", lines, outputs)) as server:
        rc = run_cli("--task", "cqa_sbs", "--data_dir", data, "--split", "train", "--endpoint", server.url,
                     "--model", "teacher", "--out", tmp_path / "out", "--chunk_size", 8, "--concurrency", 3)
    assert rc == 0
    d = tmp_path / "out" / "cqa"
    # The official layout: chunked completion lists that concatenate 1:1 with the examples file.
    chunks = sorted((d / "llm").glob("train_CoT_*.json"))
    assert [c.name for c in chunks] == [f"train_CoT_{i}.json" for i in range(4)]
    got = [o for i in range(4) for o in json.loads((d / "llm" / f"train_CoT_{i}.json").read_text())]
    assert got == outputs
    assert (d / "cqa_train.json").read_text(encoding="utf-8").splitlines() == lines
    records = [json.loads(l) for l in (d / "teacher_train.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(30))
    assert records[0]["prompt"].endswith("(d) math problem\n(e) gravity\nA:")
    # Labels checked by hand against the shared files (README: CQA label = answer text without the letter).
    assert (records[0]["label"], records[0]["gold"], records[0]["agrees"]) == ("math problem", "math problem", True)
    assert records[1]["label"] == "train station"
    assert records[1]["rationale"].startswith("The answer must be a place where a bum would live.")
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((d / "teacher_train_summary.json").read_text())
    assert summary["examples"] == 30 and summary["kept"] == 30
    assert summary["teacher_correct"] == sum(r["agrees"] for r in records)
    assert summary["parse_failures"] == sum(r["status"] != "ok" for r in records)
    # The tasks' reader (what register_paper_tasks reads) takes the generated dir as it is.
    split = records_lib.read_split(tmp_path / "out", "cqa", "train")
    assert split.has_teacher and len(split.examples) == 30
    assert (split.parse_failures, split.teacher_correct) == (summary["parse_failures"], summary["teacher_correct"])
    assert [(e.rationale, e.teacher_label) for e in split.examples] == [(r["rationale"] or "", r["label"] or "")
                                                                        for r in records]


def test_faults_give_the_clean_output(tmp_path, datasets_dir):
    lines, outputs = official(datasets_dir, "svamp", "train", 24)
    data = make_data_dir(tmp_path / "data", "svamp", "train", lines)
    answers = answers_for("svamp", lines, outputs)
    queries = list(answers)
    common = ["--dataset", "svamp", "--data_dir", data, "--endpoint", None, "--model", "t", "--timeout", 0.3,
              "--concurrency", 4, "--chunk_size", 10]
    with FakeTeacher(answers) as server:
        common[5] = server.url
        assert run_cli(*common, "--out", tmp_path / "clean") == 0
    faults = {queries[0]: ["timeout"], queries[3]: ["500", "503"], queries[5]: ["429"],
              queries[8]: ["badjson"], queries[13]: ["nochoices", "timeout", "500"], queries[23]: ["429", "500"]}
    with FakeTeacher(answers, faults, stall_s=1.0, retry_after="1") as server:
        common[5] = server.url
        assert run_cli(*common, "--out", tmp_path / "faulty") == 0
        log = list(server.log)
    assert final_files(tmp_path / "faulty", "svamp", "train") == final_files(tmp_path / "clean", "svamp", "train")
    # Killed while writing the final files (one gone, one half-written): a rerun requests nothing and
    # rewrites them; a rerun with another chunk size re-chunks and removes the stale chunk files.
    (tmp_path / "clean/svamp/teacher_train.jsonl").unlink()
    (tmp_path / "clean/svamp/llm/.train_CoT_1.json.tmp").write_text('["half')
    with FakeTeacher({}) as idle:
        common[5] = idle.url
        assert run_cli(*common, "--out", tmp_path / "clean") == 0
        assert final_files(tmp_path / "faulty", "svamp", "train") == final_files(tmp_path / "clean", "svamp", "train")
        assert run_cli(*common, "--out", tmp_path / "clean", "--chunk_size", 100) == 0 and not idle.log
    assert sorted(p.name for p in (tmp_path / "clean/svamp/llm").iterdir()) == ["train_CoT_0.json",
                                                                              "train_samples.jsonl"]
    assert json.loads((tmp_path / "clean/svamp/llm/train_CoT_0.json").read_text()) == outputs
    for q, f in faults.items():
        assert server.attempts[q] == len(f) + 1
    assert all(server.attempts[q] == 1 for q in queries if q not in faults)
    # Retry-After: 1 was honoured (the backoff alone would wait ~0.01 s).
    times = [t for t, _, q, _, _ in log if q == queries[5]]
    assert times[1] - times[0] >= 0.95


def test_gives_up_after_retries_then_resumes(tmp_path, datasets_dir, capsys):
    lines, outputs = official(datasets_dir, "anli1", "valid", 6)
    data = make_data_dir(tmp_path / "data", "anli1", "valid", lines)
    answers = answers_for("anli1", lines, outputs)
    q = list(answers)[2]
    args = ["--task", "anli1", "--split", "valid", "--data_dir", data, "--endpoint", None, "--model", "t",
            "--out", tmp_path / "out", "--max_retries", 2]
    with FakeTeacher(answers, {q: ["500"] * 3}) as server:
        args[7] = server.url
        assert run_cli(*args) == 1
        assert "1 of 6 examples failed after every retry" in capsys.readouterr().err
        assert not (tmp_path / "out" / "anli1" / "teacher_valid.jsonl").exists()
        assert run_cli(*args) == 0                # only the missing example is requested again
        assert sum(server.attempts.values()) == 6 + 3
    records = (tmp_path / "out" / "anli1" / "teacher_valid.jsonl").read_text().splitlines()
    assert [json.loads(r)["output"] for r in records] == outputs


def test_changed_settings_refuse_to_resume(tmp_path, datasets_dir, capsys):
    lines, outputs = official(datasets_dir, "anli1", "valid", 3)
    data = make_data_dir(tmp_path / "data", "anli1", "valid", lines)
    with FakeTeacher(answers_for("anli1", lines, outputs)) as server:
        args = ["--task", "anli1", "--split", "valid", "--data_dir", data, "--endpoint", server.url,
                "--out", tmp_path / "out"]
        assert run_cli(*args, "--model", "a") == 0
        assert run_cli(*args, "--model", "b") == 2  # a user mistake: exit 2 (sbs_jax.errors)
    assert "model: journal 'a' vs now 'b'" in capsys.readouterr().err


def _start(args, env, log_path):
    cmd = ["timeout", "-s", "KILL", "120", sys.executable, "-m", "sbs_jax.cli", "teacher", "generate",
           *map(str, args)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_killed_midrun_resumes_to_identical_output(tmp_path, datasets_dir):
    lines, outputs = official(datasets_dir, "esnli", "valid", 40)
    data = make_data_dir(tmp_path / "data", "esnli", "valid", lines)
    answers = answers_for("esnli", lines, outputs)
    env = dict(os.environ, SBS_TEST_KEY=SECRET, PYTHONPATH=str(REPO))
    args = ["--task", "esnli_sbs", "--split", "valid", "--data_dir", data, "--model", "t", "--concurrency", 2,
            "--chunk_size", 16, "--api_key_env", "SBS_TEST_KEY", "--backoff", "0.01", "--timeout", 0.5]
    journal = tmp_path / "killed" / "esnli" / "teacher_valid.journal.jsonl"
    faults = {list(answers)[30]: ["500", "429"]}
    with FakeTeacher(answers, faults, delay_s=0.05, retry_after="0") as server:
        clean = _start([*args, "--endpoint", server.url, "--out", tmp_path / "clean"], env, tmp_path / "clean.log")
        assert clean.wait(timeout=120) == 0
        proc = _start([*args, "--endpoint", server.url, "--out", tmp_path / "killed"], env, tmp_path / "k1.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 9):
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)       # the whole process group: `timeout` and the CLI under it
        proc.wait(timeout=30)
        journaled = journal.read_bytes().count(b"\n") - 1
        assert 8 <= journaled < 40, journaled
        assert not (tmp_path / "killed" / "esnli" / "teacher_valid.jsonl").exists()
        before = sum(server.attempts.values())
        resumed = _start([*args, "--endpoint", server.url, "--out", tmp_path / "killed"], env, tmp_path / "k2.log")
        assert resumed.wait(timeout=120) == 0, (tmp_path / "k2.log").read_text()
        # Exactly the examples that were not journaled are asked again.
        assert sum(server.attempts.values()) - before == 40 - journaled
        auth = {a for _, _, _, a, _ in server.log}
    assert final_files(tmp_path / "killed", "esnli", "valid") == final_files(tmp_path / "clean", "esnli", "valid")
    indices = [json.loads(l)["index"] for l in journal.read_text().splitlines()[1:]]
    assert sorted(indices) == list(range(40))       # every example exactly once
    got = [o for i in range(3) for o in json.loads((tmp_path / "killed/esnli/llm" / f"valid_CoT_{i}.json").read_text())]
    assert got == outputs
    # The key reached the server, and nowhere else: not in logs, journal or outputs.
    assert auth == {f"Bearer {SECRET}"}
    for path in [*tmp_path.rglob("*.log"), *(tmp_path / "killed").rglob("*"), *(tmp_path / "clean").rglob("*")]:
        if path.is_file():
            assert SECRET not in path.read_text(encoding="utf-8", errors="replace"), path
    assert "retry" in (tmp_path / "clean.log").read_text()      # the logs did talk about the requests


def test_key_echoed_by_server_is_redacted(tmp_path, datasets_dir, capsys, monkeypatch):
    lines, outputs = official(datasets_dir, "anli1", "valid", 2)
    data = make_data_dir(tmp_path / "data", "anli1", "valid", lines)
    answers = answers_for("anli1", lines, outputs)
    monkeypatch.setenv("SBS_TEST_KEY", SECRET)
    faults = {q: ["401"] for q in answers}
    with FakeTeacher(answers, faults, error_body=f"Incorrect API key provided: {SECRET}") as server:
        rc = run_cli("--task", "anli1", "--split", "valid", "--data_dir", data, "--endpoint", server.url,
                     "--model", "t", "--out", tmp_path / "out", "--api_key_env", "SBS_TEST_KEY", "--concurrency", 1)
        assert max(server.attempts.values()) == 1     # a 401 is not retried
    err = capsys.readouterr().err
    assert rc == 1 and "HTTP 401" in err and SECRET not in err


def test_self_consistency_and_filter(tmp_path, datasets_dir, capsys):
    lines, _ = official(datasets_dir, "anli1", "valid", 3)
    data = make_data_dir(tmp_path / "data", "anli1", "valid", lines)
    template = load_template("anli1")
    names = ["entailment", "neutral", "contradiction"]
    golds = [names[json.loads(l)["label"]] for l in lines]
    other = [names[(names.index(g) + 1) % 3] for g in golds]      # a wrong label per example
    samples = [   # majority right; majority wrong (one unparseable); only the last sample parses
        [f"A. So the answer is {golds[0]}.", f"B. So the answer is {other[0]}.", f"C. So the answer is {golds[0]}."],
        [f"D. So the answer is {other[1]}.", "no answer here", f"E. So the answer is {other[1]}."],
        ["garbled", "also garbled", f"F. So the answer is {golds[2]}."],
    ]
    answers = {template.render_query(json.loads(l)): s for l, s in zip(lines, samples)}
    with FakeTeacher(answers) as server:
        assert run_cli("--task", "anli1", "--split", "valid", "--data_dir", data, "--endpoint", server.url,
                       "--model", "t", "--out", tmp_path / "out", "--num_samples", 3, "--temperature", 0.7,
                       "--filter_agree", "--api", "chat") == 0
        assert all(p == "/v1/chat/completions" for _, p, _, _, _ in server.log)
    d = tmp_path / "out" / "anli1"
    records = [json.loads(l) for l in (d / "teacher_valid.jsonl").read_text().splitlines()]
    assert [r["output"] for r in records] == [samples[0][0], samples[1][0], samples[2][2]]
    assert records[0]["votes"] == {golds[0]: 2, other[0]: 1}
    assert [r["agrees"] for r in records] == [True, False, True]
    assert [r["kept"] for r in records] == [True, False, True]
    assert json.loads((d / "llm" / "valid_CoT_0.json").read_text()) == [samples[0][0], samples[2][2]]
    assert (d / "anli1_valid.json").read_text().splitlines() == [lines[0], lines[2]]
    # Every sample drawn, one line per kept example, and it reads back as several rationales per example.
    assert [json.loads(l) for l in (d / "llm" / "valid_samples.jsonl").read_text().splitlines()] == [
        {"completions": samples[0]}, {"completions": samples[2]}]
    split = records_lib.read_split(tmp_path / "out", "anli1", "valid", teacher_outputs="samples")
    assert [[c.text for c in ex.candidates()] for ex in split.examples] == [["A.", "B.", "C."], ["", "", "F."]]
    assert (split.num_samples, split.parse_failures, split.teacher_correct) == (6, 2, 3)
    summary = json.loads(capsys.readouterr().out)
    assert (summary["teacher_correct"], summary["kept"], summary["teacher_accuracy"]) == (2, 2, 66.67)
    assert summary["rationale_words"]["max"] == 1
    assert records[0]["prompt"][0]["role"] == "system" and records[0]["prompt"][-1]["role"] == "user"


def test_refuses_to_overwrite_its_input(tmp_path, capsys):
    data = make_data_dir(tmp_path, "anli1", "valid", ['{"premise": "p", "hypothesis": "h", "label": 0}'])
    rc = run_cli("--task", "anli1", "--split", "valid", "--data_dir", data, "--endpoint", "http://127.0.0.1:9",
                 "--model", "t", "--out", tmp_path)
    assert rc == 2 and "is the input data dir" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "anli1").iterdir()) == ["anli1_valid.json"]


def test_self_consistency_needs_temperature(tmp_path, capsys):
    rc = cli.main(["generate", "--task", "cqa", "--data_dir", str(tmp_path), "--endpoint", "http://127.0.0.1:9",
                   "--model", "t", "--out", str(tmp_path), "--num_samples", "3"])
    assert rc == 2 and "--temperature > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_generated_dir_trains_as_seqio_tasks(tmp_path, datasets_dir):
    """The generated dir registered as the paper's SeqIO tasks: the streams carry the teacher's parse."""
    import seqio
    from sbs_jax import tasks
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab

    lines, outputs = official(datasets_dir, "svamp", "train", 20)
    data = make_data_dir(tmp_path / "data", "svamp", "train", lines)
    with FakeTeacher(answers_for("svamp", lines, outputs)) as server:
        assert run_cli("--task", "svamp", "--data_dir", data, "--endpoint", server.url, "--model", "t",
                       "--out", tmp_path / "out") == 0
    records = [json.loads(l) for l in (tmp_path / "out/svamp/teacher_train.jsonl").read_text().splitlines()]
    texts = [r["prompt"] for r in records] + [r["output"] for r in records]
    spm = vocab.train_vocabulary(texts, tmp_path / "vocab", vocab_size=300)
    names = tasks.register_paper_tasks(str(tmp_path / "out"), datasets=["svamp"], vocabulary=str(spm))
    assert "svamp_sbs_llm" in names
    task = seqio.get_mixture_or_task("svamp_sbs_llm")
    ds = task.get_dataset({"inputs": 256, "targets": 64, "rationale_inputs": 256, "rationales": 128},
                          split="train", shuffle=False)
    vocabulary = task.output_features["rationales"].vocabulary
    got = [(vocabulary.decode(list(ex["rationales"])), vocabulary.decode(list(ex["targets"])))
           for ex in ds.as_numpy_iterator()]
    ok = [(r["rationale"], r["label"]) for r in records if r["status"] == "ok"]
    assert len(got) == 20 and len(ok) >= 15
    assert [g for g, r in zip(got, records) if r["status"] == "ok"] == ok


def test_user_task_with_template_file(tmp_path, capsys):
    template = {
        "name": "sentiment", "query": "Review: {text}\nAnswer:", "completion": " {rationale} Overall: {label}.",
        "stop": ["\n\nReview:"], "parse": {"cut_at": "Review:", "marker": "Overall:"},
        "gold": {"field": "stars", "names": ["negative", "positive"]},
        "exemplars": [{"text": "Loved it.", "rationale": "Loving is positive.", "label": "positive"}]}
    (tmp_path / "sentiment.json").write_text(json.dumps(template))
    rows = [{"text": "Dull and slow.", "stars": 0}, {"text": "A delight.", "stars": 1}, {"text": "Fine.", "stars": 1}]
    lines = [json.dumps(r) for r in rows]
    data = make_data_dir(tmp_path / "data", "reviews", "train", lines)
    answers = {"Review: Dull and slow.\nAnswer:": " Slow is bad. Overall: negative.\n\nReview: x",
               "Review: A delight.\nAnswer:": " A delight is a pleasure to watch. Overall: positive.",
               "Review: Fine.\nAnswer:": " Hard to say."}
    with FakeTeacher(answers) as server:
        assert run_cli("--dataset", "reviews", "--template", tmp_path / "sentiment.json", "--data_dir", data,
                       "--endpoint", server.url, "--model", "t", "--out", tmp_path / "out") == 0
        assert server.log[0][2] in answers
    d = tmp_path / "out" / "reviews"
    assert json.loads((d / "llm" / "train_CoT_0.json").read_text()) == list(answers.values())
    records = [json.loads(l) for l in (d / "teacher_train.jsonl").read_text().splitlines()]
    assert [(r["status"], r["label"], r["gold"], r["agrees"]) for r in records] == [
        ("ok", "negative", "negative", True), ("ok", "positive", "positive", True),
        ("parse_error", None, "positive", None)]
    summary = json.loads(capsys.readouterr().out)
    assert (summary["parsed"], summary["parse_failures"], summary["teacher_accuracy"]) == (2, 1, 66.67)
    # nearest rank over the word counts [3, 7]
    assert summary["rationale_words"] == {"p5": 3, "p25": 3, "p50": 3, "p75": 7, "p95": 7, "min": 3, "max": 7,
                                          "mean": 5.0}
    # Filtering a finished run afterwards needs no requests.
    with FakeTeacher({}) as idle:
        assert run_cli("--dataset", "reviews", "--template", tmp_path / "sentiment.json", "--data_dir", data,
                       "--endpoint", idle.url, "--model", "t", "--out", tmp_path / "out", "--filter_agree") == 0
        assert not idle.log
    assert (d / "reviews_train.json").read_text().splitlines() == lines[:2]
    assert json.loads((d / "llm" / "train_CoT_0.json").read_text()) == list(answers.values())[:2]


@pytest.mark.parametrize("rows,match", [
    (['{"premise": "p", "hypothesis": "h", "label": 0}', "", '{"premise": "p", "hypothesis": "h", "label": 7}'],
     r"anli1_valid.json:3: gold label 7 outside the label names"),
    (['{"premise": "p", "hypothesis": "h", "label": 0}', '{"premise": "p", "label": 1}'],
     r"cannot format example 1 \(.*anli1_valid.json:2\)"),
    (['{"premise": "p", "hypothesis": "h", "label": 0}', '{"premise": "p",'],
     r"anli1_valid.json:2: invalid JSON"),
])
def test_bad_examples_are_named_before_requests(tmp_path, capsys, rows, match):
    data = make_data_dir(tmp_path / "data", "anli1", "valid", rows)
    with FakeTeacher({}) as server:
        rc = run_cli("--task", "anli1", "--split", "valid", "--data_dir", data, "--endpoint", server.url,
                     "--model", "t", "--out", tmp_path / "out", "--concurrency", 1)
        assert rc == 2 and len(server.log) <= 1     # at most the valid first example was requested
    err = capsys.readouterr().err
    assert re.search(match, err), err
