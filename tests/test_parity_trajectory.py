"""Trajectory parity (slow): from one random HF T5 v1.1, 50 batches through our step under runs/official.gin and
through the torch loop equivalent to HF Seq2SeqTrainer's defaults (bench/parity.py): per-step loss, learning
rate each step and final parameters, for step-by-step and for standard finetuning."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bench import parity  # noqa: E402

STEPS, BATCH, VOCAB = 50, 8, 96
# 1e-3 rather than the paper's 5e-5: the same arithmetic, but 50 steps then move the parameters far enough
# that a wrong optimizer detail (ε, clipping, schedule) shows in the final parameters.
LEARNING_RATE = 1e-3


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                                num_decoder_layers=2, relative_attention_num_buckets=8,
                                relative_attention_max_distance=16, dropout_rate=0.0, decoder_start_token_id=0,
                                feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = transformers.T5ForConditionalGeneration(cfg)
    with torch.no_grad():  # transformers 5 ties lm_head at init; a v1.1 student has its own (stack.md)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.05)
    directory = tmp_path_factory.mktemp("hf_t5")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def batches():
    return parity.random_batches(STEPS, BATCH, VOCAB, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["step_by_step", "finetune"])
def test_trajectory_equals_trainer_reference(mode, hf_dir, batches):
    result = parity.run(hf_dir, batches, mode=mode, learning_rate=LEARNING_RATE)
    print({k: result[k] for k in ("max_loss_rel", "max_lr_rel", "max_param_rel", "worst_param")})
    assert result["steps"] == STEPS and not result["missing_in_reference"]
    assert result["max_loss_rel"] <= parity.LOSS_RTOL
    assert result["max_lr_rel"] <= parity.LR_RTOL
    assert result["max_param_rel"] <= parity.PARAM_RTOL
    assert result["reference_lrs"][-1] == pytest.approx(LEARNING_RATE / STEPS)  # linear decay, no warmup
    # The parameters really moved, by far more than the tolerance (random targets: the loss barely falls).
    from safetensors.numpy import load_file

    init = load_file(str(hf_dir / "model.safetensors"))
    moved = [np.linalg.norm(result["reference_params"][k] - v) / np.linalg.norm(v) for k, v in init.items()]
    assert np.median(moved) > 20 * parity.PARAM_RTOL, np.median(moved)
    assert np.mean(result["reference_losses"][-10:]) < np.mean(result["reference_losses"][:10])
