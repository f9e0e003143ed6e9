"""Decoder-only trajectory parity (slow): from one random transformers model per family (Llama, Qwen2, Gemma 2),
50 step-by-step batches (multitask format) through our compiled step under runs/official.gin and through a torch
loop written here (HF's `labels=` loss per stream, α form, AdamW, linear decay, clipping at 1.0): per-step
loss, learning rate and final parameters within 1e-4 relative."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import decoder_cases as cases  # noqa: E402
from bench import parity  # noqa: E402
from causal_cases import (BOS, EOS, FEATURE_LENGTHS, SRC_EOS, hf_stream_loss, random_examples,  # noqa: E402
                          reference_sequences)
from sbs_jax.data.input_pipeline import causal_lm  # noqa: E402

STEPS, BATCH, LEARNING_RATE, ALPHA = 50, 8, 1e-3, 0.5


def reference_trajectory(hf_dir, examples_per_step, *, clip_norm=1.0):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager").float()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (STEPS - step) / STEPS))
    losses, lrs = [], []
    for examples in examples_per_step:
        refs = [reference_sequences(ex, "multitask", BOS) for ex in examples]
        lrs.append(schedule.get_last_lr()[0])
        loss = (ALPHA * hf_stream_loss(model, [r["label"] for r in refs], "label")
                + (1 - ALPHA) * hf_stream_loss(model, [r["rationale"] for r in refs], "rationale"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    state = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    return parity.Trajectory(losses, lrs, state)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama3_scaled", "qwen2_sliding", "gemma2_capped"])
def test_trajectory_equals_torch_reference(family, tmp_path):
    cases.hf_model(family).save_pretrained(tmp_path)
    examples_per_step = [random_examples(seed=1000 + t, n=BATCH) for t in range(STEPS)]
    layout = causal_lm.CausalLayout("multitask", eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS)
    lengths = layout.row_lengths(FEATURE_LENGTHS, paired=True)
    batches = [causal_lm.causal_rows(ex, layout, paired=True, lengths=lengths) for ex in examples_per_step]
    opt, obj = parity.official_configs(STEPS, LEARNING_RATE, "step_by_step")
    assert obj.alpha == ALPHA and opt.clip_norm == 1.0 and opt.schedule == "linear"
    ours = parity.our_trajectory(tmp_path, batches, opt, obj)
    ref = reference_trajectory(tmp_path, examples_per_step)
    # A key bias adds q·R(j−i)·b to query i's score of key j: without RoPE that is the same for every key and
    # softmax cancels it; with RoPE only the rotation's remainder survives, so its gradient is a sum of nearly
    # cancelling terms whose float32 rounding differs between implementations, and Adam's normalisation turns
    # that relative difference into a same-size update difference. Key biases are held to 1e-2 (measured
    # 6.5e-4 for Llama), every other tensor to 1e-4.
    k_bias = {n: float(np.linalg.norm(ours.params[n] - ref.params[n]) / np.linalg.norm(ref.params[n]))
              for n in ref.params if n.endswith("k_proj.bias")}
    assert all(v < 1e-2 for v in k_bias.values()), k_bias
    for name in k_bias:
        del ref.params[name], ours.params[name]
    result = parity.compare(ours, ref)
    print({k: result[k] for k in ("max_loss_rel", "max_lr_rel", "max_param_rel", "worst_param")})
    assert result["steps"] == STEPS and not result["missing_in_reference"]
    assert result["max_loss_rel"] <= parity.LOSS_RTOL
    assert result["max_lr_rel"] <= parity.LR_RTOL
    assert result["max_param_rel"] <= parity.PARAM_RTOL
    assert ref.learning_rates[-1] == pytest.approx(LEARNING_RATE / STEPS)
    init = {k: v.detach().numpy() for k, v in cases.hf_model(family).state_dict().items()}
    moved = [np.linalg.norm(ref.params[k] - v) / np.linalg.norm(v) for k, v in init.items() if k in ref.params]
    assert np.median(moved) > 20 * parity.PARAM_RTOL, np.median(moved)
