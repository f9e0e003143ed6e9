"""The TPU capacity table: which T5-v1.1 student fits which slice at the paper recipe, compiled for real
TPU slices on a CPU machine (`sbs compile`'s library path, libtpu, no TPU).

    python -m bench.tpu_capacity run --budget_minutes=40     # compile (resumable: results.json keeps cells)
    python -m bench.tpu_capacity render                      # docs/tpu_capacity.md + gin/topologies/*.gin

Each cell is the run `sbs train` would make from models/t5_1_1_<size>.gin + runs/step_by_step.gin +
runs/paper_recipe.gin + datasets/cqa.gin (batch 64, lengths 1,024 / 256 / 256, length buckets) with
scan_layers=True (bounded compile time), a partitioning preset and a remat policy; the train step is
compiled for the largest bucket shape (the full lengths), which needs the most memory. Cells that are not
compiled say why (`how`): "state exceeds HBM" (the params and AdamW state one chip holds, computed exactly from
their shardings, already exceed its HBM), "implied by <slice>" (fits on a smaller slice of the same chip:
a larger slice holds the same or a smaller share per chip of the fixed batch of 64 and of the state), "remat
none fits" (no remat fits, so full remat is not compiled), "full does not fit" (no remat needs at least full
remat's memory), or "budget" (not reached). Within a slice full remat is compiled first; `run --presets/--remats/
--chips/--sizes` restrict a run to part of the grid (e.g. full remat everywhere first, the rest later).
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "tpu_capacity.json"
PAGE = REPO / "docs" / "tpu_capacity.md"
GIN_DIR = REPO / "gin" / "topologies"
SIZES = ("small", "base", "large", "xl", "xxl")
PRESETS = ("fsdp", "model_parallel", "data_parallel")
REMATS = ("none", "full")
# The slices a user would rent, smallest first within each chip type.
SLICES = {"v5e": ("v5e-8", "v5e-16", "v5e-64"), "v4": ("v4-8", "v4-32"), "v5p": ("v5p-8", "v5p-32"),
          "v6e": ("v6e-8",)}
# Compile order (a time budget may stop it): fsdp for every size on one chip type after another, so that every
# size gets a fitting slice early, then the other presets.
STAGES = (("fsdp", ("v5e",)), ("fsdp", ("v5p",)), ("fsdp", ("v4",)), ("fsdp", ("v6e",)),
          ("model_parallel", tuple(SLICES)), ("data_parallel", tuple(SLICES)))
GIN_FILES = ["runs/step_by_step.gin", "runs/paper_recipe.gin", "datasets/cqa.gin"]
_REQUIRED = re.compile(r"required for HLO temporaries \(([\d.]+)([GMK])\) exceeds available HBM \(([\d.]+)([GMK])\)")


def mesh_model(preset: str, heads: int) -> int:
    """model_parallel uses a model axis of 4 (2 when the heads do not split 4 ways: small has 6); the other
    presets put every chip on the data axis."""
    if preset != "model_parallel":
        return 1
    return 4 if heads % 4 == 0 else 2


def cell_key(size, preset, remat, slice_name) -> str:
    return f"{size}/{preset}/{remat}/{slice_name}"


def _bindings(size: str, preset: str, remat: str, heads: int) -> list[str]:
    return [f"PARTITIONING = '{preset}'", f"MESH_MODEL = {mesh_model(preset, heads)}",
            "model_config.scan_layers = True", f"model_config.remat_policy = '{remat}'"]


def _gib(n) -> float:
    return round(n / 2**30, 3)


def compile_cell(size, preset, remat, slice_name) -> dict:
    from sbs_jax.commands import compile as compile_cmd
    from sbs_jax.model import get_config
    from sbs_jax.tpu import analysis, topologies
    from sbs_jax.train import aot

    heads = get_config(f"t5_1_1_{size}").num_heads
    config = compile_cmd.load_train_config([f"models/t5_1_1_{size}.gin", *GIN_FILES],
                                           _bindings(size, preset, remat, heads))
    slice_ = topologies.parse(slice_name)
    out = {"size": size, "preset": preset, "remat": remat, "slice": slice_name, "topology": slice_.topology,
           "hbm_gib": _gib(slice_.chip.hbm_bytes), "mesh_model": mesh_model(preset, heads)}
    try:
        plan = aot.plan_run(config, config.model, topologies.devices(slice_), num_hosts=slice_.num_hosts)
    except aot.PlanError as e:
        return {**out, "how": "does not divide", "fits": False, "error": str(e)}
    state = aot.state_bytes_per_chip(plan)
    out.update(params_gib=_gib(state["params"]), optimizer_state_gib=_gib(state["optimizer_state"]),
               rows_per_chip=config.batch_size // plan.setup.mesh.shape["data"], hosts=slice_.num_hosts)
    if state["params"] + state["optimizer_state"] > slice_.chip.hbm_bytes:
        return {**out, "how": "state exceeds HBM", "fits": False}
    (program,) = aot.compile_run(plan, eval_programs=False, is_refusal=analysis.is_hbm_oom)
    out.update(how="compiled", compile_seconds=round(program.seconds, 1))
    if program.compiled is None:
        match = _REQUIRED.search(program.error or "")
        if match:
            scale = {"G": 1, "M": 2**-10, "K": 2**-20}
            out["temporaries_gib_required"] = round(float(match.group(1)) * scale[match.group(2)], 3)
            out["hbm_available_gib"] = round(float(match.group(3)) * scale[match.group(4)], 3)
        return {**out, "fits": False, "error": (program.error or "")[:300]}
    memory = analysis.memory(program.compiled)
    cost = analysis.cost(program.compiled)
    del program
    return {**out, "fits": memory["total"] <= slice_.chip.hbm_bytes, "arguments_gib": _gib(memory["arguments"]),
            "temporaries_gib": _gib(memory["temporaries"]), "total_gib": _gib(memory["total"]),
            "margin_gib": _gib(slice_.chip.hbm_bytes - memory["total"]), "tflops_per_chip": round(cost["flops"] / 1e12, 2)}


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"cells": {}}


def _save(results: dict) -> None:
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def _versions() -> dict:
    import importlib.metadata as md

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"commit": commit, **{p: md.version(p) for p in ("jax", "jaxlib", "libtpu")}}


def _next_cell(cells: dict, size, preset, remat, slice_name, fitted: dict) -> dict | None:
    """The cell's entry when it follows from cells already known (None: it must be compiled). Full remat needs
    the least memory: where it does not fit, no remat does not fit either; where no remat fits, full does."""
    base = {"size": size, "preset": preset, "remat": remat, "slice": slice_name}
    full = cells.get(cell_key(size, preset, "full", slice_name), {})
    none = cells.get(cell_key(size, preset, "none", slice_name), {})
    if remat == "full" and none.get("fits"):
        return {**base, "how": "remat none fits", "fits": True}
    if remat == "none" and full.get("fits") is False and full.get("how") in ("compiled", "state exceeds HBM",
                                                                             "full does not fit"):
        return {**base, "how": "full does not fit", "fits": False}
    if fitted.get(remat):
        return {**base, "how": f"implied by {fitted[remat]}", "fits": True}
    return None


def run(budget_minutes: float, presets=PRESETS, remats=REMATS, chips=tuple(SLICES), sizes=SIZES) -> None:
    """Compile the cells in STAGES order (within a slice: full remat first), restricted to the given presets,
    remat policies, chip types and sizes; cells already known are kept, cells left out are not touched."""
    from sbs_jax.tpu import topologies

    topologies.quiet_libtpu_environment()
    results = _load()
    cells = results["cells"]
    deadline = time.monotonic() + budget_minutes * 60
    results.setdefault("runs", []).append({"started": datetime.datetime.now(datetime.timezone.utc)
                                           .isoformat(timespec="seconds"), "budget_minutes": budget_minutes,
                                           "presets": list(presets), "remats": list(remats), "chips": list(chips),
                                           "sizes": list(sizes), **_versions()})
    for preset, stage_chips in STAGES:
        if preset not in presets:
            continue
        for size in (s for s in SIZES if s in sizes):
            for chip in (c for c in stage_chips if c in chips):
                fitted: dict[str, str] = {}  # remat -> the smallest slice of this chip it fits on
                for slice_name in SLICES[chip]:
                    for remat in ("full", "none"):
                        key = cell_key(size, preset, remat, slice_name)
                        known = cells.get(key)
                        if remat in remats and (known is None or known["how"] == "budget"):
                            derived = _next_cell(cells, size, preset, remat, slice_name, fitted)
                            if derived is not None:
                                cells[key] = derived
                            elif time.monotonic() > deadline:
                                cells[key] = {"size": size, "preset": preset, "remat": remat, "slice": slice_name,
                                              "how": "budget", "fits": None}
                            else:
                                t0 = time.monotonic()
                                cells[key] = compile_cell(size, preset, remat, slice_name)
                                print(f"{key}: {cells[key]['how']} fits={cells[key]['fits']} "
                                      f"total={cells[key].get('total_gib')} ({time.monotonic() - t0:.0f}s)",
                                      flush=True)
                            _save(results)
                        if cells.get(key, {}).get("fits") and remat not in fitted:
                            fitted[remat] = slice_name


def _restriction(run: dict) -> str:
    """`, only fsdp, remat full, v5e/v5p/v4` for a run restricted to part of the grid."""
    parts = [("presets", PRESETS), ("remats", REMATS), ("chips", tuple(SLICES)), ("sizes", SIZES)]
    only = [("remat " if k == "remats" else "") + "/".join(run[k]) for k, full in parts
            if run.get(k) and tuple(run[k]) != tuple(full)]
    return ", only " + ", ".join(only) if only else ""


_CHIP_RANK = {"v5e": 0, "v6e": 1, "v4": 2, "v5p": 3}  # rough price order: on a tie of chips, the cheaper


def _chips(slice_name: str) -> int:
    from sbs_jax.tpu import topologies

    return topologies.parse(slice_name).num_chips


def best_fits(cells: dict) -> dict:
    """For each size: the fitting compiled cell on the fewest chips (then the cheaper chip, no remat before
    full remat, then the largest margin)."""
    best = {}
    for c in cells.values():
        if c.get("how") != "compiled" or not c["fits"]:
            continue
        rank = (_chips(c["slice"]), _CHIP_RANK[c["slice"].split("-")[0]], c["remat"] != "none", -c["margin_gib"])
        if c["size"] not in best or rank < best[c["size"]][0]:
            best[c["size"]] = (rank, c)
    return {size: c for size, (_, c) in best.items()}


def _cell_text(c: dict | None) -> str:
    if c is None:
        return "not reached (budget)"
    how = c["how"]
    if how == "compiled" and c["fits"]:
        return f"**fits** {c['total_gib']:.1f} GiB"
    if how == "compiled" and "error" in c:
        need = c.get("temporaries_gib_required")
        return "no: compiler refused" + (f" (temporaries {need:.1f} GiB)" if need else "")
    if how == "compiled":
        return f"no: {c['total_gib']:.1f} GiB"
    if how == "state exceeds HBM":
        return f"no: state {c['params_gib'] + c['optimizer_state_gib']:.1f} GiB"
    if how.startswith("implied"):
        return "fits (" + how + ")"
    if how == "remat none fits":
        return "not compiled (none fits)"
    if how == "full does not fit":
        return "no (full remat does not fit)"
    if how == "does not divide":
        return "does not divide"
    if c.get("note"):
        return "compile unfinished (budget)"
    return "not reached (budget)"


def render() -> None:
    from sbs_jax.model import get_config

    results = _load()
    cells = results["cells"]
    runs = results.get("runs", [])
    compiled = [c for c in cells.values() if c.get("how") == "compiled"]
    lines = ["# TPU capacity of the paper's students (compiled, not run)", "",
             "Generated by `python -m bench.tpu_capacity run` then `render` (bench/tpu_capacity.py); raw numbers "
             "in `bench/tpu_capacity.json`. Every number below was measured by compiling the run's train step "
             "for the slice with libtpu on a CPU machine (`sbs compile`'s library path): XLA's per-chip memory "
             "analysis, or the TPU compiler's own out-of-HBM refusal. Nothing here ran on a TPU.", "",
             "Runs: " + "; ".join(f"{r['started']} at commit {r['commit']} (jax {r['jax']}, libtpu {r['libtpu']}"
                                  + (f", budget {r['budget_minutes']:g} min" if r.get("budget_minutes") else "")
                                  + _restriction(r) + ")" for r in runs)
             + ". Compile order: " + ", ".join(p + " on " + "/".join(c) for p, c in STAGES) + "; "
             "within each, sizes small to XXL, each chip's slices smallest first, full remat before none (runs "
             "without a restriction compiled none first). The compile times in the JSON are wall times on a "
             "2-core machine shared with other jobs (load 4-16), not a measure of the compiler.", "",
             "**Run compiled**: models/t5_1_1_SIZE.gin + runs/step_by_step.gin + runs/paper_recipe.gin + "
             "datasets/cqa.gin, i.e. step-by-step (label + rationale streams), batch 64, TASK_FEATURE_LENGTHS "
             "1,024 / 256 / 256 with length buckets, bfloat16 compute, float32 params and AdamW state; the train "
             "step at the largest bucket shape (full lengths), which bounds the smaller buckets' memory. "
             "`model_config.scan_layers = True` everywhere (one compiled layer per stack keeps compile time "
             "bounded; unscanned runs differ in temporaries). The eval step and decoder were not compiled here "
             "(`sbs compile` compiles them for a given run).", "",
             "**Presets**: `data_parallel` (MESH_MODEL 1: params replicated), `fsdp` (MESH_MODEL 1: params and "
             "optimizer state sharded over all chips), `model_parallel` (MESH_MODEL 4; 2 for small, whose 6 heads "
             "do not split 4 ways). **Remat**: `none` and `full` (`model_config.remat_policy`).", "",
             "**What was not compiled**, and why, is said in each cell: `state` = the params + AdamW state one "
             "chip holds (exact, from the shardings) already exceed its HBM; `implied by S` = fits on the smaller "
             "slice S of the same chip (a larger slice holds the same or a smaller per-chip share of the fixed "
             "batch and of the state); `none fits` = full remat was not compiled because no remat fits; `full remat does "
             "not fit` = no remat was not compiled because full remat, which needs less memory, does not fit; "
             "`budget` = not reached in the runs' time budgets (`python -m bench.tpu_capacity run` resumes and fills them).", "",
             f"HBM per chip: v5e 16 GiB, v4 32 GiB, v5p 95 GiB, v6e 32 GiB. **Coverage: {len(compiled)} train steps "
             f"compiled** of the {len(SIZES) * len(PRESETS) * len(REMATS) * sum(map(len, SLICES.values()))} cells; "
             "every cell without a number says why. On the 2-core machine this was made on (shared, load 4-16) "
             "one compile of the paper-recipe step took 0.4 to 18 minutes of wall time (refusals are the quick "
             "ones), so the budget covered only part of the grid; `run` resumes where it stopped.",
             ""]
    best = best_fits(cells)
    lines += ["## Smallest slice that fits, per size", "",
              "| size | slice | preset | MESH_MODEL | remat | per chip total | margin | gin file |", "|---|---|---|---|---|---|---|---|"]
    for size in SIZES:
        c = best.get(size)
        if c is None:
            lines.append(f"| {size} | none of the slices compiled | | | | | | |")
            continue
        lines.append(f"| {size} | {c['slice']} ({c['topology']}) | {c['preset']} | {c['mesh_model']} | {c['remat']} | "
                     f"{c['total_gib']:.2f} GiB of {c['hbm_gib']:.0f} | {c['margin_gib']:.2f} GiB | "
                     f"gin/topologies/t5_1_1_{size}.gin |")
    all_slices = [s for group in SLICES.values() for s in group]
    for size in SIZES:
        cfg = get_config(f"t5_1_1_{size}")
        lines += ["", f"## t5_1_1_{size} ({cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads)", "",
                  "| preset | remat | " + " | ".join(all_slices) + " |", "|---|---|" + "---|" * len(all_slices)]
        for preset in PRESETS:
            for remat in REMATS:
                row = [_cell_text(cells.get(cell_key(size, preset, remat, s))) for s in all_slices]
                lines.append(f"| {preset} | {remat} | " + " | ".join(row) + " |")
    PAGE.write_text("\n".join(lines) + "\n")
    GIN_DIR.mkdir(parents=True, exist_ok=True)
    for size, c in best.items():
        (GIN_DIR / f"t5_1_1_{size}.gin").write_text(
            f"# T5-v1.1 {size} at the paper recipe on {c['slice']} ({c['topology']}): the smallest compiled fit in\n"
            f"# docs/tpu_capacity.md ({c['total_gib']:.2f} GiB of {c['hbm_gib']:.0f} GiB per chip). Use after the model,\n"
            f"# run and dataset files; check your own run with `sbs compile --topology={c['slice']} ...`.\n"
            f"PARTITIONING = '{c['preset']}'\nMESH_MODEL = {c['mesh_model']}\n"
            f"model_config.scan_layers = True\nmodel_config.remat_policy = '{c['remat']}'\n")
    print(f"wrote {PAGE} and {len(best)} gin files under {GIN_DIR}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--budget_minutes", type=float, default=40.0)
    for name, choices in (("presets", PRESETS), ("remats", REMATS), ("chips", tuple(SLICES)), ("sizes", SIZES)):
        p.add_argument(f"--{name}", default=",".join(choices),
                       help=f"comma-separated subset of {','.join(choices)} to compile (default: all)")
    sub.add_parser("render")
    args = parser.parse_args(argv)
    if args.command == "run":
        chosen = {}
        for name, choices in (("presets", PRESETS), ("remats", REMATS), ("chips", tuple(SLICES)), ("sizes", SIZES)):
            chosen[name] = tuple(x.strip() for x in getattr(args, name).split(",") if x.strip())
            unknown = set(chosen[name]) - set(choices)
            if unknown:
                parser.error(f"--{name}: {sorted(unknown)} not among {list(choices)}")
        run(args.budget_minutes, **chosen)
    else:
        render()


if __name__ == "__main__":
    main()
