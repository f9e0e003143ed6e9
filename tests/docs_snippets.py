"""What tests/test_docs.py checks: the commands and Python snippets of the user docs, found where a reader finds them.

Sources: fenced ```bash/```sh/```python blocks and inline `sbs ...` / `python -m ...` spans of README.md,
docs/**/*.md, bench/*.md and launch/*.md; command lines in `#` comments of launch/* scripts and gin/**/*.gin
files (a command continues on the next line only after a trailing backslash, as in a shell).

Markers (docs/docs_test.md): `<!-- docs-test: skip (reason) -->` on the line before a fenced block skips it, and
`<!-- docs-test: no-run (reason) -->` checks it without running it; in scripts and gin files
`# docs-test: skip (reason)` on the line before a command (or at its end) skips that command.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKER = re.compile(r"docs-test:\s*(skip|no-run)\b")
_COMMAND_START = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(sbs|python3?|launch/\S+|bash|sbatch)\b")
_FENCE = re.compile(r"^\s*```(\w*)\s*$")
_SHELL_LANGS = ("bash", "sh", "shell", "console")


@dataclasses.dataclass
class Snippet:
    where: str  # file:line of its first line
    kind: str  # "shell", "python", "inline" (a command in prose) or "inline_python" (a call in prose)
    text: str
    run: bool = True  # False: checked, not run
    problems: list[str] = dataclasses.field(default_factory=list)  # found while extracting (a broken wrap)


def doc_files() -> list[pathlib.Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "bench").glob("*.md")),
             *sorted((REPO / "launch").glob("*.md"))]
    return [f for f in files if f.is_file()]


def comment_files() -> list[pathlib.Path]:
    launch = [f for f in sorted((REPO / "launch").iterdir()) if f.is_file() and f.suffix != ".md"]
    return launch + sorted((REPO / "gin").rglob("*.gin"))


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO))


def markdown_snippets(path: pathlib.Path) -> list[Snippet]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out, outside, marker, i = [], [], None, 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            m = MARKER.search(lines[i]) if "<!--" in lines[i] else None
            if m:
                marker = m.group(1)
            elif lines[i].strip():
                marker = None if not lines[i].lstrip().startswith("<!--") else marker
            outside.append((i + 1, lines[i]))
            i += 1
            continue
        lang, start, body = fence.group(1).lower(), i + 1, []
        i += 1
        while i < len(lines) and not _FENCE.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        kind = "shell" if lang in _SHELL_LANGS else "python" if lang == "python" else None
        if kind and marker != "skip":
            snippet = Snippet(f"{rel(path)}:{start + 1}", kind, "\n".join(body), run=marker != "no-run")
            if kind == "shell":
                snippet.problems += wrap_problems(body, start + 1, rel(path), commented=False)
            out.append(snippet)
        marker = None
    out += inline_snippets(path, outside)
    return out


def inline_snippets(path: pathlib.Path, numbered_lines) -> list[Snippet]:
    """`sbs ...` / `python -m ...` code spans of the prose, which may wrap over lines: checked, never run."""
    text = "\n".join(line for _, line in numbered_lines)
    starts, pos = [], 0
    for n, line in numbered_lines:
        starts.append((pos, n))
        pos += len(line) + 1
    out = []
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).split())
        line = max(n for p, n in starts if p <= m.start())
        if re.match(r"(sbs \w+|python -m [\w.]+)\b.*--", span):
            out.append(Snippet(f"{rel(path)}:{line}", "inline", span))
        elif re.match(r"^[a-z_][\w.]*\.\w+\(.*\)", span):  # a call of our API: `pipeline.get_eval_examples(...)`
            out.append(Snippet(f"{rel(path)}:{line}", "inline_python", re.sub(r"\)\s*->.*$", ")", span)))
    return out


def wrap_problems(lines: list[str], first_line: int, name: str, commented: bool) -> list[str]:
    """A line of flags after a command line that does not end in a backslash runs as a command of its own."""
    problems, in_command = [], False
    for k, raw in enumerate(lines):
        line = raw.lstrip("#").strip() if commented else raw.strip()
        if in_command and line.startswith("--") and not prev.rstrip().endswith("\\"):
            problems.append(f"{name}:{first_line + k}: {line.split()[0]!r} continues the command above, but that "
                            "line does not end in a backslash: pasted, it runs as a command of its own")
        in_command = bool(_COMMAND_START.match(line)) or (in_command and prev.rstrip().endswith("\\"))
        prev = line
    return problems


def comment_snippets(path: pathlib.Path) -> list[Snippet]:
    """Command lines in `#` comments: `#   sbs train ... \\` and its continuation lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    skip_next = False
    while i < len(lines):
        raw = lines[i]
        if not raw.lstrip().startswith("#") or raw.startswith("#!") or raw.lstrip().startswith("#SBATCH"):
            i += 1
            continue
        text = raw.lstrip()[1:].strip()
        if MARKER.search(text) and not _COMMAND_START.match(text):
            skip_next = MARKER.search(text).group(1) == "skip"
            i += 1
            continue
        if not _COMMAND_START.match(text):
            i += 1
            continue
        start, body = i + 1, [text]
        while body[-1].rstrip().endswith("\\") and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("#"):
            i += 1
            body.append(lines[i].lstrip()[1:].strip())
        i += 1
        snippet = Snippet(f"{rel(path)}:{start}", "shell", "\n".join(body))
        window = [lines[k] for k in range(start - 1, min(i + 1, len(lines)))]
        snippet.problems += wrap_problems(window, start, rel(path), commented=True)
        if not skip_next and not any(MARKER.search(b) for b in body):
            out.append(snippet)
        skip_next = False
    return out


def all_snippets() -> list[Snippet]:
    out = []
    for f in doc_files():
        out += markdown_snippets(f)
    for f in comment_files():
        out += comment_snippets(f)
    return out


def commands(snippet: Snippet) -> list[list[str]]:
    """The shell commands of a snippet as argument lists (continuations joined, comments and `&&`, `;`, `|`
    chains split, `[optional]` brackets of usage lines dropped)."""
    text = snippet.text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if snippet.kind == "inline":
            line = line.replace("[", " ").replace("]", " ")
        try:
            # In prose, `a|b` lists alternatives (`--from hf|t5x`); in a block it is a pipe.
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&" if snippet.kind == "inline" else ";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
        except ValueError as e:
            raise AssertionError(f"{snippet.where}: the shell cannot split {line!r}: {e}") from None
        current = []
        for tok in tokens:
            if tok and set(tok) <= set(";&|"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(tok)
        if current:
            out.append(current)
    return out


def gin_flags(text: str) -> list[tuple[str, str | None]]:
    """(NAME, VALUE or None) of every `--gin.NAME=VALUE` in a text."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"--gin\.([A-Za-z_][\w/]*(?:\.[A-Za-z_]\w*)*)(?:=(\S+))?", text)]
