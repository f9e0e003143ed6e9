"""The compile report of a run on a slice: per chip memory against the chip's HBM (fits or not, margin),
FLOPs, collectives, compile times, hosts and per-host rows. One dict (`compile_report.json`), rendered as a
terminal table and as Markdown (`compile_report.md`)."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
from typing import Any

from sbs_jax.tpu import analysis, topologies

GIB = topologies.GIB


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def program_entry(program, chip: topologies.Chip) -> dict[str, Any]:
    """One compiled program's figures on `chip` (a program the compiler refused is `fits: false`)."""
    entry = {"name": program.name, "shapes": program.shapes, "compile_seconds": round(program.seconds, 2)}
    if program.compiled is None:
        return {**entry, "fits": False, "error": program.error}
    memory = analysis.memory(program.compiled)
    cost = analysis.cost(program.compiled)
    entry.update(fingerprint=analysis.program_fingerprint(program.compiled.as_text()), memory=memory,
                 flops_per_chip=cost["flops"], bytes_accessed_per_chip=cost["bytes_accessed"],
                 collectives=analysis.collectives(program.compiled.as_text()),
                 roofline_lower_bound_seconds=analysis.roofline_seconds(cost["flops"], cost["bytes_accessed"],
                                                                        chip.peak_bf16_flops, chip.hbm_bytes_per_s),
                 fits=memory["total"] <= chip.hbm_bytes, margin_bytes=chip.hbm_bytes - memory["total"])
    return entry


def build(plan, slice_: topologies.Slice, programs, *, model_name: str | None = None) -> dict[str, Any]:
    """The report dict of a `sbs_jax.train.aot.RunPlan` compiled for `slice_` (`aot.compile_run`'s programs)."""
    cfg, mesh = plan.config, plan.setup.mesh
    entries = [program_entry(p, slice_.chip) for p in programs]
    fitted = [e for e in entries if e["fits"]]
    worst = max((e["memory"]["total"] for e in entries if "memory" in e), default=0)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "libtpu", "sbs-jax")},
        "slice": {"given_as": slice_.given_as, "topology": slice_.topology, "accelerator_type": slice_.cloud_name,
                  "chip": slice_.chip.name, "device_kind": slice_.chip.device_kind, "chips": slice_.num_chips,
                  "num_slices": slice_.num_slices, "hosts": slice_.num_hosts,
                  "chips_per_host": slice_.num_chips // slice_.num_hosts, "hbm_per_chip_bytes": slice_.chip.hbm_bytes,
                  "peak_bf16_flops_per_chip": slice_.chip.peak_bf16_flops,
                  "hbm_bytes_per_s_per_chip": slice_.chip.hbm_bytes_per_s},
        "run": {"model": model_name, "partitioning": cfg.partitioning,
                "mesh": {k: int(v) for k, v in mesh.shape.items()}, "batch_size": int(cfg.batch_size),
                "grad_accum_steps": int(cfg.grad_accum_steps), "rows_per_host": plan.rows_per_host,
                "num_input_shards": plan.num_input_shards, "task_feature_lengths": dict(cfg.task_feature_lengths),
                "pack": bool(cfg.pack), "cut_batches": bool(cfg.cut_batches),
                "train_shapes_the_run_may_compile": plan.all_train_shapes,
                "remat_policy": plan.setup.model.config.remat_policy,
                "scan_layers": bool(plan.setup.model.config.scan_layers), "dtype": plan.setup.model.config.dtype},
        "per_chip": {"params": analysis.per_chip_bytes(plan.setup.abstract_state.params),
                     "optimizer_state": analysis.per_chip_bytes(plan.setup.abstract_state.opt_state)},
        "programs": entries,
        "fits": len(fitted) == len(entries),
        "max_total_bytes": worst,
        "margin_bytes": slice_.chip.hbm_bytes - worst,
    }


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def _collective_text(entry: dict) -> str:
    parts = [f"{op} {c['count']}×, {c['bytes'] / 2**20:.1f} MiB" for op, c in entry.get("collectives", {}).items()
             if c["count"]]
    return "; ".join(parts) or "none"


def _shapes_text(shapes: dict) -> str:
    if "decode_length" in shapes:
        rows, length = shapes.get("encoder_input_tokens") or shapes["prompt_tokens"]
        return f"{rows}×{length} → {shapes['decode_length']}"
    parts = []
    for stream, features in shapes.items():
        if "encoder_input_tokens" in features:
            rows, enc = features["encoder_input_tokens"]
            parts.append(f"{stream} {rows}×{enc}/{features['decoder_target_tokens'][1]}")
        else:  # decoder-only rows: one length
            rows, length = features["decoder_tokens"]
            parts.append(f"{stream} {rows}×{length}")
    return ", ".join(parts)


def rows(report: dict) -> list[list[str]]:
    """Header + one row per program: the table both renderings print."""
    hbm = report["slice"]["hbm_per_chip_bytes"]
    out = [["program", "batch (rows×enc/dec)", "arguments", "temporaries", "total", "HBM", "fits", "margin",
            "GFLOP/chip", "collectives (count, bytes/chip)", "compile s"]]
    for e in report["programs"]:
        if "memory" not in e:
            out.append([e["name"], _shapes_text(e["shapes"]), "-", "-", "-", _size(hbm), "NO (compiler: out of HBM)",
                        "-", "-", "-", f"{e['compile_seconds']:.1f}"])
            continue
        m = e["memory"]
        out.append([e["name"], _shapes_text(e["shapes"]), _size(m["arguments"]), _size(m["temporaries"]),
                    _size(m["total"]), _size(hbm), "yes" if e["fits"] else "NO", _size(e["margin_bytes"]),
                    f"{e['flops_per_chip'] / 1e9:.1f}", _collective_text(e), f"{e['compile_seconds']:.1f}"])
    return out


def headline(report: dict) -> list[str]:
    s, r, pc = report["slice"], report["run"], report["per_chip"]
    return [
        f"slice {s['given_as']} = {s['topology']} ({s['accelerator_type']}): {s['chips']} chips "
        f"({s['device_kind']}, {_gib(s['hbm_per_chip_bytes'])} GiB HBM each) on {s['hosts']} host(s)"
        + (f", {s['num_slices']} slices" if s["num_slices"] > 1 else ""),
        f"run {r['model'] or ''} {r['partitioning']} mesh data={r['mesh']['data']} model={r['mesh']['model']}, "
        f"remat {r['remat_policy']}, scan_layers {r['scan_layers']}: batch {r['batch_size']} = {r['rows_per_host']} "
        f"rows per host, {r['num_input_shards']} input shard(s); {r['train_shapes_the_run_may_compile']} train "
        "shape(s) the run may compile",
        f"per chip: params {_size(pc['params'])}, optimizer state {_size(pc['optimizer_state'])}",
    ]


def verdict(report: dict) -> str:
    hbm = report["slice"]["hbm_per_chip_bytes"]
    if report["fits"]:
        return (f"FITS: the largest program needs {_gib(report['max_total_bytes'])} GiB per chip of "
                f"{_gib(hbm)} GiB ({_gib(report['margin_bytes'])} GiB to spare)")
    bad = [e for e in report["programs"] if not e["fits"]]
    what = ", ".join(f"{e['name']} ({_gib(e['memory']['total']) + ' GiB' if 'memory' in e else 'refused by the compiler'})"
                     for e in bad)
    return f"DOES NOT FIT in {_gib(hbm)} GiB per chip: {what}"


def render_text(report: dict) -> str:
    table = rows(report)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = headline(report) + [""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines += ["", verdict(report), "memory per chip (XLA's memory analysis); collectives are static "
              "counts in the optimized program (a loop body counts once)"]
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    table = rows(report)
    lines = [f"# Compile report: {report['slice']['given_as']}", ""]
    lines += [f"- {line}" for line in headline(report)]
    lines += [f"- {verdict(report)}", f"- compiled {report['date']} with "
              + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v), ""]
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    bounds = [f"{e['name']} {e['roofline_lower_bound_seconds'] * 1e3:.2f} ms" for e in report["programs"]
              if "roofline_lower_bound_seconds" in e]
    if bounds:
        lines += ["", "Roofline lower bound per step (max of FLOPs / peak bf16 FLOP/s and bytes accessed / HBM "
                  "bandwidth, published per-chip peaks; a bound, not an estimate): " + ", ".join(bounds) + "."]
    return "\n".join(lines) + "\n"


def write(report: dict, output_dir) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "compile_report.json", out / "compile_report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
