"""Gin plumbing as T5X users know it: `--gin_file`, `--gin.MACRO=value`, search paths, operative config.

The typed configs (TrainConfig, EvalConfig, T5Config, ...) are made gin-configurable here, from outside
their modules, so those modules stay gin-free. Not all of the library is: the task registration functions
(`sbs_jax/data/registry/register.py`) and `tasks/` are `@gin.configurable` themselves, since gin files call them by
name (`TASK_REGISTRATIONS`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import pathlib
import re
import tokenize
from typing import Sequence

import gin

from sbs_jax import errors, run_dir
from sbs_jax.commands import gin_bindings

_REGISTERED = False
# A macro that is referenced but never defined: gin calls `macro()` without a value in the macro's scope.
_UNSET_MACRO = re.compile(r"In call to configurable 'macro' .* in scope '(\w+)'")
_REGISTERED_NAMES = {"T5Config": "model_config"}
# A macro left at %gin.REQUIRED is reported by gin as "<NAME>/macro.value set to %gin.REQUIRED ...".
_REQUIRED_MACRO = re.compile(r"(\w+)/macro\.value set to %gin\.REQUIRED")


def register_configurables() -> None:
    """Make the typed configs gin-configurable (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import sbs_jax.tasks  # noqa: F401 - registers sbs_jax.tasks.register_* with gin
    from sbs_jax.data.registry import register  # noqa: F401 - registers sbs_jax.data.register_* with gin
    from sbs_jax.model.decoder import presets as decoder_presets
    from sbs_jax.model.t5 import config as model_config
    from sbs_jax.train import evaluation, infer, objective, optim, trainer

    gin.external_configurable(model_config.get_config, "model_config")
    gin.external_configurable(decoder_presets.get_config, "decoder_config")
    gin.external_configurable(optim.OptimizerConfig, "OptimizerConfig")
    gin.external_configurable(objective.ObjectiveConfig, "ObjectiveConfig")
    gin.external_configurable(trainer.TrainConfig, "TrainConfig")
    gin.external_configurable(evaluation.EvalConfig, "EvalConfig")
    gin.external_configurable(evaluation.DecodeConfig, "DecodeConfig")
    gin.external_configurable(infer.InferConfig, "InferConfig")
    gin.external_configurable(task_name, "task_name")
    _guard_package_lookup()
    _REGISTERED = True


def _guard_package_lookup() -> None:
    """gin looks a relative name such as `runs/train.gin` up as a file of the Python package `runs` too; when the
    working directory is on sys.path (`python -m`, `python -c`, notebooks) and holds a folder `runs/`, that is a
    namespace package without a file, and gin's check crashes with a TypeError instead of answering "no". Make
    that check answer "no", so the search paths are tried next."""
    readers = gin.config._FILE_READERS  # noqa: SLF001 - gin offers no way to replace a registered reader
    for i, (reader, exists) in enumerate(readers):
        if getattr(exists, "_sbs_guarded", False):
            continue

        def guarded(path, _exists=exists):
            try:
                return _exists(path)
            except TypeError:
                return False

        guarded._sbs_guarded = True
        readers[i] = (reader, guarded)


def task_name(dataset: str, variant: str) -> str:
    """`{dataset}_{variant}`: lets a dataset gin file (DATASET) and a run gin file (TASK_VARIANT: sbs, sbs_llm,
    ft, distill) together name the task, since gin macros cannot concatenate strings."""
    for name, value in (("DATASET", dataset), ("TASK_VARIANT", variant)):
        if value is gin.REQUIRED:
            raise errors.UsageError(_required_message(name) + " (or set MIXTURE_OR_TASK_NAME)")
    return f"{dataset}_{variant}"


def default_search_paths() -> list[str]:
    """The installed `sbs_jax.gin_configs` package data, else the repository's `gin/` (editable installs)."""
    paths = []
    spec = importlib.util.find_spec("sbs_jax.gin_configs")
    if spec is not None and spec.submodule_search_locations:
        paths += [p for p in spec.submodule_search_locations if os.path.isdir(p)]
    repo_gin = pathlib.Path(__file__).resolve().parents[2] / "gin"
    if repo_gin.is_dir() and str(repo_gin) not in paths:
        paths.append(str(repo_gin))
    return paths


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (absl has no flag named `gin.NAME`)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin."):
            name, sep, value = arg[len("--gin."):].partition("=")
            if not sep:
                raise errors.UsageError(f"{arg!r}: expected --gin.NAME=VALUE")
            out.append(f"--gin_bindings={name} = {value}")
        else:
            out.append(arg)
    return out


def parse(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    """Parse files (looked up on the search paths) and bindings; unknown names are errors."""
    register_configurables()
    gin.clear_config()
    for path in list(search_paths) + default_search_paths():
        gin.add_config_file_search_path(path)
    for f in gin_files:
        if not _findable(f, list(search_paths) + default_search_paths()):
            raise errors.UsageError(f"gin file {f!r} not found as given nor under the search paths "
                                    f"{list(search_paths) + default_search_paths()}")
    # gin tries each include relative to the working directory first and logs "Path not found" at ERROR
    # before it finds the file on the search path; that is not an error, so filter it out while parsing.
    # Files and bindings are parsed one at a time so that an error names the one at fault.
    root = logging.getLogger()
    root.addFilter(_path_not_found_filter)
    gin_bindings.reset()
    try:
        for f in gin_files:
            with _naming_errors(f"gin file {f} (or a file it includes)", path=_find(f, search_paths)):
                gin.parse_config_file(f, skip_unknown=False)
            gin_bindings.record_file(f, default_search_paths(), lambda name: _find(name, search_paths))
        for binding in bindings:
            with _naming_errors(f"--gin binding {binding!r}", binding=binding):
                gin.parse_config(binding, skip_unknown=False)
            gin_bindings.record_binding(binding)
    finally:
        root.removeFilter(_path_not_found_filter)


class _naming_errors:
    """Turn gin's parse errors (SyntaxError, tokenize.TokenError, ValueError) into a UsageError naming the file
    or binding, with the line, and for an unquoted string value how to quote it."""

    def __init__(self, where: str, binding: str | None = None, path: str | None = None):
        self.where, self.binding, self.path = where, binding, path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, errors.SbsError):
            return False
        if isinstance(exc, tokenize.TokenError):
            opened = _unclosed_bracket(self.path) if self.path else None
            if opened:
                raise errors.UsageError(f"{self.where}: line {opened[0]}: unclosed {opened[1]!r} (the file ends "
                                        "before it is closed)") from None
            line = exc.args[1][0] if len(exc.args) > 1 and exc.args[1] else "?"
            raise errors.UsageError(f"{self.where}: line {line}: {exc.args[0]}; check for an unclosed bracket, "
                                    "brace or quote") from None
        if isinstance(exc, SyntaxError):
            location = getattr(exc, "location", None) or (exc.args[1] if len(exc.args) > 1 else None)
            text = str(getattr(location, "line_content", "") or "").strip()
            line = getattr(location, "line_num", None)
            hint = ""
            if self.binding is not None:
                name, _, value = self.binding.partition("=")
                name, value = name.strip(), value.strip()
                if value and value[0] not in "'\"[{(%@-0123456789" and value not in ("True", "False", "None"):
                    hint = (f"; a string value needs its own quotes inside the shell's: "
                            f"--gin.{name}=\"'{value}'\"")
            at = "" if self.binding is not None or line is None else f": line {line}"
            raise errors.UsageError(f"{self.where}{at}: gin cannot parse {text!r} ({exc.msg}){hint}") from None
        if isinstance(exc, (ValueError, KeyError, TypeError)):
            # gin adds its location on indented lines below the message: keep it, on the same line.
            lines = [line.strip() for line in str(exc).strip().splitlines()]
            raise errors.UsageError(f"{self.where}: {' '.join(lines[:2])}") from None
        return False


def _find(name: str, search_paths: Sequence[str]) -> str | None:
    for path in [name] + [os.path.join(p, name) for p in list(search_paths) + default_search_paths()]:
        if os.path.isfile(path):
            return path
    return None


def _unclosed_bracket(path: str) -> tuple[int, str] | None:
    """(line, bracket) of the outermost bracket a gin file leaves open (gin reads it with Python's tokenizer,
    which reports only where the file ended)."""
    stack = []
    try:
        with open(path, encoding="utf-8") as f:
            for tok in tokenize.generate_tokens(f.readline):
                if tok.type == tokenize.OP and tok.string in "([{":
                    stack.append((tok.start[0], tok.string))
                elif tok.type == tokenize.OP and tok.string in ")]}" and stack:
                    stack.pop()
    except (tokenize.TokenError, SyntaxError, OSError, UnicodeDecodeError):
        pass
    return stack[0] if stack else None


def _path_not_found_filter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found:")


def _findable(name: str, search_paths: Sequence[str]) -> bool:
    return os.path.isfile(name) or any(os.path.isfile(os.path.join(p, name)) for p in search_paths)


def build(configurable: str, command: str = "this command", strict: bool = True,
          register_tasks: bool = True):
    """Register the tasks the gin files list, then call a registered configurable with its gin bindings; a
    value left at %gin.REQUIRED is named, and a binding no configurable read is an error or a warning
    (`gin_bindings.check_unused`).

    The registrations are the calls in the macro TASK_REGISTRATIONS (a dataset file's), bound by runs/train.gin
    and runs/eval.gin to `sbs_jax.data.register_tasks.registrations`; gin runs them when `register_tasks` is
    called, here, before the config that names the task is built. Without that binding it registers nothing.
    `register_tasks=False` skips them (`sbs compile`: shapes only, no data dir).
    """
    from sbs_jax.data.registry import register

    try:
        if register_tasks:
            register.register_tasks()
        value = gin.get_configurable(configurable)()
    except errors.SbsError:
        raise
    except ValueError as e:
        match = _REQUIRED_MACRO.search(str(e))
        if match:
            raise errors.UsageError(_required_message(match.group(1))) from None
        raise
    except TypeError as e:
        match = _UNSET_MACRO.search(str(e))
        if match:
            raise errors.UsageError(_required_message(match.group(1))) from None
        raise errors.UsageError(f"gin config for {configurable}: {e}") from None
    _check_required(value, configurable)
    gin_bindings.check_unused(command, strict, not_called=() if register_tasks else ("register_",))
    return value


def _required_message(name: str) -> str:
    return f"gin macro {name} is required but not set; pass --gin.{name}=... or set it in a --gin_file"


def _check_required(value, configurable: str) -> None:
    """A field bound (through a macro) to %gin.REQUIRED arrives as the REQUIRED sentinel: name the macro."""
    if not dataclasses.is_dataclass(value):
        return
    for field in dataclasses.fields(value):
        v = getattr(value, field.name)
        if v is gin.REQUIRED:
            try:
                ref = str(gin.query_parameter(f"{configurable}.{field.name}"))
            except ValueError:
                ref = f"{configurable}.{field.name}"
            raise errors.UsageError(_required_message(ref.lstrip("%")))
        if dataclasses.is_dataclass(v):
            _check_required(v, _REGISTERED_NAMES.get(type(v).__name__, type(v).__name__))


def write_operative_config(model_dir: str | os.PathLike):
    """MODEL_DIR/config.gin, written atomically (a crash leaves the old file or the new one, never half)."""
    return run_dir.atomic_write_text(run_dir.RunDir(model_dir).config_gin, gin.operative_config_str())
