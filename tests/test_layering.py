"""The import floors (docs/ARCHITECTURE.md): commands import the library, never the reverse; checkpoints and
export do not import train. Read with `ast`, not by importing, so function-local imports count too."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sbs_jax"

# package (relative to sbs_jax/) -> modules it must not import. `sbs_jax/cli.py` (the `sbs` dispatcher) names
# command modules as strings for importlib; it imports none of them.
FORBIDDEN = {
    "": ("sbs_jax.commands",),  # every module outside sbs_jax/commands/
    "checkpoints": ("sbs_jax.train",),
    "export": ("sbs_jax.train",),
}


def imported_modules(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth; `from a import b` gives both a and a.b, so
    `from sbs_jax import commands` is seen as sbs_jax.commands."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(root: pathlib.Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "commands":
            continue
        for package, banned in FORBIDDEN.items():
            if package and rel.parts[0] != package:
                continue
            seen = set()  # one report per import statement
            for line, module in imported_modules(path, root):
                for b in banned:
                    if (module == b or module.startswith(b + ".")) and line not in seen:
                        seen.add(line)
                        out.append(f"sbs_jax/{rel}:{line} imports {module} (the library must not import {b})")
    return out


def test_library_does_not_import_commands_and_checkpoints_export_do_not_import_train():
    assert PACKAGE.is_dir() and any((PACKAGE / "commands").glob("*.py"))
    assert violations() == []


@pytest.mark.parametrize("where, line", [
    ("train/trainer_extra.py", "def f():\n    from sbs_jax.commands import gin_utils\n"),
    ("sweep/extra.py", "from sbs_jax import commands\n"),
    ("data/extra.py", "import sbs_jax.commands.train as t\n"),
    ("sweep/extra.py", "from ..commands import sweep_cell\n"),
    ("export/extra.py", "from sbs_jax.train import evaluation\n"),
    ("checkpoints/extra.py", "def f():\n    import sbs_jax.train.checkpointing\n"),
])
def test_a_violation_is_found(tmp_path, where, line):
    """The check on a copy of the package with one offending file added (function-local and relative too)."""
    import shutil

    root = tmp_path / "sbs_jax"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / where).write_text(line)
    found = violations(root)
    assert len(found) == 1 and found[0].startswith(f"sbs_jax/{where}:"), found


# Inside sbs_jax/data/: each subpackage imports only itself, `schema` and the subpackages ranked below it.
DATA_RANKS = {"schema": 0, "scoring": 1, "vocab": 1, "records": 2, "registry": 3, "input_pipeline": 4}


def data_violations(root: pathlib.Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted((root / "data").rglob("*.py")):
        rel = path.relative_to(root / "data")
        if len(rel.parts) < 2:  # schema.py and the package face
            continue
        own = rel.parts[0]
        seen = set()
        for line, module in imported_modules(path, root):
            parts = module.split(".")
            if parts[:2] != ["sbs_jax", "data"] or len(parts) < 3 or line in seen:
                continue
            other = parts[2]
            if other not in DATA_RANKS:
                seen.add(line)
                out.append(f"sbs_jax/data/{rel}:{line} imports {module}: not a data subpackage")
            elif other != own and DATA_RANKS[other] >= DATA_RANKS[own]:
                seen.add(line)
                out.append(f"sbs_jax/data/{rel}:{line} imports {module} (data/{own} may import only "
                           f"subpackages ranked below it: {DATA_RANKS})")
    return out


def test_data_subpackages_import_downwards_only():
    assert {p.name for p in (PACKAGE / "data").iterdir() if p.is_dir() and p.name != "__pycache__"} \
        == set(DATA_RANKS) - {"schema"}
    assert data_violations() == []


@pytest.mark.parametrize("where, line", [
    ("data/records/extra.py", "from sbs_jax.data.registry import register\n"),
    ("data/vocab/extra.py", "def f():\n    from sbs_jax.data.scoring import metrics\n"),
    ("data/registry/extra.py", "from ..input_pipeline import packing\n"),
])
def test_an_upward_data_import_is_found(tmp_path, where, line):
    import shutil

    root = tmp_path / "sbs_jax"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / where).write_text(line)
    found = data_violations(root)
    assert len(found) == 1 and found[0].startswith(f"sbs_jax/{where}:"), found


# Every import of a project module, at any depth and in every top-level directory, names a module or a name the
# module defines. Function-local imports only fail when that branch runs (a moved module once broke `sbs compile
# --pack` this way), so they are resolved here statically.
PROJECT = PACKAGE.parent
PROJECT_DIRS = ("sbs_jax", "bench", "tasks", "tests", "launch")


# setup.py's package_dir: the installed name -> the directory in the repository.
PACKAGE_DIRS = {"sbs_jax.tasks": "tasks", "sbs_jax.gin_configs": "gin"}
NAMESPACE = object()  # a directory without __init__.py (bench/): a namespace package, defines no names


def _module_file(root: pathlib.Path, module: str):
    for installed, directory in PACKAGE_DIRS.items():
        if module == installed or module.startswith(installed + "."):
            module = directory + module[len(installed):]
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return NAMESPACE if base.is_dir() and base.name in PROJECT_DIRS else None


def _top_level_names(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Name,)) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def unresolved_imports(root: pathlib.Path = PROJECT) -> list[str]:
    out = []
    for directory in PROJECT_DIRS:
        for path in sorted((root / directory).rglob("*.py")):
            rel = path.relative_to(root)
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                modules = []
                if isinstance(node, ast.Import):
                    modules = [(a.name, None) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [(node.module, [a.name for a in node.names])]
                for module, names in modules:
                    if module.split(".")[0] not in ("sbs_jax", "bench", "tasks"):
                        continue
                    found = _module_file(root, module)
                    if found is None:
                        out.append(f"{rel}:{node.lineno} imports {module}: no such module")
                        continue
                    defined = set() if found is NAMESPACE else _top_level_names(found)
                    for name in names or ():
                        if name != "*" and name not in defined and _module_file(root, f"{module}.{name}") is None:
                            out.append(f"{rel}:{node.lineno} imports {name} from {module}: neither a module "
                                       f"nor a name it defines")
    return out


def test_every_project_import_resolves():
    assert unresolved_imports() == []


@pytest.mark.parametrize("line", [
    "def f():\n    from sbs_jax.data import packing\n",
    "import sbs_jax.train.no_such_module\n",
    "from sbs_jax.model import NoSuchName\n",
])
def test_an_unresolved_import_is_found(tmp_path, line):
    import shutil

    root = tmp_path / "repo"
    for directory in PROJECT_DIRS:
        shutil.copytree(PROJECT / directory, root / directory, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "sbs_jax" / "train" / "extra.py").write_text(line)
    found = unresolved_imports(root)
    assert len(found) == 1 and found[0].startswith("sbs_jax/train/extra.py:"), found
