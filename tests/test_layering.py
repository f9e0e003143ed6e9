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
