"""The one place where the teacher's API key is removed from text: every text that leaves the client (log lines,
error messages, journal records, output files, summaries) passes through `Redactor`.

What is removed: the key and every substring of it at least `MIN_LEAK` (8) characters long, wherever it occurs,
so a key cut by a truncation, split across two messages or echoed in part by a server is still caught. Texts
are redacted *before* they are truncated, so a cut can never leave part of a key behind.

Why 8: at most 7 characters of the key can survive in one place; for a key of random base-62 characters
(OpenAI-style keys carry 40+, 240+ bits) that is at most ~42 bits, and fragments cannot be chained into the key
because every 8-character window of it is removed wherever it appears, so no two surviving fragments overlap
by enough to be joined. Shorter windows would start to remove ordinary text from completions (a false hit needs
8 characters in a row to coincide with the key). A key shorter than 8 characters is removed whole.
"""
from __future__ import annotations

import logging
from typing import Iterable

MIN_LEAK = 8
MARK = "<redacted>"


class Redactor:
    """`redactor(text)` -> text without any `MIN_LEAK`+ character piece of a secret; `redact_obj` for JSON data."""

    def __init__(self, secrets: Iterable[str | None] = (), *, min_leak: int = MIN_LEAK):
        self._windows: dict[int, set[str]] = {}        # window length -> every substring of that length
        for secret in secrets:
            if not secret:
                continue
            width = min(min_leak, len(secret))
            self._windows.setdefault(width, set()).update(
                secret[i:i + width] for i in range(len(secret) - width + 1))

    def __bool__(self) -> bool:
        return bool(self._windows)

    def __call__(self, text) -> str:
        text = text if isinstance(text, str) else str(text)
        if not self._windows or not any(w in text for ws in self._windows.values() for w in ws):
            return text                                 # the common case, checked in C: no piece at all
        # Mark every character covered by a window that is a piece of a secret; any longer piece is a chain of
        # overlapping windows, so each maximal marked run is replaced whole.
        covered = bytearray(len(text))
        for width, windows in self._windows.items():
            for i in range(len(text) - width + 1):
                if text[i:i + width] in windows:
                    covered[i:i + width] = b"\x01" * width
        if not any(covered):
            return text
        out, i = [], 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                out.append(MARK)
            else:
                j = covered.find(b"\x01", i)
                j = len(text) if j < 0 else j
                out.append(text[i:j])
                i = j
        return "".join(out)

    def clip(self, text, limit: int) -> str:
        """Redact, then cut to `limit` characters (never the other way round)."""
        return self(text)[:limit]

    def redact_obj(self, obj):
        """A copy of JSON-like data (dicts, lists, strings) with every string, keys included, redacted."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {self(k) if isinstance(k, str) else k: self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_obj(v) for v in obj]
        return obj


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message (and drops its args)."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redactor(record.getMessage()), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
