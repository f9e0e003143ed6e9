"""Runs a sweep's cells one after another, each in a fresh process, skipping the finished ones.

Resumable by construction: a cell counts only through its completion marker (marker.py). On a rerun, a cell
with a valid marker is skipped; one without (killed mid-run) is run again in its directory, where the trainer
resumes from its newest intact checkpoint; one whose marker is corrupted or was written for other settings is
cleared and run from scratch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

from etils import epath

from sbs_jax import paths
from sbs_jax.sweep import grid, marker as marker_lib

PLAN_FILE = "sweep.json"
SPEC_FILE = "cell_spec.json"  # written before a cell starts: what its checkpoints were trained with


class CellFailed(RuntimeError):
    pass


def cell_spec(config: grid.SweepConfig, cell: grid.Cell, extra_bindings: Sequence[str]) -> dict:
    cell_dir = paths.absolute(config.sweep_dir) / cell.key
    return {"cell": cell.to_dict(), "fraction_binding": config.fraction_binding,
            **grid.cell_gin(config, cell, os.fspath(cell_dir), extra_bindings)}


def launch_subprocess(spec: dict, cell_dir: epath.Path) -> None:
    """Run `python -m sbs_jax.commands.sweep_cell` for one cell; its output goes to `<cell>/cell.log`.

    The cell is a command (it parses gin), spawned by module name: the library does not import it."""
    local = paths.is_local(cell_dir)
    if local:
        cell_dir.mkdir(parents=True, exist_ok=True)
        log_path = cell_dir / "cell.log"
    else:  # an object cannot be appended to while the cell runs: log locally, upload at the end
        log_path = epath.Path(tempfile.mkstemp(prefix="sbs_cell_", suffix=".log")[1])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    with open(log_path, "a") as log:
        # -P: the working directory is not put on sys.path, so a user's `runs/` or `models/` folder there cannot
        # shadow a module or a gin file's package lookup in the cell.
        rc = subprocess.run([sys.executable, "-P", "-m", "sbs_jax.commands.sweep_cell", json.dumps(spec)], stdout=log,
                            stderr=subprocess.STDOUT, env=env).returncode
    text = log_path.read_text()
    if not local:
        (cell_dir / "cell.log").write_text(text)
        log_path.unlink()
    if rc != 0:
        tail = "\n".join(text.splitlines()[-30:])
        raise CellFailed(f"cell {spec['cell']} failed (exit {rc}); log {cell_dir / 'cell.log'}:\n{tail}")


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def _started_spec(cell_dir: epath.Path) -> dict | None:
    try:
        return json.loads((cell_dir / SPEC_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_plan(config: grid.SweepConfig, cells: Sequence[grid.Cell]) -> None:
    """`sweep.json`: the settings and every planned cell, so a report knows the whole grid."""
    root = paths.absolute(config.sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    plan = {"config": {k: list(v) if isinstance(v, (list, tuple)) else v
                       for k, v in vars(config).items()}, "cells": [c.key for c in cells]}
    marker_lib.write_atomic(root / PLAN_FILE, json.dumps(plan, indent=2) + "\n")


def run_sweep(config: grid.SweepConfig, extra_bindings: Sequence[str] = (), *,
              launch: Callable[[dict, epath.Path], None] = launch_subprocess, out=sys.stdout) -> dict:
    """Run every cell without a valid marker; returns counts {total, skipped, run}."""
    cells = grid.plan_cells(config)
    root = paths.absolute(config.sweep_dir)
    write_plan(config, cells)
    todo = []
    for cell in cells:
        spec = cell_spec(config, cell, extra_bindings)
        cell_dir = root / cell.key
        found, why = marker_lib.read(cell_dir, spec)
        if found is None:
            todo.append((cell, spec, why))
    done = len(cells) - len(todo)
    print(f"sbs sweep: {len(cells)} cells in {root}; {done} finished, {len(todo)} to run", file=out, flush=True)
    spent = []
    for i, (cell, spec, why) in enumerate(todo):
        cell_dir = root / cell.key
        if (cell_dir / marker_lib.MARKER).exists():
            # A marker that does not count (corrupted, or other settings): nothing in the dir can be trusted.
            print(f"  {cell.key}: {why}; clearing it and running it again", file=out, flush=True)
            cell_dir.rmtree()
        elif cell_dir.exists():
            started = _started_spec(cell_dir)
            if started is not None and marker_lib.comparable(started) == marker_lib.comparable(spec):
                print(f"  {cell.key}: unfinished; running it again (the trainer resumes from its last "
                      "checkpoint)", file=out, flush=True)
            else:  # its checkpoints belong to other settings (or to nothing we wrote): start afresh
                print(f"  {cell.key}: unfinished, started with other settings; clearing it and running it again",
                      file=out, flush=True)
                cell_dir.rmtree()
        cell_dir.mkdir(parents=True, exist_ok=True)
        marker_lib.write_atomic(cell_dir / SPEC_FILE, json.dumps(spec, indent=2) + "\n")
        t0 = time.perf_counter()
        launch(spec, cell_dir)
        found, why = marker_lib.read(cell_dir, spec)
        if found is None:
            raise CellFailed(f"cell {cell.key} exited without a valid completion marker: {why}")
        spent.append(time.perf_counter() - t0)
        done += 1
        left = len(todo) - i - 1
        eta = f", ETA {_fmt(left * sum(spent) / len(spent))}" if left else ""
        print(f"[{done}/{len(cells)} cells done] {cell.key} in {_fmt(spent[-1])}{eta}", file=out, flush=True)
    return {"total": len(cells), "skipped": len(cells) - len(todo), "run": len(todo)}
