"""Our step: the project's own train step, built and compiled by the trainer's `sbs_jax.train.compile`.

Nothing here re-implements the step: the model, objective (fused or two-pass), optimizer and state are the
project's. Only the batch is synthetic (random tokens at the benchmark's padded shapes), so the timed path
needs neither seqio nor TensorFlow. The step is compiled ahead of time (`lower(...).compile()`), the state is
donated, and the compiled executable's memory analysis is kept next to the measured peak.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from bench import flops, packed as packed_lib
from bench.timing import host_peak_bytes, reset_host_peak, time_steps
from sbs_jax import partitioning
from sbs_jax.model import Transformer, get_config
from sbs_jax.train import compile as compile_lib, objective, optim, state as state_lib


@dataclasses.dataclass(frozen=True)
class OursVariant:
    """How our step is configured: compute dtype, fused paired pass, packed rows, layer scan and remat policy."""
    name: str
    dtype: str = "bfloat16"
    fused: bool = True
    scan_layers: bool = True
    remat_policy: str = "none"
    packed: bool = False  # synthetic packed rows (bench/packed.py) instead of the padded paired batch


VARIANTS = {
    # fp32 is traced at "highest" matmul precision: true fp32 like the reference's (no TF32 on GPU).
    "ours_fp32": OursVariant("ours_fp32", dtype="float32", fused=False),
    "ours_bf16": OursVariant("ours_bf16", fused=False),
    "ours_bf16_fused": OursVariant("ours_bf16_fused", fused=True),
    "ours_bf16_fused_remat": OursVariant("ours_bf16_fused_remat", fused=True,
                                         remat_policy="dots_with_no_batch_dims_saveable"),
    "ours_bf16_packed": OursVariant("ours_bf16_packed", packed=True),
    "ours_bf16_packed_remat": OursVariant("ours_bf16_packed_remat", packed=True,
                                          remat_policy="dots_with_no_batch_dims_saveable"),
}
PACKED_BATCHES = 4  # distinct packed batches cycled through by the timed steps


def model_config(shape, variant: OursVariant | None = None, **extra):
    """The benchmark's T5Config (the reference is built from its HF dict): dropout 0.1 as in the paper's run."""
    overrides = {**shape.config_overrides(), "dropout_rate": 0.1, **extra}
    if variant is not None:
        overrides.update(dtype=variant.dtype, scan_layers=variant.scan_layers, remat_policy=variant.remat_policy)
    return get_config(shape.model, **overrides)


def stream(rng: np.random.Generator, batch: int, enc_len: int, dec_len: int, vocab: int) -> dict:
    """A full-length stream batch in the project's format (decoder inputs = targets shifted right)."""
    targets = rng.integers(2, vocab, size=(batch, dec_len)).astype(np.int32)
    targets[:, -1] = 1  # EOS
    inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": rng.integers(2, vocab, size=(batch, enc_len)).astype(np.int32),
            "decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones((batch, dec_len), np.float32)}


def paired_batch(shape, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"label": stream(rng, shape.batch, shape.inputs, shape.targets, vocab),
            "rationale": stream(rng, shape.batch, shape.inputs, shape.rationales, vocab)}


class OursStep:
    """The project's paired train step, sharded over all local devices (data parallel) and AOT-compiled."""

    def __init__(self, shape, variant: OursVariant, *, learning_rate: float = 5e-5, total_steps: int = 10_000,
                 seed: int = 0):
        self.config = model_config(shape, variant)
        model = Transformer(self.config)
        # The paper's optimizer as HF's Trainer runs it: AdamW, linear decay, clip 1.0, no weight decay.
        opt_config = optim.OptimizerConfig(name="adamw", learning_rate=learning_rate, schedule="linear",
                                           decay_steps=total_steps, clip_norm=1.0)
        tx = optim.make_optimizer(opt_config)
        obj = objective.ObjectiveConfig(mode="step_by_step", alpha=0.5, fused=variant.fused)
        schedule = optim.make_schedule(opt_config)

        # Sharded and compiled by the trainer's own functions (`sbs_jax.train.compile`, no seqio/TF).
        self.mesh = partitioning.make_mesh(data=-1, model=1)
        if shape.batch % self.mesh.shape[partitioning.DATA]:
            raise ValueError(f"shape {shape.name!r}: batch {shape.batch} is not divisible by the "
                             f"{self.mesh.shape[partitioning.DATA]} data-parallel devices")
        rules = partitioning.get_rules("data_parallel")
        shardings, abstract_state = compile_lib.state_shardings(model, tx, self.mesh, rules)
        self.state = state_lib.create_state(model, tx, self.mesh, rules, seed, shardings)
        data = partitioning.data_sharding(self.mesh)
        self.packing = None
        if variant.packed:
            # Rows per batch chosen so that a step holds about `shape.batch` examples, as the padded step does.
            layout = packed_lib.PackedLayout()
            rows = packed_lib.rows_for_examples(shape.batch, layout, self.mesh.shape[partitioning.DATA], seed)
            batches = packed_lib.packed_batches(PACKED_BATCHES, rows, layout, self.config.vocab_size, seed)
            self.batches = [jax.device_put(b.arrays, data) for b in batches]
            self.packing = {"rows": rows, "enc_len": layout.enc_len, "dec_len": layout.dec_len,
                            "examples_per_batch": [b.examples for b in batches],
                            "model_flops_per_batch": [flops.segment_model_flops(self.config, b.segments)
                                                      for b in batches],
                            "executed_flops": flops.packed_step_flops(self.config, rows, layout.enc_len,
                                                                      layout.dec_len)}
        else:
            self.batches = [jax.device_put(paired_batch(shape, self.config.vocab_size, seed), data)]
        self._next = 0
        self.compiled = compile_lib.compile_train_step(
            model, tx, obj, schedule, 1, self.mesh, rules, shardings, abstract_state,
            compile_lib.abstract_batch(self.batches[0], self.mesh),
            matmul_precision="highest" if variant.dtype == "float32" else None)

    def step(self):
        batch = self.batches[self._next]
        self._next = (self._next + 1) % len(self.batches)
        self.state, metrics = self.compiled(self.state, batch)
        return metrics["loss"]

    @staticmethod
    def sync(out) -> None:
        jax.block_until_ready(out)

    def compiled_memory_bytes(self) -> int | None:
        return executable_memory_bytes(self.compiled)


def executable_memory_bytes(compiled) -> int | None:
    """XLA's accounting of a compiled program's device memory: arguments + outputs + temporaries, minus the
    donated (aliased) buffers counted twice. JAX cannot reset its device peak, so in a process that runs
    several variants this, not `peak_bytes_in_use`, is the per-variant figure."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)


def device_peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run_ours(shape, variant_name: str, *, warmup: int, steps: int, windows: int) -> dict:
    """Times our step in one variant; returns step time, examples/s and peak memory."""
    if variant_name not in VARIANTS:
        raise ValueError(f"unknown variant {variant_name!r}; expected one of {sorted(VARIANTS)}")
    variant = VARIANTS[variant_name]
    on_cpu = jax.local_devices()[0].platform == "cpu"
    reset_host_peak()
    t0 = time.perf_counter()
    ours = OursStep(shape, variant)
    setup_compile_s = time.perf_counter() - t0
    timing = time_steps(ours.step, ours.sync, warmup=warmup, steps=steps, windows=windows)
    compiled_bytes = ours.compiled_memory_bytes()
    # Packed steps cycle through PACKED_BATCHES batches: examples (segment pairs, not rows) and model FLOPs
    # per step are their means.
    examples = shape.batch if ours.packing is None else float(np.mean(ours.packing["examples_per_batch"]))
    result = {"impl": "ours", "variant": variant_name, "step_s": timing.step_s,
              "warmup_s": timing.warmup_s + setup_compile_s, "setup_compile_s": setup_compile_s,
              "windows_s": list(timing.windows_s), "examples_per_step": examples,
              "examples_per_s": examples / timing.step_s,
              "peak_memory_bytes": host_peak_bytes() if on_cpu else compiled_bytes,
              "memory_kind": "process_rss" if on_cpu else "device, XLA compiled",
              "compiled_memory_bytes": compiled_bytes,
              "device_peak_so_far_bytes": None if on_cpu else device_peak_bytes(),
              "devices": len(jax.local_devices())}
    if ours.packing is not None:
        result["packing"] = ours.packing
        result["model_flops"] = float(np.mean(ours.packing["model_flops_per_batch"]))
    del ours
    return result
