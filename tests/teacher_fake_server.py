"""A real HTTP server on 127.0.0.1 speaking the OpenAI completions/chat wire format, answering from fixtures,
with scripted faults. Shared by the tests/test_teacher_*.py files."""
import collections
import http.server
import json
import threading
import time

FAULTS = ("timeout", "500", "503", "429", "badjson", "nochoices", "401")


def query_of(body: dict) -> str:
    """The example's query: the last block of a completions prompt, or the last chat message."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body["prompt"].rsplit("\n\n", 1)[-1]


class FakeTeacher:
    """answers: query -> completion text, or a list of texts handed out in order when n > 1.
    faults: query -> list of faults, applied to that query's successive attempts before it is answered."""

    def __init__(self, answers: dict, faults: dict | None = None, *, delay_s: float = 0.0,
                 stall_s: float = 1.0, retry_after: str = "1", error_body: str = "server error",
                 ignore_n: bool = False, raw_bodies: dict | None = None):
        self.answers, self.faults = answers, {k: list(v) for k, v in (faults or {}).items()}
        self.delay_s, self.stall_s, self.retry_after, self.error_body = delay_s, stall_s, retry_after, error_body
        self.ignore_n = ignore_n                      # like llama.cpp server: one choice whatever `n` says
        self.raw_bodies = raw_bodies if raw_bodies is not None else {}   # fault -> exact bytes sent instead
        self.default_fault = None                     # applied to every request without scripted faults
        self.default_answer = None                    # the completion for queries without a fixture
        self.attempts = collections.Counter()         # query -> requests received
        self.log = []                                 # (time, path, query, authorization, fault or "ok")
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                query = query_of(body)
                with fake.lock:
                    fake.attempts[query] += 1
                    pending = fake.faults.get(query)
                    fault = pending.pop(0) if pending else (fake.default_fault or "ok")
                    fake.log.append((time.monotonic(), self.path, query, self.headers.get("Authorization"), fault))
                fake.respond(self, body, query, fault)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def respond(self, h, body: dict, query: str, fault: str):
        if self.delay_s:
            time.sleep(self.delay_s)
        if fault == "timeout":
            time.sleep(self.stall_s)                  # longer than the client's timeout: it has gone
            return self._send(h, 200, b'{"choices": []}')
        if fault in self.raw_bodies:                  # e.g. a server echoing the key at a chosen byte offset
            status = {"badjson": 200, "nochoices": 200}.get(fault, int(fault) if fault.isdigit() else 200)
            extra = {"Retry-After": self.retry_after} if fault == "429" else None
            return self._send(h, status, self.raw_bodies[fault], extra)
        if fault in ("500", "503", "401"):
            return self._send(h, int(fault), json.dumps({"error": {"message": self.error_body}}).encode())
        if fault == "429":
            return self._send(h, 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": self.retry_after})
        if fault == "badjson":
            return self._send(h, 200, b'{"choices": [{"text": "truncat')
        if fault == "nochoices":
            return self._send(h, 200, b'{"object": "text_completion"}')
        if query not in self.answers and self.default_answer is None:
            return self._send(h, 400, json.dumps({"error": {"message": f"no fixture for {query[:60]!r}"}}).encode())
        answer = self.answers.get(query, self.default_answer)
        n = 1 if self.ignore_n else body.get("n", 1)
        if isinstance(answer, str):
            texts = [answer] * n
        else:                                         # self-consistency samples, in fixture order
            texts = [answer[i % len(answer)] for i in range(n)]
        if "messages" in body:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                       for i, t in enumerate(texts)]
        else:
            choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
        payload = {"id": "cmpl-fake", "object": "chat.completion" if "messages" in body else "text_completion",
                   "model": body["model"], "choices": choices}
        self._send(h, 200, json.dumps(payload).encode())

    @staticmethod
    def _send(h, status: int, data: bytes, headers: dict | None = None):
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                                      # the client timed out and left

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
