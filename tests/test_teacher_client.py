"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1: wire format, retries, backoff."""
import email.utils
import time

import pytest

from sbs_jax.teacher.client import ClientConfig, FatalRequestError, RequestFailed, TeacherClient, _retry_after
from teacher_fake_server import FakeTeacher

PROMPT = "Q: one\nA: r. The answer is (1).\n\nQ: two\nA:"


class Sleeps(list):
    """Records the client's waits instead of sleeping."""
    __call__ = list.append


def client(url, sleeps=None, **over):
    config = ClientConfig(endpoint=url, model="teacher", **over)
    return TeacherClient(config, sleep=sleeps if sleeps is not None else Sleeps(), seed=0)


def test_url_and_repr():
    assert ClientConfig("http://h:8000/v1", "m").url == "http://h:8000/v1/completions"
    assert ClientConfig("http://h:8000/v1/", "m", api="chat").url == "http://h:8000/v1/chat/completions"
    assert ClientConfig("https://h/v1/chat/completions", "m", api="chat").url == "https://h/v1/chat/completions"
    assert "sk-secret" not in repr(ClientConfig("http://h/v1", "m", api_key="sk-secret"))
    with pytest.raises(ValueError, match="api must be one of"):
        ClientConfig("http://h/v1", "m", api="responses")
    with pytest.raises(ValueError, match="http"):
        ClientConfig("h:8000/v1", "m")


def test_retry_after_header():
    assert _retry_after("3") == 3.0 and _retry_after("0.5") == 0.5 and _retry_after(None) is None
    assert _retry_after("soon") is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 < _retry_after(date) <= 30


def test_completions_wire_format():
    with FakeTeacher({"Q: two\nA:": " r2. The answer is (2)."}) as server:
        c = client(server.url, api_key="k", stop=("\n\nQ:",), max_tokens=64)
        assert c.sample(PROMPT) == [" r2. The answer is (2)."]
        _, path, _, auth, _ = server.log[0]
    assert path == "/v1/completions" and auth == "Bearer k"
    body = c._body(PROMPT, 1)
    assert body == {"model": "teacher", "temperature": 0.0, "max_tokens": 64, "prompt": PROMPT, "stop": ["\n\nQ:"]}


def test_chat_and_n_samples():
    msgs = [{"role": "user", "content": "Q: two\nA:"}]
    with FakeTeacher({"Q: two\nA:": ["x", "y", "z"]}) as server:
        assert client(server.url, api="chat", temperature=0.7).sample(msgs, 3) == ["x", "y", "z"]
        assert len(server.log) == 1 and server.log[0][1] == "/v1/chat/completions"


def test_server_ignoring_n_is_asked_again():
    with FakeTeacher({"Q: two\nA:": "same"}, ignore_n=True) as server:
        assert client(server.url, temperature=0.7).sample(PROMPT, 3) == ["same"] * 3
        assert server.attempts["Q: two\nA:"] == 3


def test_backoff_grows_and_gives_up():
    sleeps = Sleeps()
    with FakeTeacher({"Q: two\nA:": "a"}, {"Q: two\nA:": ["500"] * 10}) as server:
        c = client(server.url, sleeps, max_retries=4, backoff_s=1.0, max_backoff_s=5.0)
        with pytest.raises(RequestFailed, match="gave up after 5 attempts; last error: HTTP 500"):
            c.sample(PROMPT)
        assert server.attempts["Q: two\nA:"] == 5
    # equal jitter: attempt k waits in [base * 2^k / 2, base * 2^k], capped at max_backoff
    assert len(sleeps) == 4
    for k, s in enumerate(sleeps):
        cap = min(2.0 ** k, 5.0)
        assert cap / 2 <= s <= cap, (k, s)
    assert c.stats == {"requests": 5, "retries": 4}


@pytest.mark.parametrize("fault", ["503", "badjson", "nochoices", "timeout"])
def test_transient_faults_are_retried(fault):
    sleeps = Sleeps()
    with FakeTeacher({"Q: two\nA:": "ok"}, {"Q: two\nA:": [fault, fault]}, stall_s=0.6) as server:
        assert client(server.url, sleeps, timeout_s=0.2, backoff_s=0.01).sample(PROMPT) == ["ok"]
        assert server.attempts["Q: two\nA:"] == 3 and len(sleeps) == 2


def test_retry_after_is_honoured_and_capped():
    sleeps = Sleeps()
    with FakeTeacher({"Q: two\nA:": "ok"}, {"Q: two\nA:": ["429", "429"]}, retry_after="7") as server:
        assert client(server.url, sleeps, backoff_s=0.01, max_backoff_s=60).sample(PROMPT) == ["ok"]
    assert sleeps == [7.0, 7.0]
    sleeps = Sleeps()
    with FakeTeacher({"Q: two\nA:": "ok"}, {"Q: two\nA:": ["429"]}, retry_after="300") as server:
        client(server.url, sleeps, backoff_s=0.01, max_backoff_s=20).sample(PROMPT)
    assert sleeps == [20.0]


def test_client_errors_are_fatal_without_retry():
    sleeps = Sleeps()
    with FakeTeacher({}) as server:     # unknown prompt -> 400 with an error body
        with pytest.raises(FatalRequestError, match="HTTP 400 from .*no fixture for"):
            client(server.url, sleeps).sample(PROMPT)
        assert len(server.log) == 1 and sleeps == []


def test_connection_refused_is_retried_then_fails():
    with FakeTeacher({}) as server:
        url = server.url
    sleeps = Sleeps()                    # the server is gone: nothing listens on the port any more
    with pytest.raises(RequestFailed, match="gave up after 3 attempts"):
        client(url, sleeps, max_retries=2, backoff_s=0.01, timeout_s=2).sample(PROMPT)
    assert len(sleeps) == 2


def test_concurrent_use_is_thread_safe():
    import concurrent.futures as futures
    answers = {f"Q: {i}\nA:": f"answer {i}" for i in range(40)}
    with FakeTeacher(answers, delay_s=0.01) as server:
        c = client(server.url)
        with futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: c.sample(f"x\n\nQ: {i}\nA:")[0], range(40)))
    assert got == [f"answer {i}" for i in range(40)] and c.stats["requests"] == 40


def test_cancel_ends_backoff_and_retries():
    import threading
    from sbs_jax.teacher.client import Cancelled
    outcome = []
    with FakeTeacher({"Q: two\nA:": "a"}, {"Q: two\nA:": ["500"] * 10}) as server:
        c = TeacherClient(ClientConfig(endpoint=server.url, model="m", backoff_s=30.0, max_backoff_s=30.0))

        def run():
            try:
                c.sample(PROMPT)
            except Cancelled as e:
                outcome.append(e)
        worker = threading.Thread(target=run)
        worker.start()
        while not server.log:
            time.sleep(0.01)
        start = time.monotonic()
        c.cancel()                              # the worker is in its ~15-30 s backoff wait
        worker.join(timeout=5)
        assert not worker.is_alive() and time.monotonic() - start < 1.0
    assert len(outcome) == 1 and len(server.log) == 1
