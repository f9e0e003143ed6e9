"""The error contract of every `sbs` command: user mistakes are one or two lines, internal failures say so.

A user mistake prints `sbs <cmd>: error: <what, where (file:line, field, tensor, macro), what was expected or
how to fix it>` and exits 2; anything else is an internal failure: one line naming the exception type, exit 1.
No traceback unless `--verbose` is on the command line or `SBS_DEBUG=1`.

Library modules raise `InputError`/`UsageError` (or their older subclasses: `CheckpointError`, `DataError`,
`ExportError`); the few standard exceptions a user can cause (a missing file, a non-UTF-8 file, a ValueError
raised by our own validation code, gin's parse errors) are classified here so the boundary is the same for all.
"""
from __future__ import annotations

import functools
import os
import sys
import tokenize
import traceback
from typing import Callable, Sequence

EXIT_USER = 2
EXIT_INTERNAL = 1
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# gin appends where a failing configurable was called; the first part of the message is what went wrong.
_GIN_CONTEXT = "\n  In call to configurable"


class SbsError(ValueError):
    """A mistake in what the user gave: exit 2, message only. A ValueError, as the older errors were."""
    exit_code = EXIT_USER


class UsageError(SbsError):
    """The command line or gin configuration is wrong (flag, macro, binding, incompatible MODEL_DIR)."""


class InputError(SbsError):
    """A file or directory the user gave cannot be used (missing, malformed, wrong encoding, wrong content)."""


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    return "--verbose" in argv or os.environ.get("SBS_DEBUG", "") not in ("", "0")


def strip_verbose(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if a != "--verbose"]


def _raised_by_us(exc: BaseException) -> bool:
    """True when the innermost frame of the traceback is in sbs_jax: a deliberate validation error, not a
    ValueError from deep inside numpy or JAX (which would be an internal failure)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def _clean(message: str) -> str:
    return message.split(_GIN_CONTEXT)[0].strip()


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for any exception reaching a command's boundary."""
    if isinstance(exc, SbsError):
        return exc.exit_code, _clean(str(exc))
    if isinstance(exc, tokenize.TokenError):  # gin files are tokenized by Python's tokenizer
        line = exc.args[1][0] if len(exc.args) > 1 and exc.args[1] else "?"
        return EXIT_USER, (f"gin config: line {line}: {exc.args[0]}; check for an unclosed bracket, brace or "
                           "quote")
    if isinstance(exc, UnicodeDecodeError):
        return EXIT_USER, (f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_USER, _clean(str(exc)) if not exc.filename or str(exc.filename) in str(exc) \
            else f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, (ValueError, TypeError, KeyError)) and _raised_by_us(exc):
        return EXIT_USER, _clean(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return EXIT_INTERNAL, (f"internal error: {type(exc).__name__}: {first_line}\n"
                           "rerun with --verbose (or SBS_DEBUG=1) for the traceback, and please report it")


def report(prog: str, exc: BaseException, argv: Sequence[str] = ()) -> int:
    """Print the error as the contract says and return its exit code."""
    code, message = classify(exc)
    if debug_enabled(argv):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


def run(prog: str, fn: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Call a command's implementation `fn(argv) -> exit code` inside the error boundary."""
    argv = list(argv)
    try:
        return int(fn(strip_verbose(argv)) or 0)
    except SystemExit as e:  # argparse has printed its usage error already
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USER)
    except BaseException as e:  # noqa: BLE001 - this is the boundary: every failure is reported here
        return report(prog, e, argv)


def command(prog: str | None = None):
    """Decorator for a command's `main(argv) -> int`: runs it inside the boundary. `prog=None` names the
    command from argv[0] (`sbs train|eval|infer` share one main)."""
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv=None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            name = prog or f"sbs {argv[0] if argv else ''}".strip()
            return run(name, fn, argv)
        return main
    return wrap
