"""A client for OpenAI-compatible completion servers (vLLM, TGI, llama.cpp server, hosted APIs); stdlib only.

Retries timeouts, dropped connections, 408, 409, 429, 5xx and malformed bodies with exponential backoff (honouring
Retry-After); any other HTTP error is fatal because it would fail the same way for every example. The API key
is only ever put into the Authorization header: it is kept out of repr, and every text the client hands out
(error messages, log lines, completions) passes through `self.redact` (`redact.Redactor`) before any truncation.
"""
import dataclasses
import email.utils
import http.client
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request

from sbs_jax.errors import InputError
from sbs_jax.teacher.redact import Redactor

log = logging.getLogger("sbs_jax.teacher")

APIS = ("completions", "chat")
_RETRY_STATUS = frozenset({408, 409, 429})     # and 5xx; the statuses the openai client retries
_MAX_ERROR_READ = 1 << 16                       # bytes of an error body read (and redacted) before cutting


class TeacherError(RuntimeError):
    """Base of the errors a teacher run reports."""


class TeacherInputError(TeacherError, InputError):
    """What the user gave (examples file, --out, journal, flags) cannot be used: exit 2, not a server failure."""


class FatalRequestError(TeacherError):
    """A request the server rejects for reasons retrying cannot fix (bad model name, bad key, bad request)."""


class RequestFailed(TeacherError):
    """A request that still failed after every retry."""


class Cancelled(TeacherError):
    """A request abandoned because the run is stopping."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    endpoint: str                       # base URL (".../v1") or the full ".../completions" URL
    model: str
    api: str = "completions"            # "completions" | "chat"
    api_key: str | None = dataclasses.field(default=None, repr=False)
    timeout_s: float = 120.0            # per socket operation (connect, each read)
    max_retries: int = 6
    backoff_s: float = 1.0              # first retry waits about this long, doubling each time
    max_backoff_s: float = 60.0         # cap on a single wait, Retry-After included
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {self.api!r}")
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {self.endpoint!r}")

    @property
    def url(self) -> str:
        path = "chat/completions" if self.api == "chat" else "completions"
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/" + path) else f"{base}/{path}"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class TeacherClient:
    """Thread-safe: one client serves all worker threads of a run."""

    def __init__(self, config: ClientConfig, *, sleep=None, seed: int | None = None):
        self.config = config
        self._cancelled = threading.Event()
        self._sleep = sleep if sleep is not None else self._cancelled.wait   # waits end early on cancel()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0}
        self.redact = Redactor([config.api_key])     # every text leaving the client goes through this

    def _count(self, key: str):
        with self._lock:
            self.stats[key] += 1

    def _body(self, prompt, n: int) -> dict:
        c = self.config
        body = {"model": c.model, "temperature": c.temperature, "max_tokens": c.max_tokens}
        body["messages" if c.api == "chat" else "prompt"] = prompt
        if n > 1:
            body["n"] = n
        if c.stop:
            body["stop"] = list(c.stop)
        if c.top_p is not None:
            body["top_p"] = c.top_p
        if c.seed is not None:
            body["seed"] = c.seed
        return body

    def _texts(self, payload) -> list[str]:
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or not choices or not all(isinstance(ch, dict) for ch in choices):
            raise _Retryable("response has no 'choices' list of objects: "
                             + self.redact.clip(json.dumps(payload, ensure_ascii=False), 200))
        texts = []
        for ch in sorted(choices, key=lambda ch: ch.get("index", 0)):
            if self.config.api == "chat":
                message = ch.get("message")
                # content is null when a chat model answers with something else (a refusal, a tool call):
                # an empty completion, which then counts as a parse failure.
                text = (message.get("content") or "") if isinstance(message, dict) else None
            else:
                text = ch.get("text")
            if not isinstance(text, str):
                raise _Retryable("response choice without text: "
                                 + self.redact.clip(json.dumps(ch, ensure_ascii=False), 200))
            texts.append(self.redact(text))         # a server may echo the key in a completion too
        return texts

    def _post_once(self, body: dict) -> list[str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(self.config.url, data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        self._count("requests")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            # Some servers echo the key they rejected: redact the whole body read, then cut it.
            detail = self.redact.clip(e.read(_MAX_ERROR_READ).decode("utf-8", "replace"), 300)
            reason = f"HTTP {e.code} from {self.config.url}: {detail}"
            if e.code in _RETRY_STATUS or e.code >= 500:
                raise _Retryable(reason, _retry_after(e.headers.get("Retry-After"))) from None
            raise FatalRequestError(reason) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException) as e:
            raise _Retryable(self.redact(f"{type(e).__name__}: {getattr(e, 'reason', e)}")) from None
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            body = self.redact.clip(raw.decode("utf-8", "replace"), 120)
            raise _Retryable(self.redact(f"malformed JSON body ({e}): {body!r}")) from None
        return self._texts(payload)

    def cancel(self):
        """Stops retrying: requests in progress end after their current attempt with `Cancelled`."""
        self._cancelled.set()

    def _post(self, body: dict) -> list[str]:
        c, attempt = self.config, 0
        while not self._cancelled.is_set():
            try:
                return self._post_once(body)
            except _Retryable as e:
                if attempt == c.max_retries:
                    raise RequestFailed(self.redact(f"{c.url}: gave up after {attempt + 1} attempts; last error: "
                                                    f"{e}")) from None
                wait = min(c.backoff_s * 2 ** attempt, c.max_backoff_s) * (0.5 + 0.5 * self._rng.random())
                if e.retry_after is not None:
                    wait = min(max(wait, e.retry_after), c.max_backoff_s)
                attempt += 1
                log.warning("request failed (%s); retry %d/%d in %.2fs", self.redact(e), attempt, c.max_retries,
                            wait)
                self._count("retries")
                self._sleep(wait)
        raise Cancelled("the run is stopping")

    def sample(self, prompt, n: int = 1) -> list[str]:
        """n completions of `prompt` (a string, or chat messages when api == "chat"). Servers that return
        fewer choices than asked (llama.cpp ignores `n`) are asked again for the rest."""
        texts: list[str] = []
        while len(texts) < n:
            texts += self._post(self._body(prompt, n - len(texts)))
        return texts[:n]
