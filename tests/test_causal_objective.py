"""The decoder-only step-by-step loss against transformers: the same random-weight model (built by transformers,
imported through `load_hf`), HF's own `labels=` loss on sequences built here from token lists (prompt -100),
per stream, combined with λ or α; for every format, and finetuning."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

import decoder_cases as cases  # noqa: E402
from sbs_jax.checkpoints import load_hf  # noqa: E402
from sbs_jax.data import schema  # noqa: E402
from sbs_jax.data.input_pipeline import causal_lm  # noqa: E402
from sbs_jax.model.decoder import DecoderLM  # noqa: E402
from sbs_jax.train import causal_objective, step as step_lib  # noqa: E402
from sbs_jax.train.objective import ObjectiveConfig  # noqa: E402
from causal_cases import (BOS, EOS, FEATURE_LENGTHS, MARK, SRC_EOS, hf_stream_loss, random_examples,  # noqa: E402
                          reference_sequences)


# Llama in the default suite; the other families (whose logits test_decoder_parity proves) slow.
FAMILIES = ["llama3_scaled", pytest.param("qwen2_sliding", marks=pytest.mark.slow),
            pytest.param("gemma2_capped", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    cases.hf_model(request.param).save_pretrained(directory)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    config, params = load_hf(directory)
    return hf, DecoderLM(config.replace(dtype="float32")), params


@pytest.mark.parametrize("fmt,objective", [
    ("multitask", ObjectiveConfig(rationale_weight=0.7)),
    ("multitask", ObjectiveConfig(alpha=0.3)),
    ("rationale_first", ObjectiveConfig(rationale_weight=1.0)),
    ("label_first", ObjectiveConfig(alpha=0.5)),
    ("multitask", ObjectiveConfig(mode="finetune")),
])
def test_loss_equals_transformers(family, fmt, objective):
    hf, model, params = family
    examples = random_examples(seed=len(fmt))
    paired = objective.mode == "step_by_step"
    layout = causal_lm.CausalLayout(fmt, eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS,
                                    marker=MARK if fmt != "multitask" else ())
    feats = examples if paired else [{k: ex[k] for k in ("inputs", "targets")} for ex in examples]
    batch = causal_lm.causal_rows(feats, layout, paired=paired,
                                  lengths=layout.row_lengths(FEATURE_LENGTHS, paired))
    loss, metrics = jax.jit(lambda p, b: causal_objective.loss_fn(model, p, b, jax.random.key(0), objective))(
        params, batch)

    refs = [reference_sequences(ex, fmt if paired else "multitask", BOS) for ex in examples]
    weights = objective.stream_weights()
    expected = 0.0
    with torch.no_grad():
        for stream in objective.streams:
            key = stream if fmt == "multitask" else "both"
            ref = float(hf_stream_loss(hf, [r[key] for r in refs], stream))
            np.testing.assert_allclose(metrics[f"{stream}/loss"], ref, rtol=1e-5, atol=1e-6)
            expected += weights[stream] * ref
            n = sum(1 for r in refs for j, (_, s) in enumerate(r[key]) if j > 0 and s == stream)
            assert int(metrics[f"{stream}/num_tokens"]) == n
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert int(metrics["num_examples"]) == len(examples)


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_train_step_dispatches_causal_batches(family, accumulate):
    """The trainer's step runs causal batches through this objective (finetune on label rows)."""
    import optax

    from sbs_jax.train.state import TrainState
    _, model, params = family
    layout = causal_lm.CausalLayout("multitask", eos_id=EOS, bos_id=BOS)
    batch = causal_lm.causal_rows(random_examples(1), layout, paired=True,
                                  lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    objective = ObjectiveConfig()
    tx = optax.sgd(0.0)
    state = TrainState(step=np.int32(0), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    # With accumulation, two microbatches give the same token means.
    train_step = step_lib.make_train_step(model, tx, objective, lambda s: 0.0, grad_accum_steps=accumulate)
    _, metrics = jax.jit(train_step)(state, batch)
    _, direct = causal_objective.loss_fn(model, params, batch, None, objective)
    np.testing.assert_allclose(metrics["loss"], direct["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["rationale/loss"], direct["rationale/loss"], rtol=1e-5)
    assert int(metrics["num_examples"]) == 4
