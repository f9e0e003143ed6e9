"""Append-only, fsynced JSON-lines journal of finished examples: what makes a teacher run resumable.

Line 1 is a header with the settings that shape the outputs; every further line is one finished example keyed
by "index". A run killed at any point leaves at most one torn last line (no newline yet), which is dropped on
reopening; every complete line is an example that is never requested again.
"""
import json
import os
import pathlib

from sbs_jax.teacher.client import TeacherInputError
from sbs_jax.teacher.redact import Redactor

FORMAT = "sbs-teacher-journal/1"


class Journal:
    def __init__(self, path: pathlib.Path, settings: dict, num_examples: int, *, redact: Redactor | None = None):
        self.path = pathlib.Path(path)
        self.redact = redact or Redactor()          # the client's: no piece of the API key is ever written
        self.settings = settings
        self.num_examples = num_examples
        self._fd = None

    def open(self) -> dict[int, dict]:
        """Opens for appending; returns the finished examples found (index -> record)."""
        done = self._read() if self.path.exists() else None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if done is None:
            self._write({"format": FORMAT, "settings": self.settings})
            done = {}
        return done

    def _read(self) -> dict[int, dict]:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):                      # torn tail of a killed run: never acknowledged, drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        lines = data[:end].splitlines()
        if not lines:
            return None
        done = {}
        for lineno, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise TeacherInputError(f"{self.path}:{lineno}: corrupt journal line ({e.msg}); "
                                   f"delete the journal to start the run over") from None
            if lineno == 1:
                self._check_header(entry)
                continue
            index = entry.get("index")
            if not isinstance(index, int) or not 0 <= index < self.num_examples:
                raise TeacherInputError(f"{self.path}:{lineno}: journal record index {index!r} is not an example "
                                   f"index in [0, {self.num_examples})")
            done.setdefault(index, entry)         # a duplicate cannot be written; if present the first wins
        return done

    def _check_header(self, header: dict):
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise TeacherInputError(f"{self.path}:1: not an sbs teacher journal (expected format {FORMAT!r})")
        old = header.get("settings", {})
        changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
        if changed:
            diff = "; ".join(f"{k}: journal {old.get(k)!r} vs now {self.settings.get(k)!r}" for k in changed)
            raise TeacherInputError(f"{self.path}: the journal was written with other settings ({diff}); rerun with "
                               f"the same settings to resume, or use another --out to start a new run")

    def _write(self, *entries: dict):
        entries = [self.redact.redact_obj(e) for e in entries]
        data = memoryview("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8"))
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)

    def append(self, *records: dict):
        """Appends finished examples with one write and one fsync (durable when this returns)."""
        self._write(*records)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
