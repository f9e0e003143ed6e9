"""Run metadata (device, date, commit, versions) and the markdown/JSON result tables."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess

from bench.timing import format_bytes

REPO = pathlib.Path(__file__).resolve().parents[1]


def _commit() -> str:
    """The measured commit: $BENCH_COMMIT if set (a copied tree without .git), else git's HEAD (+dirty)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "bench", "sbs_jax"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Where and with what the numbers were measured."""
    import jax
    import torch
    import transformers
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": _commit(),
        "jax_device": str(jax.local_devices()[0].device_kind),
        "jax_devices": len(jax.local_devices()),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        env["torch_device"] = torch.cuda.get_device_name(0)
    return env


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def markdown_table(title: str, env: dict, rows: list[dict], notes: list[str]) -> str:
    """One markdown section: metadata line, a row per variant, ratios against every reference variant."""
    refs = [r for r in rows if r["impl"] == "reference"]
    head = ["impl", "variant", "ms/step", "examples/s"] + [f"x {r['variant']}" for r in refs] + \
           ["MFU", "peak memory", "warmup s"]
    lines = [f"### {title}", "",
             f"{env['date_utc']} UTC, commit `{env['commit']}`, device: {env.get('torch_device') or env['jax_device']}"
             f" ({env['jax_devices']} JAX device(s)), CPU: {env['cpu']}; jax {env['jax']}, torch {env['torch']}, "
             f"transformers {env['transformers']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratios = [_fmt(r["examples_per_s"] / ref["examples_per_s"], ".2f") for ref in refs]
        mfu = r.get("mfu")
        cells = [r["impl"], r["variant"], _fmt(1e3 * r["step_s"], ".1f"), _fmt(r["examples_per_s"], ".1f"),
                 *ratios, "n/a" if mfu is None else f"{100 * mfu:.1f}%",
                 f"{format_bytes(r['peak_memory_bytes'])} ({r['memory_kind']})", _fmt(r["warmup_s"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write(out_dir: pathlib.Path, stem: str, payload: dict, markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown)
