"""The teacher never leaks its API key: servers echo it in error, rate-limit, malformed and successful bodies,
at every byte offset around the places the client cuts texts (120, 200 and 300 characters)."""
import json
import logging
import random
import string

import pytest

from sbs_jax.teacher.client import ClientConfig, RequestFailed, TeacherClient
from sbs_jax.teacher.redact import MARK, MIN_LEAK, Redactor
from teacher_fake_server import FakeTeacher

# An OpenAI-style key: a fixed prefix and 40 random characters.
KEY = "sk-proj-" + "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=40))
PROMPT = "Q: one\nA:"
QUERY = "Q: one\nA:"                        # what the fake server keys on (the prompt's last block)
CUT_LIMITS = (120, 200, 300)            # malformed body, unexpected JSON, HTTP error body
OFFSETS = sorted({o for limit in CUT_LIMITS for o in range(limit - len(KEY) - 2, limit + 3)} | {0})


def leaks(text: str, key: str = KEY) -> list[str]:
    """Every MIN_LEAK-character piece of the key found in text."""
    return [key[i:i + MIN_LEAK] for i in range(len(key) - MIN_LEAK + 1) if key[i:i + MIN_LEAK] in text]


def test_redactor_removes_the_key_and_every_long_piece_of_it():
    redact = Redactor([KEY])
    assert redact(f"Bearer {KEY}.") == f"Bearer {MARK}."
    for start in range(len(KEY)):
        for end in range(start + MIN_LEAK, len(KEY) + 1):     # every piece of 8+ characters
            piece = KEY[start:end]
            out = redact(f"a{piece}b")
            assert out == f"a{MARK}b", (start, end, out)
    short = KEY[5:5 + MIN_LEAK - 1]                            # 7 characters reveal too little to matter
    assert redact(f"x{short}y") == f"x{short}y"
    assert redact("nothing to see") == "nothing to see" and Redactor([None])(KEY) == KEY
    assert Redactor(["abc"])("xabcx abd") == f"x{MARK}x abd"   # a key shorter than 8 goes whole
    # Redact first, then cut: a key crossing the cut leaves nothing behind.
    for cut in range(len(KEY) + 8):
        assert not leaks(redact.clip("x" * 10 + KEY + "y", cut))
    nested = redact.redact_obj({"a": [KEY[3:20], {"b": f"<{KEY}>"}], KEY: 1, "n": 3})
    assert not leaks(json.dumps(nested)) and nested["n"] == 3


def _echo(kind: str, offset: int) -> dict:
    """Fake-server settings for a body of `kind` carrying the key at byte `offset` of what the client reads."""
    text = "x" * offset + KEY + "y" * 60
    if kind == "ok":                                           # a completion that echoes the key
        return {"answers": {QUERY: text}, "faults": {}, "raw": {}}
    if kind == "nochoices":                                    # valid JSON, but not a completion
        # json.dumps(payload) starts with '{"object": "' (12 characters) before the text.
        body = json.dumps({"object": "x" * max(0, offset - 12) + KEY + "y" * 60}).encode()
    else:                                                      # 500, 429: error bodies; badjson: not JSON
        body = text.encode()
    return {"answers": {QUERY: "fine"}, "faults": {QUERY: [kind, kind]}, "raw": {kind: body}}


@pytest.mark.parametrize("kind", ["500", "429", "badjson", "nochoices", "ok"])
def test_client_never_hands_out_the_key(kind, caplog):
    caplog.set_level(logging.DEBUG, logger="sbs_jax.teacher")
    with FakeTeacher({}, retry_after="0") as server:
        for offset in OFFSETS:
            echo = _echo(kind, offset)
            server.answers, server.faults, server.raw_bodies = echo["answers"], echo["faults"], echo["raw"]
            client = TeacherClient(ClientConfig(endpoint=server.url, model="t", api_key=KEY, max_retries=1,
                                                backoff_s=0.0), sleep=lambda s: None, seed=0)
            caplog.clear()
            if kind == "ok":
                texts = client.sample(PROMPT)
                assert MARK in texts[0] and not leaks(texts[0]), (offset, texts)
                continue
            with pytest.raises(RequestFailed) as failure:
                client.sample(PROMPT)
            message = str(failure.value)
            assert not leaks(message), (offset, message)
            assert not leaks(caplog.text), (offset, caplog.text)
            assert "retry 1/1" in caplog.text                  # the retry was logged, redacted
            # The body the client quotes still shows where the key was (redacted, then cut).
            limit = {"badjson": 120, "nochoices": 200}.get(kind, 300)
            if offset + MIN_LEAK <= limit - len(MARK):
                assert MARK in message, (offset, message)
        assert {a for _, _, _, a, _ in server.log} == {f"Bearer {KEY}"}   # the server did get the key


def _run_generate(tmp_path, datasets_dir, server, name):
    from sbs_jax.commands import teacher as cli

    return cli.main(["generate", "--dataset", "anli1", "--template", "anli1", "--split", "valid",
                     "--data_dir", str(datasets_dir), "--limit", "2", "--endpoint", server.url, "--model", "t",
                     "--out", str(tmp_path / name), "--api_key_env", "SBS_TEST_KEY", "--concurrency", "1",
                     "--max_retries", "1", "--backoff", "0", "--log_level", "DEBUG"])


@pytest.mark.parametrize("kind", ["500", "429", "badjson", "nochoices", "401", "ok"])
def test_generate_keeps_the_key_out_of_stderr_logs_and_files(kind, tmp_path, datasets_dir, monkeypatch, capsys,
                                                             caplog):
    monkeypatch.setenv("SBS_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    runs = []
    with FakeTeacher({}, retry_after="0") as server:
        for limit in CUT_LIMITS:                   # the key straddling each cut
            offset = limit - len(KEY) // 2
            echo = _echo("500" if kind == "401" else kind, offset)
            server.raw_bodies = {kind: echo["raw"].get("500", b"")} if kind == "401" else echo["raw"]
            if kind == "ok":
                server.answers = {}                # every query answered with the echoing completion
                server.default_answer = echo["answers"][QUERY]
            server.faults = {}
            server.default_fault = None if kind == "ok" else kind
            runs.append((limit, _run_generate(tmp_path, datasets_dir, server, f"out{limit}")))
    captured = capsys.readouterr()
    assert [rc for _, rc in runs] == [0 if kind == "ok" else 1] * len(CUT_LIMITS), (runs, captured.err)
    for channel in (captured.out, captured.err, caplog.text):
        assert not leaks(channel), channel
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files                                   # the journal at least (and the outputs on success)
    for path in files:
        assert not leaks(path.read_text(encoding="utf-8", errors="replace")), path
    if kind == "ok":
        outputs = json.loads((tmp_path / "out120" / "anli1" / "llm" / "valid_CoT_0.json").read_text())
        assert len(outputs) == 2 and all(MARK in o for o in outputs)
