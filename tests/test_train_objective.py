"""The step-by-step objective against the official formulation computed by `transformers`.

Same weights (a random tiny HF T5 v1.1 imported into ours), same paired batch: our loss must equal
`α·loss_pred + (1−α)·loss_expl`, each HF's own token-mean loss, and the gradients must agree; the fused and
two-pass forms must agree with each other; gradient accumulation must equal the full batch.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sbs_jax.model import Transformer
from sbs_jax.train import objective as objective_lib
from sbs_jax.train import optim, step as step_lib
from sbs_jax.train.state import TrainState

ALPHA = 0.5


@pytest.fixture(scope="module")
def hf_model_and_ours(tmp_path_factory):
    import torch
    import transformers

    from sbs_jax.checkpoints import hf

    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(cfg)
    # transformers 5.x ties lm_head to `shared` whatever the config says; untie by hand for a real v1.1.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model) * 0.2)
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    model = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
    config, params = hf.load_hf(path)
    config = config.replace(dtype="float32", dropout_rate=0.0)
    return torch, model, config, jax.tree.map(jnp.asarray, params)


def _stream(rng, batch, in_len, tgt_len, in_lens, tgt_lens):
    enc = np.zeros((batch, in_len), np.int32)
    tgt = np.zeros((batch, tgt_len), np.int32)
    for i in range(batch):
        enc[i, :in_lens[i]] = rng.integers(3, 96, in_lens[i])
        enc[i, in_lens[i] - 1] = 1
        tgt[i, :tgt_lens[i]] = rng.integers(3, 96, tgt_lens[i])
        tgt[i, tgt_lens[i] - 1] = 1  # EOS
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
            "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def _paired_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"label": _stream(rng, 4, 12, 5, [12, 7, 9, 4], [2, 5, 3, 4]),
            "rationale": _stream(rng, 4, 12, 9, [12, 7, 9, 4], [9, 6, 2, 8])}


def _hf_loss(torch, model, stream):
    labels = np.where(stream["decoder_loss_weights"] > 0, stream["decoder_target_tokens"], -100)
    enc = torch.tensor(stream["encoder_input_tokens"], dtype=torch.long)
    return model(input_ids=enc, attention_mask=(enc != 0).long(),
                 labels=torch.tensor(labels, dtype=torch.long)).loss


def test_loss_and_gradients_match_transformers(hf_model_and_ours):
    torch, hf_model, config, params = hf_model_and_ours
    from sbs_jax.checkpoints import hf

    batch = _paired_batch()
    hf_model.zero_grad()
    loss_pred = _hf_loss(torch, hf_model, batch["label"])
    loss_expl = _hf_loss(torch, hf_model, batch["rationale"])
    hf_total = ALPHA * loss_pred + (1 - ALPHA) * loss_expl
    hf_total.backward()
    hf_grads = {name: p.grad.detach().numpy() for name, p in hf_model.named_parameters() if p.grad is not None}

    model = Transformer(config)
    obj = objective_lib.ObjectiveConfig(alpha=ALPHA)

    def loss(p):
        return objective_lib.loss_fn(model, p, batch, jax.random.key(0), obj, enable_dropout=False)

    (ours, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert abs(float(ours) - float(hf_total.detach())) < 1e-5
    assert abs(float(metrics["label/loss"]) - float(loss_pred.detach())) < 1e-5
    assert abs(float(metrics["rationale/loss"]) - float(loss_expl.detach())) < 1e-5
    assert int(metrics["label/num_tokens"]) == 14 and int(metrics["rationale/num_tokens"]) == 25

    ours_as_hf = hf.params_to_hf_tensors(config, jax.tree.map(np.asarray, grads))
    compared = 0
    for name, g in ours_as_hf.items():
        ref = hf_grads[name]
        rel = np.linalg.norm(g - ref) / max(np.linalg.norm(ref), 1e-12)
        assert rel <= 1e-4, f"{name}: relative gradient error {rel:.2e}"
        compared += 1
    assert compared >= 20


def test_lambda_form_is_twice_the_alpha_form(hf_model_and_ours):
    _, _, config, params = hf_model_and_ours
    model, batch = Transformer(config), _paired_batch(1)

    def loss(obj):
        return jax.jit(lambda p: objective_lib.loss_fn(model, p, batch, jax.random.key(0), obj,
                                                       enable_dropout=False))(params)

    alpha_loss, _ = loss(objective_lib.ObjectiveConfig(alpha=0.5))
    lam_loss, m = loss(objective_lib.ObjectiveConfig(rationale_weight=1.0))
    np.testing.assert_allclose(float(lam_loss), 2 * float(alpha_loss), rtol=1e-6)
    np.testing.assert_allclose(float(lam_loss), float(m["label/loss"] + m["rationale/loss"]), rtol=1e-6)


def test_fused_equals_two_pass(hf_model_and_ours):
    """One encoder pass over both streams + one decoder pass per stream == the two-pass objective."""
    _, _, config, params = hf_model_and_ours
    model, batch = Transformer(config), _paired_batch(2)
    results = {}
    for fused in (False, True):
        obj = objective_lib.ObjectiveConfig(rationale_weight=0.7, fused=fused)
        results[fused] = jax.jit(jax.value_and_grad(
            lambda p: objective_lib.loss_fn(model, p, batch, jax.random.key(0), obj, enable_dropout=False),
            has_aux=True))(params)
    (loss_f, m_f), grads_f = results[True]
    (loss_t, m_t), grads_t = results[False]
    np.testing.assert_allclose(float(loss_f), float(loss_t), rtol=1e-6)
    for k in ("label/loss", "rationale/loss", "label/accuracy", "rationale/accuracy"):
        np.testing.assert_allclose(float(m_f[k]), float(m_t[k]), rtol=1e-6, err_msg=k)
    assert int(m_f["label/num_tokens"]) == 14 and int(m_f["rationale/num_tokens"]) == 25
    for a, b in zip(jax.tree.leaves(grads_f), jax.tree.leaves(grads_t)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~25 s; test_fused_equals_two_pass keeps the fused step in the default suite
def test_fused_dropout_is_deterministic_per_key(hf_model_and_ours):
    _, _, config, params = hf_model_and_ours
    model = Transformer(config.replace(dropout_rate=0.3))
    batch = _paired_batch(2)
    obj = objective_lib.ObjectiveConfig(fused=True)
    fn = jax.jit(lambda p, k, d: objective_lib.loss_fn(model, p, batch, k, obj, enable_dropout=d)[0],
                 static_argnums=2)
    a, b = fn(params, jax.random.key(5), True), fn(params, jax.random.key(5), True)
    c, off = fn(params, jax.random.key(6), True), fn(params, jax.random.key(5), False)
    assert float(a) == float(b)
    assert float(a) != float(c) and float(a) != float(off)


def test_label_only_modes_ignore_rationales_and_check_batches(hf_model_and_ours):
    _, _, config, params = hf_model_and_ours
    model, batch = Transformer(config), _paired_batch(3)
    obj = objective_lib.ObjectiveConfig(mode="finetune")
    loss, metrics = objective_lib.loss_fn(model, params, batch, jax.random.key(0), obj, enable_dropout=False)
    assert "rationale/loss" not in metrics
    np.testing.assert_allclose(float(loss), float(metrics["label/loss"]), rtol=1e-7)
    with pytest.raises(ValueError, match="missing \\['rationale'\\]"):
        objective_lib.check_batch(objective_lib.ObjectiveConfig(), {"label": batch["label"]})


@pytest.mark.slow  # two train-step compilations, ~30 s
def test_gradient_accumulation_equals_full_batch(hf_model_and_ours):
    _, _, config, params = hf_model_and_ours
    model, batch = Transformer(config), _paired_batch(4)
    obj = objective_lib.ObjectiveConfig(alpha=ALPHA)
    # A large eps keeps Adam's first step linear in the gradient (lr·g/(|g|+eps)): with eps 1e-8 it is lr·sign(g),
    # which turns float rounding in near-zero gradients into differences of order lr in the parameters.
    opt = optim.OptimizerConfig(name="adamw", learning_rate=1e-3, eps=1e-3)
    tx = optim.make_optimizer(opt)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    out = {}
    for k in (1, 2):
        train_step = step_lib.make_train_step(model, tx, obj, optim.make_schedule(opt), grad_accum_steps=k)
        out[k] = jax.jit(train_step)(state, batch)
    np.testing.assert_allclose(float(out[2][1]["loss"]), float(out[1][1]["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(out[2][1]["rationale/loss"]), float(out[1][1]["rationale/loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(out[2][1]["grad_norm"]), float(out[1][1]["grad_norm"]), rtol=1e-5)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out[1][0].params, out[2][0].params)
    assert max(jax.tree.leaves(diffs)) < 1e-6


@pytest.mark.parametrize("schedule,expect", [
    (dict(schedule="constant", warmup_steps=0), [1.0, 1.0, 1.0]),
    (dict(schedule="linear", warmup_steps=10, decay_steps=20), [0.0, 1.0, 0.0]),
    (dict(schedule="rsqrt", warmup_steps=100), [0.1, 0.1, 0.1 / np.sqrt(4.0)]),
])
def test_schedules(schedule, expect):
    fn = optim.make_schedule(optim.OptimizerConfig(learning_rate=1.0, **schedule))
    got = [float(fn(s)) for s in (0, 10 if schedule["schedule"] != "rsqrt" else 100,
                                  20 if schedule["schedule"] != "rsqrt" else 400)]
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-7)


def test_adafactor_and_clipping_train():
    params = {"w": jnp.ones((4, 6)), "b": jnp.zeros((6,))}
    for cfg in (optim.OptimizerConfig(name="adafactor", learning_rate=1e-2, clip_norm=1.0),
                optim.OptimizerConfig(name="adamw", learning_rate=1e-2, weight_decay=0.01, clip_norm=0.5)):
        tx = optim.make_optimizer(cfg)
        opt_state = tx.init(params)
        loss = lambda p: jnp.sum((jnp.ones((3, 4)) @ p["w"] + p["b"] - 2.0) ** 2)  # noqa: E731
        first = float(loss(params))
        p = params
        for _ in range(20):
            updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p)
            p = optax.apply_updates(p, updates)
        assert float(loss(p)) < first
