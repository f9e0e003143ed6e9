"""Label-only inference benchmark: our KV-cache greedy decoding vs HF `generate`, on the label stream.

    python -m bench.infer_bench --shape paper --hf fp32,bf16 --ours fp32,bf16 --out /tmp/bench

Both decode `targets` tokens (the label stream's padded length) greedily from `inputs`-token inputs, with
early stop once every row has produced EOS (HF's default; `sbs_jax.model.t5.decoding.greedy_decode`'s
while-loop). Randomly initialised models seldom emit EOS, so both run all steps: equal work. Writes
`<out>/infer_<shape>.{md,json}`.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

from bench import flops, report  # noqa: E402
from bench.shapes import SHAPES, get_shape  # noqa: E402
from bench.timing import host_peak_bytes, limit_cpu_threads, reset_host_peak, time_steps  # noqa: E402


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="label-only inference benchmark: HF generate vs ours")
    p.add_argument("--shape", default="cpu_tiny", choices=sorted(SHAPES))
    p.add_argument("--hf", type=_csv, default=["fp32", "bf16"], help="HF generate precisions: fp32, bf16")
    p.add_argument("--ours", type=_csv, default=["fp32", "bf16"], help="our compute dtypes: fp32, bf16")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="decode calls per timed window")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--cpu_threads", type=int, default=1, help="CPU only: torch/XLA threads (0 = defaults)")
    return p.parse_args(argv)


def _inputs(shape, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, vocab, size=(shape.batch, shape.inputs)).astype(np.int32)


def run_hf(config, shape, precision: str, device, **timing) -> dict:
    import torch

    from bench.reference import hf_model

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    reset_host_peak()
    model = hf_model(config.to_hf_dict(), device).eval()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    ids = torch.as_tensor(_inputs(shape, config.vocab_size), device=device, dtype=torch.long)
    mask = torch.ones_like(ids)

    def step():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=shape.targets,
                                  do_sample=False, num_beams=1)

    def sync(out):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.cpu()

    t = time_steps(step, sync, warmup=timing["warmup"], steps=timing["steps"], windows=timing["windows"])
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else host_peak_bytes()
    tokens = step().shape[1] - 1  # minus the decoder start token
    del model
    return {"impl": "reference", "variant": f"hf_generate_{precision}", "step_s": t.step_s,
            "warmup_s": t.warmup_s, "windows_s": list(t.windows_s), "examples_per_s": shape.batch / t.step_s,
            "peak_memory_bytes": peak, "memory_kind": "device" if device.type == "cuda" else "process_rss",
            "decoded_tokens": tokens}


def run_ours(shape, precision: str, **timing) -> dict:
    import jax

    from bench.ours import executable_memory_bytes, model_config
    from sbs_jax.model import Transformer
    from sbs_jax.model.t5.decoding import greedy_decode

    on_cpu = jax.local_devices()[0].platform == "cpu"
    reset_host_peak()
    config = model_config(shape, dtype="float32" if precision == "fp32" else "bfloat16", dropout_rate=0.0)
    model = Transformer(config)
    tokens = jax.device_put(_inputs(shape, config.vocab_size))
    params = jax.jit(model.init)(jax.random.key(0), tokens[:, :1], tokens[:, :1])["params"]
    if precision == "bf16":
        # Serving weights in bf16, as HF's `model.to(bfloat16)`: half the bytes read per decode step.
        params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params)
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest" if precision == "fp32" else None):
        compiled = greedy_decode.lower(model, params, tokens, max_decode_length=shape.targets).compile()
    compile_s = time.perf_counter() - t0

    def step():
        return compiled(params, tokens)

    t = time_steps(step, jax.block_until_ready, warmup=timing["warmup"], steps=timing["steps"],
                   windows=timing["windows"])
    peak = host_peak_bytes() if on_cpu else executable_memory_bytes(compiled)
    return {"impl": "ours", "variant": f"greedy_decode_{precision}", "step_s": t.step_s,
            "warmup_s": t.warmup_s + compile_s, "compile_s": compile_s, "windows_s": list(t.windows_s),
            "examples_per_s": shape.batch / t.step_s, "peak_memory_bytes": peak,
            "memory_kind": "process_rss" if on_cpu else "device, XLA compiled",
            "decoded_tokens": int(np.asarray(step()).shape[1])}


def run(args: argparse.Namespace, shape=None) -> dict:
    import torch
    if not torch.cuda.is_available():
        limit_cpu_threads(args.cpu_threads)
    from bench.ours import model_config

    shape = shape or get_shape(args.shape)
    config = model_config(shape, dropout_rate=0.0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timing = dict(warmup=args.warmup, steps=args.steps, windows=args.windows)
    env = report.environment()  # before the runs: the commit that was measured
    rows, failures = [], []

    def attempt(label, fn):
        print(f"[infer_bench] {shape.name}: {label} ...", file=sys.stderr, flush=True)
        try:
            rows.append(fn())
        except Exception as e:  # reported, the other variants still run
            traceback.print_exc()
            failures.append({"variant": label, "error": f"{type(e).__name__}: {e}"})

    decode_flops = flops.greedy_decode_flops(config, shape.batch, shape.inputs, shape.targets)

    def emit() -> tuple[dict, str]:
        """The table of the variants finished so far (rewritten after each: a killed run keeps them)."""
        notes = [f"label stream of shape `{shape.name}`: {shape.model} batch {shape.batch}, inputs {shape.inputs} "
                 f"tokens, {shape.targets} decoded tokens per row (greedy), weights in the listed precision",
                 f"matmul FLOPs per decode call: {decode_flops / 1e9:.2f} GFLOP (decoding is memory-bound; no MFU)",
                 f"timing: {args.warmup} warm-up calls, then median of {args.windows} windows of {args.steps} calls"
                 + ("" if device.type == "cuda" else f"; CPU threads: {args.cpu_threads}")]
        notes += [f"FAILED {f['variant']}: {f['error']}" for f in failures]
        md = report.markdown_table(f"Label-only inference, shape `{shape.name}`", env, rows, notes)
        payload = {"shape": vars(shape) | {"overrides": dict(shape.overrides)}, "config": config.to_dict(),
                   "decode_flops": decode_flops, "environment": env, "rows": rows, "failures": failures}
        if args.out:
            report.write(args.out, f"infer_{shape.name}", payload, md)
        return payload, md

    # Ours first: a run cut short by its time limit keeps them.
    for precision in args.ours:
        attempt(f"greedy_decode_{precision}", lambda: run_ours(shape, precision, **timing))
        emit()
    for precision in args.hf:
        attempt(f"hf_generate_{precision}", lambda: run_hf(config, shape, precision, device, **timing))
        emit()
    payload, md = emit()
    print(md)
    return payload


def main(argv=None) -> int:
    return 1 if run(parse_args(argv))["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
