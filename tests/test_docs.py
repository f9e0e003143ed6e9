"""Every documented command works as written (issue #21): the commands and Python snippets of README.md, docs/,
bench/*.md, launch/ and the gin files' comments (tests/docs_snippets.py finds them) are checked statically
(gin files resolve, `--gin.X` names a macro or a configurable's parameter, each flag exists in its verb's parser,
every Python name and keyword argument exists), and the cheap ones run (launch scripts and sweeps with
`--dry_run`, a 2-step training of the documented embedded-task command). Markers: docs/docs_test.md."""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys

import gin
import pytest

import docs_snippets as docs
from sbs_jax import cli
from sbs_jax.commands import gin_utils

SNIPPETS = docs.all_snippets()
SHELL = [s for s in SNIPPETS if s.kind in ("shell", "inline")]
PYTHON = [s for s in SNIPPETS if s.kind == "python"]
# Generic names the prose uses to explain the syntax (`--gin.NAME=VALUE`, `--gin.Sweep.FIELD=...`).
PLACEHOLDERS = {"NAME", "X", "MACRO", "FIELD"}


def _ids(snippets):
    return [s.where for s in snippets]


def test_the_docs_hold_commands_of_every_kind():
    kinds = {s.kind for s in SNIPPETS}
    assert kinds == {"shell", "inline", "python", "inline_python"} and len(SHELL) > 30, kinds


@pytest.mark.parametrize("snippet", [s for s in SHELL if s.problems], ids=_ids([s for s in SHELL if s.problems]))
def test_wrapped_commands_continue_with_a_backslash(snippet):
    pytest.fail("\n".join(snippet.problems))


# ---- gin: files, macros and configurables ----

@functools.cache
def _macros() -> set[str]:
    names = set()
    for root in gin_utils.default_search_paths():
        for path in docs.REPO.joinpath(root).rglob("*.gin"):
            names |= set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", path.read_text(), flags=re.MULTILINE))
    return names


def _register():
    gin_utils.register_configurables()
    from sbs_jax.sweep import grid

    if not gin.config._REGISTRY.get("Sweep"):  # noqa: SLF001 - as `sbs sweep` registers it
        gin.external_configurable(grid.SweepConfig, "Sweep")


def gin_name_problem(name: str) -> str | None:
    """None when `--gin.NAME=...` binds something that exists: a macro of the shipped gin files, or a parameter
    of a registered configurable (optionally scoped: `scope/Configurable.param`)."""
    *_, last = name.split("/")
    if last.split(".")[-1] in PLACEHOLDERS:
        return None
    if "." not in last:
        return None if last in _macros() else f"--gin.{name}: no shipped gin file defines the macro {last}"
    _register()
    selector, param = last.rsplit(".", 1)
    configurable = gin.config._REGISTRY.get_match(selector)  # noqa: SLF001
    if configurable is None:
        return f"--gin.{name}: {selector} is not a gin configurable"
    try:
        params = inspect.signature(configurable.wrapped).parameters
    except (TypeError, ValueError):
        return None
    if param not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return f"--gin.{name}: {selector} has no parameter {param!r} (it has {', '.join(params)})"
    return None


def _gin_text_files():
    return docs.doc_files() + docs.comment_files()


@pytest.mark.parametrize("path", _gin_text_files(), ids=[docs.rel(p) for p in _gin_text_files()])
def test_every_gin_flag_names_a_macro_or_a_configurable_parameter(path):
    problems = {gin_name_problem(name) for name, _ in docs.gin_flags(path.read_text(encoding="utf-8"))}
    assert problems <= {None}, sorted(p for p in problems if p)


def _gin_files_of(tokens) -> list[str]:
    files = []
    for i, tok in enumerate(tokens):
        if tok.startswith("--gin_file="):
            files.append(tok.split("=", 1)[1])
        elif tok == "--gin_file" and i + 1 < len(tokens):
            files.append(tokens[i + 1])
        elif tok.startswith("--gin."):  # gin files named inside values: Sweep.dataset_gin, Sweep.gin_files
            files += re.findall(r"""['"]([\w./-]+\.gin)['"]""", tok)
    return [f for f in files if f != "..." and not f.endswith("/...")]


@pytest.mark.parametrize("snippet", SHELL, ids=_ids(SHELL))
def test_every_gin_file_resolves(snippet):
    missing = [f for cmd in docs.commands(snippet) for f in _gin_files_of(cmd) if gin_utils._find(f, []) is None]
    assert not missing, f"{snippet.where}: gin files not found as given nor under gin/: {missing}"


# ---- flags of each verb, script and benchmark ----

def _captured(fn, *args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = fn(*args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
    return int(code or 0), out.getvalue()


@functools.cache
def sbs_help(*verb: str) -> str:
    code, text = _captured(cli.main, [*verb, "--help"])
    assert code == 0 and "usage" in text.lower(), f"sbs {' '.join(verb)} --help: exit {code}\n{text}"
    return text


@functools.cache
def module_help(module: str) -> str:
    main = importlib.import_module(module).main
    code, text = _captured(main, ["--help"])
    assert code == 0 and "usage" in text.lower(), f"python -m {module} --help: exit {code}\n{text}"
    return text


@functools.cache
def script_help(script: str) -> str:
    done = subprocess.run(["bash", str(docs.REPO / script), "-h"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{script} -h: exit {done.returncode}\n{done.stderr}"
    return done.stdout


def _flags(tokens) -> list[str]:
    flags = []
    for tok in tokens:
        if tok.startswith("--") and tok != "--" and not tok.startswith("--gin."):
            flags += [f.split("=", 1)[0] for f in re.split(r"/(?=--)", tok)]
    return flags


def _unknown(flags, help_text) -> list[str]:
    def listed(flag):  # absl lists a boolean flag as `--[no]name`
        forms = [flag] + ([f"--[no]{flag[2:]}"] if flag.startswith("--") else [])
        return any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text) for f in forms)
    return [f for f in flags if not listed(f)]


def parse_command(tokens):
    """(kind, target, own args, sbs-train args after `--`) of a documented command, or None to ignore it."""
    tokens = list(tokens)
    env = {}
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    if not tokens:
        return None
    if tokens[0] == "sbatch":  # sbatch's own options, then the script
        tokens = tokens[next(i for i, t in enumerate(tokens) if t.endswith(".sbatch")):]
    elif tokens[0] == "bash" and len(tokens) > 1:
        tokens = tokens[1:]
    head = tokens[0]
    if head == "sbs":
        return "sbs", tokens[1:], env
    if head in ("python", "python3") and tokens[1:2] == ["-m"] and tokens[2].startswith("bench."):
        return "bench", tokens[2:], env
    if head.startswith("launch/"):
        return "script", tokens, env
    return None


def _sbs_target(args):
    verb = args[0]
    sub = args[1] if len(args) > 1 and args[1] in cli.SUBCOMMANDS.get(verb, ()) else None
    return (verb, sub) if sub else (verb,)


def command_problems(snippet) -> list[str]:
    problems = []
    for tokens in docs.commands(snippet):
        parsed = parse_command(tokens)
        if parsed is None:
            continue
        kind, args, _ = parsed
        if kind == "sbs":
            if not args or args[0] not in cli.COMMANDS:
                problems.append(f"sbs {args[:1]}: not a verb of the CLI ({', '.join(cli.COMMANDS)})")
                continue
            target = _sbs_target(args)
            problems += [f"sbs {' '.join(target)}: no flag {f}" for f in _unknown(_flags(args), sbs_help(*target))]
        elif kind == "bench":
            problems += [f"python -m {args[0]}: no flag {f}" for f in _unknown(_flags(args[1:]), module_help(args[0]))]
        else:
            script, rest = args[0], args[1:]
            own, train = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, [])
            problems += [f"{script}: no option {f}" for f in _unknown(_flags(own), script_help(script))]
            problems += [f"{script} -- (sbs train): no flag {f}" for f in _unknown(_flags(train), sbs_help("train"))]
    return [f"{snippet.where}: {p}" for p in problems]


@pytest.mark.parametrize("snippet", SHELL, ids=_ids(SHELL))
def test_every_flag_exists_in_its_parser(snippet):
    problems = command_problems(snippet)
    assert not problems, "\n".join(problems)


# ---- Python snippets: names, attributes and keyword arguments ----

def _resolve(node, namespace):
    """The object a `name.attr.attr` expression names, or None when it is not a plain chain of known names."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, namespace)
        if base is None:
            return None
        if not hasattr(base, node.attr):
            raise AttributeError(f"{ast.unparse(node.value)} has no attribute {node.attr!r}")
        return getattr(base, node.attr)
    return None


# Our modules are imported and every name checked; third-party modules (transformers, tensorflow_text: 10 s or
# more to import) only have to exist, their names are theirs to keep.
OURS = ("sbs_jax", "tasks", "bench")


def _import(name):
    if name.split(".")[0] in OURS:
        return importlib.import_module(name)
    if importlib.util.find_spec(name.split(".")[0]) is None:
        raise ImportError(f"no module named {name.split('.')[0]!r}")
    return None


@functools.cache
def _our_modules() -> dict[str, list[str]]:
    """Last name -> full names of the modules and packages of sbs_jax, from the files (nothing imported)."""
    names: dict[str, list[str]] = {}
    for path in (docs.REPO / "sbs_jax").rglob("*.py"):
        parts = path.relative_to(docs.REPO).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        names.setdefault(parts[-1], []).append(".".join(parts))
    return names


def python_problems(snippet, namespace=None) -> list[str]:
    try:
        tree = ast.parse(snippet.text)
    except SyntaxError as e:
        return [f"{snippet.where}: not valid Python: {e}"]
    namespace, problems = dict(namespace or {}), []
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module = _import(alias.name)
                    if module is not None:
                        namespace[alias.asname or alias.name.split(".")[0]] = module if alias.asname else \
                            importlib.import_module(alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                module = _import(node.module)
                for alias in node.names if module is not None else ():
                    if hasattr(module, alias.name):
                        value = getattr(module, alias.name)
                    else:
                        value = importlib.import_module(f"{node.module}.{alias.name}")
                    namespace[alias.asname or alias.name] = value
        except (ImportError, AttributeError) as e:
            problems.append(f"{snippet.where}: {ast.unparse(node)}: {type(e).__name__}: {e}")
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Attribute):
                _resolve(node, namespace)
            if isinstance(node, ast.Call):
                fn = _resolve(node.func, namespace)
                if fn is None or not callable(fn):
                    continue
                try:
                    signature = inspect.signature(fn)
                except (TypeError, ValueError):
                    continue
                starred = any(isinstance(a, ast.Starred) for a in node.args)
                kwargs = {k.arg: None for k in node.keywords if k.arg is not None}
                signature.bind_partial(*([] if starred else [None] * len(node.args)), **kwargs)
        except (AttributeError, TypeError) as e:
            problems.append(f"{snippet.where}: {ast.unparse(node)[:80]}: {e}")
    return problems


@pytest.mark.parametrize("snippet", PYTHON, ids=_ids(PYTHON))
def test_every_python_name_and_keyword_exists(snippet):
    problems = python_problems(snippet)
    assert not problems, "\n".join(problems)


INLINE_PYTHON = [s for s in SNIPPETS if s.kind == "inline_python"]


@pytest.mark.parametrize("snippet", INLINE_PYTHON, ids=_ids(INLINE_PYTHON))
def test_calls_named_in_the_prose_exist(snippet):
    """`pipeline.get_eval_examples(task, split=...)` in a sentence: the function and its keywords exist. A short
    first name is the sbs_jax module of that name when there is exactly one; signature notation that is not
    Python (`f(a, *, b)`) and names of other libraries are left alone."""
    try:
        call = ast.parse(snippet.text, mode="eval").body
    except SyntaxError:
        pytest.skip("signature notation, not a call")
    head = call.func
    while isinstance(head, (ast.Attribute, ast.Call)):
        head = head.value if isinstance(head, ast.Attribute) else head.func
    if not isinstance(head, ast.Name):
        pytest.skip("not a name")
    if head.id == "sbs_jax":
        namespace = {"sbs_jax": importlib.import_module("sbs_jax")}
        dotted = ast.unparse(call.func).split(".")
        for i in range(2, len(dotted)):  # import the submodules the dotted name walks through
            with contextlib.suppress(ImportError):
                importlib.import_module(".".join(dotted[:i]))
    elif len(_our_modules().get(head.id, [])) == 1:
        module = importlib.import_module(_our_modules()[head.id][0])
        first = call.func
        while isinstance(first, ast.Attribute) and isinstance(first.value, ast.Attribute):
            first = first.value
        if isinstance(first, ast.Attribute) and not hasattr(module, first.attr):
            # `model.apply(...)`, `config.replace(...)`: a variable named like a module, not the module.
            pytest.skip(f"{head.id}.{first.attr}: {head.id} is a variable here, not {module.__name__}")
        namespace = {head.id: module}
    else:
        pytest.skip(f"{head.id} is not one module of sbs_jax")
    problems = python_problems(snippet, namespace)
    assert not problems, "\n".join(problems)


# ---- the cheap commands, run ----

def _runnable(kind):
    out = []
    for snippet in SHELL:
        if not snippet.run:
            continue
        for tokens in docs.commands(snippet):
            parsed = parse_command(tokens)
            if parsed and parsed[0] == kind:
                out.append((snippet.where, *parsed))
    return out


SCRIPTS = _runnable("script")
# Whole sweep commands (a gin file given; `sbs sweep --in_process` in a sentence is a fragment).
SWEEPS = [c for c in _runnable("sbs") if c[2][:1] == ["sweep"] and c[2][1:2] != ["report"]
          and any(a.startswith("--gin_file") for a in c[2])]
# The documented training commands that need no data (the embedded task), given alone or after a launch
# script's `--`: the first is trained for 2 steps.
TRAININGS = [(where, (args[args.index("--") + 1:] if kind == "script" else args[1:]))
             for where, kind, args, _ in _runnable("script") + _runnable("sbs")
             if (kind == "script" and "--" in args or args[:1] == ["train"])
             and "--gin_file=datasets/arith.gin" in args]


@pytest.mark.parametrize("where,kind,args,env", SCRIPTS, ids=[c[0] for c in SCRIPTS])
def test_launch_commands_dry_run(where, kind, args, env, tmp_path):
    """Each documented launch command, with --dry_run: prints its commands and runs nothing (no venv, no SLURM,
    no gcloud needed)."""
    script, rest = args[0], args[1:]
    if script.endswith("tpu_pod.sh"):
        # Its preflight compiles the documented model for the slice (minutes on a CPU); tests/test_launch.py and
        # tests/test_tpu_compile.py test the preflight itself.
        rest = ["--skip_compile", *rest]
    done = subprocess.run(["bash", str(docs.REPO / script), "--dry_run", *rest], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={**os.environ, **env, "PATH": os.environ["PATH"]})
    assert done.returncode == 0, f"{where}: {script} --dry_run: exit {done.returncode}\n{done.stderr}"
    assert re.search(r"^\+ ", done.stdout, flags=re.MULTILINE), done.stdout
    assert not list(tmp_path.iterdir()), f"{where}: the dry run wrote {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("where,kind,args,env", SWEEPS, ids=[c[0] for c in SWEEPS])
def test_sweep_commands_dry_run(where, kind, args, env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = _captured(cli.main, [*args, "--dry_run"])
    assert code == 0, f"{where}: sbs {' '.join(args)} --dry_run: exit {code}\n{text}"
    assert "files [" in text, text


@pytest.mark.slow
def test_a_documented_training_command_trains_two_steps(tmp_path):
    """The first documented embedded-task training, as `sbs train` in one process, 2 steps, without the
    evaluations (decoding 3,000 problems on a CPU is what the other slow tests cover); it also writes the
    persistent compilation cache that `sbs train` now sets up."""
    assert TRAININGS, "no documented sbs train command on the embedded task"
    where, args = TRAININGS[0]
    args = [a for a in args if not a.startswith(("--gin.MODEL_DIR=", "--gin.TRAIN_STEPS="))]
    args += [f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2", "--gin.VALIDATION_SPLIT=None",
             "--gin.TEST_SPLIT=None"]
    env = {**os.environ, "SBS_CACHE_DIR": str(tmp_path / "cache"), "JAX_COMPILATION_CACHE_DIR": ""}
    done = subprocess.run([sys.executable, "-m", "sbs_jax.cli", "train", *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, f"{where}: sbs train {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}"
    assert '"final_step": 2' in done.stdout, done.stdout[-2000:]
    assert any((tmp_path / "cache" / "jax_compilation_cache").iterdir()), "sbs train cached no compilation"
