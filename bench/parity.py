"""Trajectory parity: our train step under the official-parity gin against a torch loop equivalent to HF's
Seq2SeqTrainer defaults, from the same HF checkpoint on the same batches, step by step.

Reference (torch, float32): `torch.optim.AdamW` (β 0.9/0.999, ε 1e-8, weight decay 0), learning rate
`lr · (T − t) / T` at step t (HF's linear schedule, no warmup), `clip_grad_norm_(1.0)`, loss
`α·L_label + (1−α)·L_rationale` (step-by-step) or `L_label` (standard), each HF's token-mean cross-entropy,
dropout off. Ours: `load_hf` → `OptimizerConfig`/`ObjectiveConfig` from gin (default: runs/official.gin) →
the trainer's compiled step (`sbs_jax.train.compile`), float32 at "highest" matmul precision.

    python -m bench.parity --hf_checkpoint=/ckpt/t5-v1_1-base --steps=50 --batch_size=8 --mode=step_by_step
(real weights: slow on CPU, but it need not be fast). Without --data_dir the batches are random tokens with
random lengths and padding; with --data_dir/--dataset/--spiece they are the task's first batches as our
pipeline makes them (official selection and prefixes). Prints per-step losses, learning rates and the worst
parameter difference, and exits 1 when a tolerance is exceeded.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

import numpy as np

LOSS_RTOL = 1e-4
PARAM_RTOL = 1e-4
# optax computes the schedule in float32, torch's LambdaLR in float64: near the end of the decay
# (lr -> 0) the float32 value carries ~1e-6 relative rounding.
LR_RTOL = 1e-5


# ------------------------------------------------------------------------------------------------ batches
def random_stream(rng: np.random.Generator, batch: int, in_len: int, tgt_len: int, vocab: int) -> dict:
    """A padded stream in our batch format: EOS-terminated rows of random length, pad 0 after them."""
    inputs = np.zeros((batch, in_len), np.int32)
    targets = np.zeros((batch, tgt_len), np.int32)
    for i in range(batch):
        n_in, n_tgt = int(rng.integers(3, in_len + 1)), int(rng.integers(2, tgt_len + 1))
        inputs[i, :n_in - 1], inputs[i, n_in - 1] = rng.integers(2, vocab, n_in - 1), 1
        targets[i, :n_tgt - 1], targets[i, n_tgt - 1] = rng.integers(2, vocab, n_tgt - 1), 1
    return stream_from_tokens(inputs, targets)


def stream_from_tokens(inputs: np.ndarray, targets: np.ndarray) -> dict:
    decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": inputs.astype(np.int32), "decoder_input_tokens": decoder_inputs.astype(np.int32),
            "decoder_target_tokens": targets.astype(np.int32),
            "decoder_loss_weights": (targets != 0).astype(np.float32)}


def random_batches(num: int, batch: int, vocab: int, lengths=(24, 12, 20), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"label": random_stream(rng, batch, lengths[0], lengths[1], vocab),
             "rationale": random_stream(rng, batch, lengths[0], lengths[2], vocab)} for _ in range(num)]


def task_batches(task: str, num: int, batch: int, lengths: dict, seed: int = 0) -> list[dict]:
    """The first `num` training batches our pipeline gives for a registered task (padded to `lengths`)."""
    from sbs_jax.data.input_pipeline import pipeline

    ds = pipeline.get_train_dataset(task, task_feature_lengths=lengths, batch_size=batch, seed=seed)
    return [jax_free(b) for b in ds.take(num).as_numpy_iterator()]


def jax_free(batch):
    return {k: jax_free(v) if isinstance(v, dict) else np.asarray(v) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ reference
@dataclasses.dataclass
class Trajectory:
    losses: list[float]
    learning_rates: list[float]
    params: dict  # HF state_dict names -> float32 numpy arrays (ours converted by save_hf's mapping)


def _torch_stream(stream):
    import torch

    labels = np.where(stream["decoder_loss_weights"] > 0, stream["decoder_target_tokens"], -100)
    return {"input_ids": torch.tensor(stream["encoder_input_tokens"], dtype=torch.long),
            "attention_mask": torch.tensor(stream["encoder_input_tokens"] != 0, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long)}


def reference_trajectory(hf_dir, batches: Sequence[dict], *, mode: str, alpha: float, learning_rate: float,
                         total_steps: int, clip_norm: float = 1.0, eps: float = 1e-8) -> Trajectory:
    """The official training loop's arithmetic (HF Seq2SeqTrainer defaults), written out in torch."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(hf_dir), dropout_rate=0.0).float()
    model.train()  # as the Trainer; dropout is 0, so this is deterministic
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.999), eps=eps, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, (total_steps - step) / max(1, total_steps)))
    losses, lrs = [], []
    for batch in batches:
        lrs.append(schedule.get_last_lr()[0])
        label_loss = model(**_torch_stream(batch["label"])).loss
        if mode == "step_by_step":
            loss = alpha * label_loss + (1.0 - alpha) * model(**_torch_stream(batch["rationale"])).loss
        else:
            loss = label_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    state = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    return Trajectory(losses, lrs, state)


# ------------------------------------------------------------------------------------------------ ours
def official_configs(total_steps: int, learning_rate: float, mode: str, gin_files: Sequence[str] = (),
                     bindings: Sequence[str] = ()):
    """(OptimizerConfig, ObjectiveConfig) as the official-parity gin makes them."""
    import gin

    from sbs_jax.commands import gin_utils

    run_file = {"step_by_step": "runs/step_by_step.gin", "finetune": "runs/finetune.gin"}[mode]
    gin_utils.register_configurables()
    gin_utils.parse([run_file, "runs/official.gin", *gin_files],
                    [f"TRAIN_STEPS = {total_steps}", f"LEARNING_RATE = {learning_rate}", *bindings])
    try:
        return gin.get_configurable("OptimizerConfig")(), gin.get_configurable("ObjectiveConfig")()
    finally:
        gin.clear_config()


def our_trajectory(hf_dir, batches: Sequence[dict], optimizer_config, objective_config) -> Trajectory:
    import jax

    from sbs_jax import partitioning
    from sbs_jax.checkpoints import load_hf, save_hf
    from sbs_jax.model import Transformer
    from sbs_jax.model.decoder import DecoderConfig, DecoderLM
    from sbs_jax.train import compile as compile_lib, optim, state as state_lib, step as step_lib

    config, params = load_hf(hf_dir)
    if isinstance(config, DecoderConfig):  # decoder-only students: causal batches, no dropout
        config = config.replace(dtype="float32")
        model = DecoderLM(config)
    else:
        config = config.replace(dtype="float32", dropout_rate=0.0)
        model = Transformer(config)
    tx = optim.make_optimizer(optimizer_config)
    schedule = optim.make_schedule(optimizer_config)
    mesh = partitioning.make_mesh(data=-1, model=1)
    rules = partitioning.get_rules("data_parallel")
    shardings, abstract = compile_lib.state_shardings(model, tx, mesh, rules)
    state = state_lib.create_state(model, tx, mesh, rules, 0, shardings, init_params=params)
    batches = [step_lib.objective_module(b).train_inputs(objective_config, b) for b in batches]
    data = partitioning.data_sharding(mesh)
    compiled = {}
    losses, lrs = [], []
    for batch in batches:
        placed = jax.device_put(batch, data)
        key = jax.tree.map(lambda x: x.shape, batch)
        key = json.dumps(key, sort_keys=True, default=str)
        if key not in compiled:  # one compile per batch shape (the pipeline's batches may vary in length)
            compiled[key] = compile_lib.compile_train_step(
                model, tx, objective_config, schedule, 1, mesh, rules, shardings, abstract,
                compile_lib.abstract_batch(batch, mesh), matmul_precision="highest")
        state, metrics = compiled[key](state, placed)
        losses.append(float(metrics["loss"]))
        lrs.append(float(metrics["learning_rate"]))
    final = jax.device_get(state.params)
    return Trajectory(losses, lrs, _as_hf_state(config, final, save_hf))


def _as_hf_state(config, params, save_hf) -> dict:
    """Our params under HF's state_dict names (through the project's exporter, so naming is not re-derived)."""
    import tempfile

    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory() as tmp:
        save_hf(tmp, config, params, dtype="float32")
        return {k: np.asarray(v, np.float32) for k, v in load_file(f"{tmp}/model.safetensors").items()}


# ------------------------------------------------------------------------------------------------ compare
def compare(ours: Trajectory, ref: Trajectory) -> dict:
    """Per-step relative loss and lr differences and, per tensor, ‖θ_ours − θ_ref‖ / ‖θ_ref‖."""
    loss_rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours.losses, ref.losses)]
    lr_rel = [abs(a - b) / max(abs(b), 1e-30) if b else abs(a) for a, b in zip(ours.learning_rates,
                                                                              ref.learning_rates)]
    param_rel = {}
    for name, theirs in ref.params.items():
        if name not in ours.params:
            continue  # HF's tied aliases (encoder/decoder.embed_tokens) are `shared`
        param_rel[name] = float(np.linalg.norm(ours.params[name] - theirs) / max(np.linalg.norm(theirs), 1e-30))
    missing = sorted(set(ours.params) - set(ref.params))
    worst = max(param_rel, key=param_rel.get)
    return {"steps": len(ref.losses), "max_loss_rel": max(loss_rel), "max_lr_rel": max(lr_rel),
            "max_param_rel": param_rel[worst], "worst_param": worst, "param_rel": param_rel,
            "loss_rel": loss_rel, "missing_in_reference": missing,
            "ok": (max(loss_rel) <= LOSS_RTOL and max(lr_rel) <= LR_RTOL and param_rel[worst] <= PARAM_RTOL
                   and not missing and len(ours.losses) == len(ref.losses))}


def run(hf_dir, batches, *, mode: str, learning_rate: float, gin_files=(), bindings=()) -> dict:
    total = len(batches)
    opt, obj = official_configs(total, learning_rate, mode, gin_files, bindings)
    ours = our_trajectory(hf_dir, batches, opt, obj)
    ref = reference_trajectory(hf_dir, batches, mode=mode, alpha=0.5, learning_rate=learning_rate,
                               total_steps=total)
    return {**compare(ours, ref), "ours_losses": ours.losses, "reference_losses": ref.losses,
            "ours_lrs": ours.learning_rates, "reference_lrs": ref.learning_rates, "reference_params": ref.params}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hf_checkpoint", required=True, help="HF T5 directory (e.g. INITIAL_CHECKPOINT_PATH)")
    p.add_argument("--mode", choices=("step_by_step", "finetune"), default="step_by_step")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--data_dir", help="paper data dir; with --dataset and --spiece: real batches")
    p.add_argument("--dataset", default="cqa")
    p.add_argument("--spiece", help="the checkpoint's spiece.model")
    p.add_argument("--lengths", default="1024,256,256", help="inputs,targets,rationales")
    p.add_argument("--gin_binding", action="append", default=[], help="extra gin bindings for our side")
    p.add_argument("--output", help="write the full comparison as JSON here")
    args = p.parse_args(argv)
    if args.data_dir:
        from sbs_jax import tasks

        li, lt, lr = (int(x) for x in args.lengths.split(","))
        variant = "sbs" if args.mode == "step_by_step" else "ft"
        tasks.register_paper_tasks(args.data_dir, datasets=[args.dataset], vocabulary=args.spiece,
                                   variants=[variant], selection="official", prefix_style="official",
                                   valid_from_train=0.1 if args.dataset in ("cqa", "svamp") else None)
        batches = task_batches(f"{args.dataset}_{variant}", args.steps, args.batch_size,
                               {"inputs": li, "targets": lt, "rationales": lr})
    else:
        from transformers import T5Config

        vocab = T5Config.from_pretrained(args.hf_checkpoint).vocab_size
        batches = random_batches(args.steps, args.batch_size, vocab)
    result = run(args.hf_checkpoint, batches, mode=args.mode, learning_rate=args.learning_rate,
                 bindings=args.gin_binding)
    for t, (a, b) in enumerate(zip(result["ours_losses"], result["reference_losses"])):
        print(f"step {t:4d}  loss ours {a:.7f}  reference {b:.7f}  rel {abs(a - b) / max(abs(b), 1e-12):.2e}  "
              f"lr {result['ours_lrs'][t]:.4e}")
    print(f"max loss rel {result['max_loss_rel']:.2e} (<= {LOSS_RTOL}), max lr rel {result['max_lr_rel']:.2e}, "
          f"max param rel {result['max_param_rel']:.2e} ({result['worst_param']}, <= {PARAM_RTOL}): "
          f"{'OK' if result['ok'] else 'MISMATCH'}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({k: v for k, v in result.items() if k != "reference_params"}, f, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
