"""Tests for the flax T5 model: config, parameter tree, packing, scan, KV-cache decoding, dtypes, loss."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax.model import T5Config, Transformer, get_config, init_decode_cache, scan_params, unscan_params
from sbs_jax.model.t5.layers import relative_position_bucket
from sbs_jax.model.losses import token_mean_cross_entropy

VOCAB = 97
FAMILIES = ("t5_1_0_tiny", "t5_1_1_tiny")


def tiny(name="t5_1_1_tiny", **overrides):
    fields = dict(vocab_size=VOCAB, dtype="float32", dropout_rate=0.0, relative_attention_max_distance=16)
    fields.update(overrides)
    return get_config(name, **fields)


def init_params(cfg, seed=0, enc_len=9, dec_len=7):
    model = Transformer(cfg)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.ones((1, enc_len), jnp.int32),
                                    jnp.ones((1, dec_len), jnp.int32))
    params = nn.meta.unbox(variables["params"])
    # A random relpos table, so position handling is visible in the logits.
    for stack in ("encoder", "decoder"):
        shape = params[stack]["relpos_bias"]["rel_embedding"].shape
        params[stack]["relpos_bias"]["rel_embedding"] = jax.random.normal(jax.random.key(seed + 7), shape)
    return model, params


def apply(model, variables, *args, **kwargs):
    """Jitted `model.apply` (eager flax is slow on a loaded CPU); kwargs are baked in as constants."""
    return jax.jit(lambda v, *a: model.apply(v, *a, **kwargs))(variables, *args)


def random_tokens(rng, shape, lengths=None):
    tokens = rng.randint(2, VOCAB, shape).astype(np.int32)
    if lengths is not None:
        for row, n in enumerate(lengths):
            tokens[row, n:] = 0
    return tokens


def shift_right(targets):
    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


# ---------------------------------------------------------------- config
def test_presets_have_public_sizes():
    small = get_config("t5_1_0_small")
    assert (small.d_model, small.d_ff, small.num_layers, small.num_heads, small.d_kv) == (512, 2048, 6, 8, 64)
    assert small.feed_forward_proj == "relu" and small.tie_word_embeddings
    xxl = get_config("t5_1_0_xxl")
    assert (xxl.d_model, xxl.d_ff, xxl.num_heads, xxl.d_kv) == (1024, 65536, 128, 128)
    base11 = get_config("t5_1_1_base", dtype="float32")
    assert (base11.d_model, base11.d_ff, base11.num_layers, base11.num_heads) == (768, 2048, 12, 12)
    assert base11.is_gated and base11.activation == "gelu_new" and not base11.tie_word_embeddings
    assert base11.vocab_size == 32128 and base11.dtype == "float32"
    with pytest.raises(ValueError, match="unknown T5 preset"):
        get_config("t5_1_1_huge")
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-tanh")
    with pytest.raises(ValueError, match="num_heads"):
        T5Config(num_heads=0)


def test_hf_dict_round_trip_and_tie_semantics():
    cfg = tiny("t5_1_1_tiny", num_decoder_layers=3)
    hf = cfg.to_hf_dict()
    assert hf["feed_forward_proj"] == "gated-gelu" and hf["num_decoder_layers"] == 3
    assert T5Config.from_hf_dict(hf, dtype="float32", relative_attention_max_distance=16) == cfg
    # What transformers 5.24 writes for an untied v1.1 model: tie true, the real choice in scale_decoder_outputs.
    v11_hf5 = dict(hf, tie_word_embeddings=True, scale_decoder_outputs=False)
    assert not T5Config.from_hf_dict(v11_hf5).tie_word_embeddings
    # Public hub configs: v1.1 says tie false; v1.0 omits the key (HF default True).
    assert not T5Config.from_hf_dict(dict(hf, tie_word_embeddings=False)).tie_word_embeddings
    v10 = {k: v for k, v in tiny("t5_1_0_tiny").to_hf_dict().items()
           if k not in ("tie_word_embeddings", "scale_decoder_outputs")}
    assert T5Config.from_hf_dict(v10).tie_word_embeddings
    with pytest.raises(ValueError, match="d_kv"):
        T5Config.from_hf_dict({k: v for k, v in hf.items() if k != "d_kv"})


# ---------------------------------------------------------------- parameters
def expected_paths(cfg):
    mlp = ["wi_0", "wi_1", "wo"] if cfg.is_gated else ["wi", "wo"]
    attn = ["query", "key", "value", "out"]
    paths = {"token_embedder/embedding", "encoder/relpos_bias/rel_embedding", "encoder/encoder_norm/scale",
             "decoder/relpos_bias/rel_embedding", "decoder/decoder_norm/scale"}
    for i in range(cfg.num_layers):
        p = f"encoder/layers_{i}"
        paths |= {f"{p}/pre_attention_layer_norm/scale", f"{p}/pre_mlp_layer_norm/scale"}
        paths |= {f"{p}/attention/{a}/kernel" for a in attn} | {f"{p}/mlp/{m}/kernel" for m in mlp}
    for i in range(cfg.decoder_layers):
        p = f"decoder/layers_{i}"
        paths |= {f"{p}/{n}/scale" for n in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm",
                                                 "pre_mlp_layer_norm")}
        paths |= {f"{p}/{s}/{a}/kernel" for s in ("self_attention", "encoder_decoder_attention") for a in attn}
        paths |= {f"{p}/mlp/{m}/kernel" for m in mlp}
    if not cfg.tie_word_embeddings:
        paths.add("decoder/logits_dense/kernel")
    return paths


def flat(tree):
    return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("name", FAMILIES)
def test_param_tree_names_shapes_and_logical_axes(name):
    cfg = tiny(name, num_decoder_layers=3)
    boxed = jax.jit(Transformer(cfg).init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                                           jnp.ones((1, 3), jnp.int32))
    params = flat(nn.meta.unbox(boxed["params"]))
    assert set(params) == expected_paths(cfg)
    assert params["token_embedder/embedding"].shape == (VOCAB, 64)
    assert params["encoder/layers_0/attention/query/kernel"].shape == (64, 4 * 16)
    assert params["decoder/layers_2/self_attention/out/kernel"].shape == (4 * 16, 64)
    assert params["encoder/layers_1/mlp/wo/kernel"].shape == (128, 64)
    assert params["encoder/relpos_bias/rel_embedding"].shape == (4, 32)
    assert all(v.dtype == jnp.float32 for v in params.values())
    specs = {k: tuple(v) for k, v in flat(nn.get_partition_spec(boxed["params"])).items()}
    assert specs["token_embedder/embedding"] == ("vocab", "embed")
    assert specs["decoder/layers_0/encoder_decoder_attention/key/kernel"] == ("embed", "joined_kv")
    assert specs["encoder/layers_0/attention/out/kernel"] == ("joined_kv", "embed")
    assert specs["encoder/layers_0/mlp/wo/kernel"] == ("mlp", "embed")
    assert specs["decoder/relpos_bias/rel_embedding"] == ("heads", "relpos_buckets")
    assert specs["decoder/decoder_norm/scale"] == ("embed",)
    assert all(len(specs[k]) == params[k].ndim for k in params)


def test_relative_position_bucket_matches_hf():
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention
    relative = np.arange(-300, 300)[None, :] - np.zeros((1, 1), np.int64)
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            ours = relative_position_bucket(jnp.asarray(relative, jnp.int32), bidirectional=bidirectional,
                                            num_buckets=buckets, max_distance=distance)
            ref = T5Attention._relative_position_bucket(torch.tensor(relative), bidirectional, buckets, distance)
            np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


# ---------------------------------------------------------------- packing
@pytest.mark.parametrize("name", FAMILIES)
def test_packed_rows_give_the_same_logits_as_unpacked(name):
    cfg = tiny(name)
    model, params = init_params(cfg)
    rng = np.random.RandomState(0)
    enc_lens, tgt_lens = [5, 3, 7], [4, 6, 2]
    enc = random_tokens(rng, (3, 7), enc_lens)
    tgt = random_tokens(rng, (3, 6), tgt_lens)
    unpacked = apply(model, {"params": params}, enc, shift_right(tgt), tgt)

    def pack(rows, lengths, total):
        tokens, segments, positions = (np.zeros((1, total), np.int32) for _ in range(3))
        offset = 0
        for seg, (row, n) in enumerate(zip(rows, lengths), start=1):
            tokens[0, offset:offset + n] = row[:n]
            segments[0, offset:offset + n] = seg
            positions[0, offset:offset + n] = np.arange(n)
            offset += n
        return tokens, segments, positions

    p_enc, enc_seg, enc_pos = pack(enc, enc_lens, 17)
    p_tgt, dec_seg, dec_pos = pack(tgt, tgt_lens, 14)
    # SeqIO's packed decoder inputs: targets shifted right within each segment.
    p_in = np.where(dec_pos == 0, 0, shift_right(p_tgt))
    packed = apply(model, {"params": params}, p_enc, p_in, p_tgt, encoder_segment_ids=enc_seg,
                         decoder_segment_ids=dec_seg, encoder_positions=enc_pos, decoder_positions=dec_pos)
    offset = 0
    for row, n in enumerate(tgt_lens):
        np.testing.assert_allclose(packed[0, offset:offset + n], unpacked[row, :n], atol=1e-5, rtol=1e-5)
        offset += n
    # Without segment ids the packed row would leak across examples: the check above is not vacuous.
    leaky = apply(model, {"params": params}, p_enc, p_in, p_tgt, encoder_positions=enc_pos,
                  decoder_positions=dec_pos)
    assert np.abs(np.asarray(leaky[0, 4:10]) - np.asarray(unpacked[1, :6])).max() > 1e-3


# ---------------------------------------------------------------- scan
@pytest.mark.parametrize("name,remat", [pytest.param("t5_1_0_tiny", "full", marks=pytest.mark.slow),  # ~20 s each
                                        ("t5_1_1_tiny", "dots_saveable")])
def test_scan_matches_unrolled_logits_and_grads(name, remat):
    cfg = tiny(name)
    model, params = init_params(cfg)
    scan_cfg = cfg.replace(scan_layers=True, remat_policy=remat)
    scan_model = Transformer(scan_cfg)
    scanned = scan_params(params, scan_cfg)
    assert scanned["decoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (2, 128, 64)
    # The scanned model's own init produces the same tree layout and logical `layers` axis.
    boxed = jax.eval_shape(scan_model.init, jax.random.key(1), jnp.ones((1, 3), jnp.int32),
                           jnp.ones((1, 3), jnp.int32))
    assert jax.tree.structure(nn.meta.unbox(boxed["params"])) == jax.tree.structure(scanned)
    spec = boxed["params"]["encoder"]["layers"]["attention"]["query"]["kernel"].names
    assert spec == ("layers", "embed", "joined_kv")

    rng = np.random.RandomState(1)
    enc = random_tokens(rng, (2, 8), [8, 5])
    tgt = random_tokens(rng, (2, 6), [6, 3])
    weights = (tgt > 0).astype(np.float32)

    def loss_fn(p, m):
        logits = m.apply({"params": p}, enc, shift_right(tgt), tgt)
        return token_mean_cross_entropy(logits, tgt, weights)[0], logits

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=1)
    (loss_u, logits_u), grads_u = grad_fn(params, model)
    (loss_s, logits_s), grads_s = grad_fn(scanned, scan_model)
    np.testing.assert_allclose(logits_s, logits_u, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    back = unscan_params(grads_s, scan_cfg)
    for (path, g_u), g_s in zip(jax.tree_util.tree_leaves_with_path(grads_u), jax.tree.leaves(back)):
        np.testing.assert_allclose(g_s, g_u, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
    # Round trip of the converters is exact.
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(unscan_params(scanned, cfg)),
                                                   jax.tree.leaves(params)))


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize("name,scan", [("t5_1_0_tiny", False), ("t5_1_1_tiny", False), ("t5_1_1_tiny", True)])
def test_cached_decoding_matches_teacher_forcing(name, scan):
    cfg = tiny(name, scan_layers=scan)
    model, params = init_params(cfg)
    if scan:
        params = scan_params(params, cfg)
    rng = np.random.RandomState(2)
    enc = random_tokens(rng, (3, 9), [9, 4, 6])
    tgt = random_tokens(rng, (3, 7))
    dec_in = shift_right(tgt)
    full = apply(model, {"params": params}, enc, dec_in, tgt)
    encoded = apply(model, {"params": params}, enc, method=Transformer.encode)
    cache = init_decode_cache(model, 3, 7, 9)

    @jax.jit
    def step_with(cache, token, encoded):
        logits, mutated = model.apply({"params": params, "cache": cache}, encoded, enc, token, decode=True,
                                      method=Transformer.decode, mutable=["cache"])
        return logits, mutated["cache"]

    for t in range(7):
        # Cross-attention keys/values are projected at step 0 and cached: later steps must not need `encoded`.
        logits, cache = step_with(cache, dec_in[:, t:t + 1], encoded if t == 0 else jnp.zeros_like(encoded))
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
    assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(cache))
    with pytest.raises(ValueError, match="one token per step"):
        model.apply({"params": params, "cache": cache}, encoded, enc, dec_in[:, :2], decode=True,
                    method=Transformer.decode, mutable=["cache"])


# ---------------------------------------------------------------- dtypes and dropout
def test_bfloat16_compute_stays_close_to_float32():
    cfg = tiny("t5_1_1_tiny")
    model, params = init_params(cfg)
    rng = np.random.RandomState(3)
    enc, tgt = random_tokens(rng, (2, 8)), random_tokens(rng, (2, 6))
    f32 = apply(model, {"params": params}, enc, shift_right(tgt), tgt)
    bf16 = apply(Transformer(cfg.replace(dtype="bfloat16")), {"params": params}, enc, shift_right(tgt), tgt)
    assert bf16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(bf16 - f32) / jnp.linalg.norm(f32))
    assert rel < 0.03, rel
    # Same argmax almost everywhere.
    assert float(jnp.mean(jnp.argmax(bf16, -1) == jnp.argmax(f32, -1))) >= 0.9


def test_dropout_is_active_only_when_enabled():
    cfg = tiny("t5_1_0_tiny", dropout_rate=0.3)
    model, params = init_params(cfg)
    rng = np.random.RandomState(4)
    enc, tgt = random_tokens(rng, (2, 8)), random_tokens(rng, (2, 6))
    args = (enc, shift_right(tgt), tgt)
    run = jax.jit(lambda p, rng, enable: model.apply({"params": p}, *args, enable_dropout=enable,
                                                     rngs={"dropout": rng}), static_argnums=2)
    eval_a, eval_b = run(params, jax.random.key(8), False), run(params, jax.random.key(9), False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, train_b = run(params, jax.random.key(1), True), run(params, jax.random.key(1), True)
    train_c = run(params, jax.random.key(2), True)
    np.testing.assert_array_equal(train_a, train_b)
    assert float(jnp.abs(train_a - eval_a).max()) > 1e-3
    assert float(jnp.abs(train_a - train_c).max()) > 1e-3


# ---------------------------------------------------------------- loss
def _numpy_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_token_mean_cross_entropy_against_numpy():
    rng = np.random.RandomState(5)
    logits = rng.randn(2, 5, 11).astype(np.float32) * 3
    targets = rng.randint(0, 11, (2, 5))
    weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    logp = _numpy_log_softmax(logits.astype(np.float64))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    real = weights > 0
    loss, metrics = token_mean_cross_entropy(logits, targets, weights)
    np.testing.assert_allclose(loss, nll[real].mean(), rtol=1e-6)  # HF: mean over non-ignored tokens
    assert int(metrics["num_tokens"]) == 8
    np.testing.assert_allclose(metrics["accuracy"], (logits.argmax(-1) == targets)[real].mean(), rtol=1e-6)

    # Label smoothing: explicit soft targets minus their entropy; z-loss: mean of log(Z)^2.
    s, z = 0.1, 1e-3
    soft = np.full(logits.shape, s / 10)
    np.put_along_axis(soft, targets[..., None], 1 - s, -1)
    smoothed = -(soft * logp).sum(-1) + (soft * np.log(soft)).sum(-1)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    loss, metrics = token_mean_cross_entropy(logits, targets, weights, label_smoothing=s, z_loss=z)
    np.testing.assert_allclose(metrics["cross_entropy"], smoothed[real].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["z_loss"], z * (log_z[real] ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, smoothed[real].mean() + z * (log_z[real] ** 2).mean(), rtol=1e-5)

    zero, _ = token_mean_cross_entropy(logits, targets, np.zeros_like(weights))
    assert float(zero) == 0.0
    with pytest.raises(ValueError, match="must agree"):
        token_mean_cross_entropy(logits, targets[:, :4], weights)
