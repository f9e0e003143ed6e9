"""Training-step benchmark: the official PyTorch/HF step vs ours, same model config, shapes and device.

    python -m bench.step_bench --shape paper --reference fp32,bf16,compile_bf16 \
        --ours ours_fp32,ours_bf16,ours_bf16_fused --peak_tflops 989 --out /tmp/bench

Prints, and writes as `<out>/step_<shape>.{md,json}`: ms/step, examples/s (paired examples: one label and one
rationale target each), examples/s relative to every reference variant, MFU (explicitly counted matmul FLOPs,
bench/flops.py, over `--peak_tflops`) and peak memory (device memory on GPU, process RSS on CPU).
"""
from __future__ import annotations

import os

# torch and JAX share the device in this process: JAX must not grab 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from bench import flops, report  # noqa: E402
from bench.shapes import CQA_MEASURED, SHAPES, get_shape  # noqa: E402
from bench.timing import limit_cpu_threads  # noqa: E402


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="training-step benchmark: reference PyTorch/HF vs ours")
    p.add_argument("--shape", default="cpu_tiny", choices=sorted(SHAPES))
    p.add_argument("--reference", type=_csv, default=["fp32", "bf16", "compile_bf16"],
                   help="reference modes, comma-separated: fp32, bf16, compile_bf16 (empty: none)")
    p.add_argument("--ours", type=_csv, default=["ours_fp32", "ours_bf16", "ours_bf16_fused"],
                   help="our variants, comma-separated (bench/ours.py VARIANTS)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="device peak dense bf16 TFLOP/s for MFU (H100/H200 SXM: 989); omitted: no MFU")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--out", type=pathlib.Path, default=None, help="directory for step_<shape>[_tag].{md,json}")
    p.add_argument("--tag", default="", help="suffix of the output file names (several runs of one shape)")
    p.add_argument("--cpu_threads", type=int, default=1,
                   help="CPU only: torch/XLA threads (0 = library defaults); ignored when a GPU is present")
    return p.parse_args(argv)


def packed_note(row: dict, step_flops: float) -> str:
    p = row["packing"]
    examples = p["examples_per_batch"]
    return (f"`{row['variant']}`: {p['rows']} packed rows of {p['enc_len']}/{p['dec_len']} tokens per step, "
            f"{min(examples)}-{max(examples)} examples (mean {row['examples_per_step']:.1f}) over the "
            f"{len(examples)} synthetic batches cycled, lengths drawn from bench/cqa_lengths.json; examples/s counts "
            f"examples; MFU credits real-token FLOPs only ({row['model_flops'] / 1e12:.4g} TFLOP per step, "
            f"{row['model_flops'] / p['executed_flops']:.1%} of the {p['executed_flops'] / 1e12:.4g} TFLOP executed; "
            f"the padded rows above credit {step_flops / 1e12:.4g} TFLOP, padding included)")


def run(args: argparse.Namespace, shape=None) -> dict:
    """Runs every requested variant on `shape` (default: `--shape`) and writes the tables."""
    import torch
    if not torch.cuda.is_available():
        limit_cpu_threads(args.cpu_threads)

    from bench import ours as ours_lib
    from bench.reference import run_reference

    shape = shape or get_shape(args.shape)
    config = ours_lib.model_config(shape)
    step_flops = flops.paired_step_flops(config, shape.batch, shape.inputs, shape.targets, shape.rationales)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timing = dict(warmup=args.warmup, steps=args.steps, windows=args.windows)
    env = report.environment()  # before the runs: the commit that was measured
    rows, failures = [], []

    def attempt(label, fn):
        print(f"[step_bench] {shape.name}: {label} ...", file=sys.stderr, flush=True)
        try:
            row = fn()
        except Exception as e:  # a variant that fails is reported, the others still run
            traceback.print_exc()
            failures.append({"variant": label, "error": f"{type(e).__name__}: {e}"})
            return
        # Packed rows credit only their segments' real-token FLOPs (bench/flops.py, segment_model_flops).
        row["mfu"] = (flops.mfu(row.get("model_flops", step_flops), row["step_s"], args.peak_tflops * 1e12)
                      if args.peak_tflops else None)
        rows.append(row)
        print(f"[step_bench]   {1e3 * row['step_s']:.1f} ms/step, {row['examples_per_s']:.1f} examples/s",
              file=sys.stderr, flush=True)

    def emit() -> tuple[dict, str]:
        """The table of the variants finished so far (rewritten after each: a killed run keeps them)."""
        notes = [
            f"shape `{shape.name}`: {shape.model} {dict(shape.overrides) or ''} batch {shape.batch}, "
            f"inputs {shape.inputs}, labels {shape.targets}, rationales {shape.rationales} tokens (padded); "
            f"dropout 0.1; AdamW lr 5e-5, clip 1.0, linear schedule",
            f"model FLOPs per step (label + rationale stream, fwd+bwd, matmuls): {step_flops / 1e12:.3f} TFLOP; "
            f"MFU against {args.peak_tflops} TFLOP/s" if args.peak_tflops else "MFU: no --peak_tflops given",
            f"timing: {args.warmup} warm-up steps, then median of {args.windows} windows of {args.steps} steps"
            + ("" if device.type == "cuda" else f"; CPU threads: {args.cpu_threads}"),
        ] + [packed_note(r, step_flops) for r in rows if "packing" in r] + [
            f"FAILED {f['variant']}: {f['error']}" for f in failures]
        payload = {"shape": vars(shape) | {"overrides": dict(shape.overrides)}, "config": config.to_dict(),
                   "step_flops": step_flops, "peak_tflops": args.peak_tflops, "environment": env, "rows": rows,
                   "failures": failures, "cqa_lengths": CQA_MEASURED}
        title = f"Training step, shape `{shape.name}`" + (f" ({args.tag})" if args.tag else "")
        md = report.markdown_table(title, env, rows, notes)
        if args.out:
            report.write(args.out, f"step_{shape.name}" + (f"_{args.tag}" if args.tag else ""), payload, md)
        return payload, md

    for kind, name in run_order(args.reference, args.ours):
        if kind == "ours":
            attempt(name, lambda: ours_lib.run_ours(shape, name, **timing))
        else:
            attempt(f"hf_{name}", lambda: run_reference(config.to_hf_dict(), shape, name, device, **timing))
        emit()
    payload, md = emit()
    print(md)
    return payload


def run_order(reference: list[str], ours: list[str]) -> list[tuple[str, str]]:
    """Ours first, then the reference's eager modes, `torch.compile` modes last: a run cut short by its time
    limit keeps the variants that matter most."""
    eager = [m for m in reference if not m.startswith("compile")]
    compiled = [m for m in reference if m.startswith("compile")]
    return [("ours", v) for v in ours] + [("reference", m) for m in eager + compiled]


def main(argv=None) -> int:
    payload = run(parse_args(argv))
    return 1 if payload["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
