"""No gin binding is silently ignored: after a command has built its config, every binding the user gave that no
configurable of the run read is reported.

`record` notes where each binding came from (file:line, following includes, or the command line) while
`gin_utils.parse` parses; `check_unused` then compares the bindings with gin's operative config (what the
configurables called so far actually received). A binding is used when a call of its configurable, in its scope
or a scope below it, took the parameter from it (no more specific binding overrode it, the caller did not pass
the argument itself); a macro is used when a used binding referred to it.

An unused binding that the user wrote (a `--gin.X` / `--gin_bindings` flag, or a gin file outside the shipped
`gin/` folder) is a UsageError; one from a shipped gin file (a dataset file's `VOCAB_SIZE` under `sbs eval`, which
takes the model from the run) is a printed warning, since those files serve several verbs.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import sys
import typing
from typing import Iterable, Sequence

import gin
from gin import config_parser

from sbs_jax import errors

MACRO = "gin.macro"


@dataclasses.dataclass(frozen=True)
class Source:
    where: str  # "path:line" or "--gin.NAME=VALUE"
    user: bool  # written by the user (command line, own gin file), not a shipped gin file


# (scope, canonical selector, parameter) -> where its last binding came from. Macros: (name, MACRO, "value").
_SOURCES: dict[tuple[str, str, str], Source] = {}


class _NoValues(config_parser.ParserDelegate):
    """Reads statements without evaluating values (gin has parsed them already; only names and lines count)."""

    def configurable_reference(self, scoped_name, evaluate):
        return None

    def macro(self, macro_name):
        return None


def reset() -> None:
    _SOURCES.clear()


def _key(scope: str, selector: str, arg_name: str) -> tuple[str, str, str]:
    if not arg_name:  # a macro binding: `NAME = value`
        return (f"{scope}/{selector}" if scope else selector), MACRO, "value"
    match = gin.config._REGISTRY.get_match(selector)  # noqa: SLF001 - the canonical selector gin keys on
    return scope, match.selector if match is not None else selector, arg_name


def record_file(path: str, shipped_dirs: Sequence[str], find) -> None:
    """Note every binding of a gin file and of the files it includes (`find(name)` resolves a name as gin does)."""
    resolved = find(path)
    if resolved is None:
        return
    shipped = any(os.path.abspath(resolved).startswith(os.path.abspath(d) + os.sep) for d in shipped_dirs)
    with open(resolved, encoding="utf-8") as f:
        text = f.read()
    for statement in config_parser.ConfigParser(text, _NoValues()):
        if isinstance(statement, config_parser.BindingStatement):
            where = f"{_display(resolved, shipped_dirs)}:{statement.location.line_num}"
            _SOURCES[_key(statement.scope, statement.selector, statement.arg_name)] = Source(where, not shipped)
        elif isinstance(statement, config_parser.IncludeStatement):
            record_file(statement.filename, shipped_dirs, find)


def record_binding(binding: str) -> None:
    for statement in config_parser.ConfigParser(binding, _NoValues()):
        if isinstance(statement, config_parser.BindingStatement):
            name, _, value = binding.partition("=")
            _SOURCES[_key(statement.scope, statement.selector, statement.arg_name)] = Source(
                f"--gin.{name.strip()}={value.strip()}", True)


def _display(path: str, shipped_dirs: Sequence[str]) -> str:
    for d in shipped_dirs:
        if os.path.abspath(path).startswith(os.path.abspath(d) + os.sep):
            return os.path.relpath(path, d)
    return path


def _is_prefix(scope: str, of: str) -> bool:
    a, b = [s for s in scope.split("/") if s], [s for s in of.split("/") if s]
    return b[:len(a)] == a


def _is_used(scope: str, selector: str, param: str, operative, config) -> bool:
    for (op_scope, op_selector), values in operative.items():
        if op_selector != selector or param not in values or not _is_prefix(scope, op_scope):
            continue
        # gin gives a call in scope a/b the most specific binding among "", a, a/b.
        overridden = any(s != scope and _is_prefix(scope, s) and _is_prefix(s, op_scope) and param in v
                         for (s, sel), v in config.items() if sel == selector)
        if not overridden:
            return True
    return False


def _references(value) -> Iterable:
    if isinstance(value, gin.config.ConfigurableReference):
        yield value
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            yield from _references(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _references(k)
            yield from _references(v)


def _name(scope: str, selector: str, param: str) -> str:
    if selector == MACRO:
        return scope
    return f"{scope + '/' if scope else ''}{_short(selector)}.{param}"


def _short(selector: str) -> str:
    """The shortest name gin accepts for a configurable (`DecodeConfig`, not its module path)."""
    try:
        return gin.config._REGISTRY.minimal_selector(selector)  # noqa: SLF001
    except KeyError:
        return selector


def _readers(scope: str, selector: str, param: str, config) -> list[str]:
    """What would read the binding in a run configured differently."""
    if selector == MACRO:
        refs = [_name(s, sel, p) for (s, sel), values in config.items() for p, v in values.items()
                if any(r.config_key == (scope, MACRO) for r in _references(v))]
        if refs:
            return [f"it is referred to by {', '.join(sorted(refs))}, which this run does not read"]
        shipped = _shipped_files_with(rf"%{re.escape(scope)}\b")
        return [f"no binding of this run refers to %{scope}" + (f" (shipped files that do: {', '.join(shipped)})"
                                                                if shipped else "")]
    configurable = gin.config._REGISTRY.get(selector)  # noqa: SLF001
    short = _short(selector)
    called = sorted({s or "(no scope)" for (s, sel) in gin.config._OPERATIVE_CONFIG if sel == selector})  # noqa: SLF001
    if called:
        return [f"{short} is called in scope(s) {', '.join(called)}, none of which takes this binding (a caller "
                "passes the argument itself, or the scope differs)"]
    fields = _fields_taking(configurable.wrapped if configurable is not None else None)
    hint = f"; it is read through {', '.join(fields)} (e.g. bind `{fields[0]} = @{short}()`)" if fields else ""
    shipped = _shipped_files_with(rf"@{re.escape(short)}\b")
    if shipped and not fields:
        hint = f"; shipped files that call it: {', '.join(shipped)}"
    return [f"this run never calls {short}{hint}"]


def _shipped_files_with(pattern: str) -> list[str]:
    from sbs_jax.commands import gin_utils

    found = []
    for root in gin_utils.default_search_paths():
        for path in sorted(pathlib.Path(root).rglob("*.gin")):
            if re.search(pattern, path.read_text(encoding="utf-8")):
                found.append(str(path.relative_to(root)))
    return found[:4] + (["..."] if len(found) > 4 else [])


def _fields_taking(cls) -> list[str]:
    """`Config.field` of the registered dataclass configurables whose field holds a `cls`."""
    if not isinstance(cls, type):
        return []
    out = []
    for selector, configurable in list(gin.config._REGISTRY.items()):  # noqa: SLF001
        owner = configurable.wrapped
        if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
            continue
        try:
            hints = typing.get_type_hints(owner)
        except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
            hints = {}
        for field in dataclasses.fields(owner):
            if hints.get(field.name) is cls or isinstance(field.default, cls):
                out.append(f"{_short(selector)}.{field.name}")
    return sorted(set(out))


def unused() -> list[tuple[str, Source | None, list[str]]]:
    """(binding name, where it came from, what would read it) for every binding no configurable read."""
    config = gin.config._CONFIG  # noqa: SLF001 - gin has no public view of the bindings and the operative config
    operative = gin.config._OPERATIVE_CONFIG  # noqa: SLF001
    out = []
    for (scope, selector), values in config.items():
        for param in values:
            if not _is_used(scope, selector, param, operative, config):
                out.append((_name(scope, selector, param), _SOURCES.get((scope, selector, param)),
                            _readers(scope, selector, param, config)))
    return sorted(out, key=lambda item: item[0])


def check_unused(command: str = "this command", strict: bool = True, not_called: tuple[str, ...] = ()) -> None:
    """UsageError for unused bindings the user wrote; a warning on stderr for those of shipped gin files, and
    for every one with `strict=False` (sweep cells: a binding given to every cell of a grid may be meant for
    some of its methods only, e.g. RATIONALE_WEIGHT with finetune and step-by-step cells). A binding read only
    by configurables whose names start with one of `not_called` (ones the command deliberately does not call,
    e.g. the task registrations for `sbs compile`) is expected to stay unread."""
    found = [(name, source, readers) for name, source, readers in unused()
             if not (not_called and readers and all(any(f" {n}" in r for n in not_called) for r in readers))]
    lines = {True: [], False: []}
    for name, source, readers in found:
        where = source.where if source else "unknown origin"
        lines[strict and bool(source is None or source.user)].append(f"{name} ({where}): {'; '.join(readers)}")
    for line in lines[False]:
        print(f"{command}: warning: gin binding not used by this run: {line}", file=sys.stderr)
    if lines[True]:
        raise errors.UsageError(
            f"{len(lines[True])} gin binding(s) would be silently ignored by {command}: no configurable of the "
            "run reads them:\n  " + "\n  ".join(lines[True]))
