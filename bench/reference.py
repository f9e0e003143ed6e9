"""The reference step: the official PyTorch/HF code's training step, reproduced without its data loader.

The official code (`TaskPrefixTrainer`, a `Seq2SeqTrainer`) computes, per step, one forward pass of HF
`T5ForConditionalGeneration` on the label stream (`predict: `) and one on the rationale stream (`explain: `),
`loss = α·L_label + (1−α)·L_rationale` (α = 0.5), one backward through both graphs, then the Trainer's
update: gradient clipping at 1.0, AdamW (the Trainer's default `adamw_torch_fused` for torch >= 2.8) with a
linear schedule, `zero_grad`. That is exactly what `ReferenceStep.step` does; leaving out the Trainer's data
loader and callbacks only makes the reference faster.

Modes: `fp32` (eager), `bf16` (eager under `torch.autocast(bfloat16)`, the Trainer's `--bf16`), and
`compile_bf16` (`torch.compile` of the model, as the Trainer's `torch_compile=True`, plus bf16 autocast).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import transformers

from bench.timing import Timing, host_peak_bytes, reset_host_peak, time_steps

MODES = ("fp32", "bf16", "compile_bf16")


def hf_model(hf_config: dict, device: torch.device, seed: int = 0) -> transformers.T5ForConditionalGeneration:
    """A randomly initialised HF T5 matching `hf_config` (a T5Config.to_hf_dict()), untied when v1.1.

    transformers 5.x ties lm_head to the shared embedding even for `tie_word_embeddings=False`; a v1.1 model
    has its own output projection, so it gets its own parameter here (same FLOPs, and the right param count).
    """
    torch.manual_seed(seed)
    config = transformers.T5Config(**hf_config)
    with device:  # initialise on the device: a CPU init of T5-large takes longer than its benchmark
        model = transformers.T5ForConditionalGeneration(config)
        if not hf_config.get("tie_word_embeddings", True):
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model


def stream_batch(rng: np.random.Generator, batch: int, enc_len: int, dec_len: int, vocab: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Random tokens at full padded length (padding is masked, not skipped, so it costs the same)."""
    ids = rng.integers(2, vocab, size=(batch, enc_len))
    labels = rng.integers(2, vocab, size=(batch, dec_len))
    labels[:, -1] = 1  # EOS
    return {"input_ids": torch.as_tensor(ids, device=device),
            "attention_mask": torch.ones((batch, enc_len), dtype=torch.long, device=device),
            "labels": torch.as_tensor(labels, device=device)}


class ReferenceStep:
    """One paired training step of the official code, on fixed random batches."""

    def __init__(self, hf_config: dict, *, batch: int, inputs: int, targets: int, rationales: int, mode: str,
                 device: torch.device, alpha: float = 0.5, learning_rate: float = 5e-5,
                 total_steps: int = 10_000, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"reference mode: expected one of {MODES}, got {mode!r}")
        self.device, self.mode, self.alpha = device, mode, alpha
        self.model = hf_model(hf_config, device, seed)
        self.model.train()
        self.forward = self.model
        if mode == "compile_bf16":
            # One specialised graph per stream shape (best case for the reference): no dynamic-shape recompile.
            torch._dynamo.config.automatic_dynamic_shapes = False
            self.forward = torch.compile(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, weight_decay=0.0,
                                           fused=True)
        self.scheduler = transformers.get_linear_schedule_with_warmup(self.optimizer, 0, total_steps)
        rng = np.random.default_rng(seed)
        vocab = hf_config["vocab_size"]
        self.label = stream_batch(rng, batch, inputs, targets, vocab, device)
        self.rationale = stream_batch(rng, batch, inputs, rationales, vocab, device)

    def _autocast(self):
        if self.mode == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def step(self) -> torch.Tensor:
        with self._autocast():
            label_loss = self.forward(**self.label).loss
            rationale_loss = self.forward(**self.rationale).loss
            loss = self.alpha * label_loss + (1.0 - self.alpha) * rationale_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync(self, out: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        out.item()  # forces completion on any device

    def release(self) -> None:
        """Frees device memory before the next variant (JAX shares the device in the same process)."""
        del self.model, self.forward, self.optimizer, self.label, self.rationale
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.mode == "compile_bf16":
            torch._dynamo.reset()


def run_reference(hf_config: dict, shape, mode: str, device: torch.device, *, warmup: int, steps: int,
                  windows: int) -> dict:
    """Times the reference step in one mode; returns step time, examples/s and peak memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    reset_host_peak()
    ref = ReferenceStep(hf_config, batch=shape.batch, inputs=shape.inputs, targets=shape.targets,
                        rationales=shape.rationales, mode=mode, device=device)
    timing: Timing = time_steps(ref.step, ref.sync, warmup=warmup, steps=steps, windows=windows)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else host_peak_bytes()
    ref.release()
    return {"impl": "reference", "variant": f"hf_{mode}", "step_s": timing.step_s, "warmup_s": timing.warmup_s,
            "windows_s": list(timing.windows_s), "examples_per_s": shape.batch / timing.step_s,
            "peak_memory_bytes": peak, "memory_kind": "device" if device.type == "cuda" else "process_rss"}
