"""The unscanned parameter layout (docs/ARCHITECTURE.md) as flat `"a/b/c" -> shape` tables, and the checks
every importer runs before handing params to the model: nothing missing, nothing extra, every shape right."""
from typing import Any, Mapping

import numpy as np

from sbs_jax.checkpoints.errors import CheckpointError

_ENCODER_ATTENTION = ("attention",)
_DECODER_ATTENTION = ("self_attention", "encoder_decoder_attention")


def is_gated(config) -> bool:
    return config.feed_forward_proj.startswith("gated")


def num_decoder_layers(config) -> int:
    return config.num_layers if config.num_decoder_layers is None else config.num_decoder_layers


def _layer_shapes(config, attentions, norms) -> dict:
    embed, joined = config.d_model, config.num_heads * config.d_kv
    shapes = {f"{n}/scale": (embed,) for n in norms}
    for att in attentions:
        for proj in ("query", "key", "value"):
            shapes[f"{att}/{proj}/kernel"] = (embed, joined)
        shapes[f"{att}/out/kernel"] = (joined, embed)
    for wi in (("wi_0", "wi_1") if is_gated(config) else ("wi",)):
        shapes[f"mlp/{wi}/kernel"] = (embed, config.d_ff)
    shapes["mlp/wo/kernel"] = (config.d_ff, embed)
    return shapes


def decoder_only_shapes(config) -> dict[str, tuple]:
    """Flat `path -> shape` of a decoder-only LM (`DecoderConfig`) in the unscanned layout."""
    embed, head_dim = config.hidden_size, config.head_dim
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    layer = {"self_attn/q_proj/kernel": (embed, q_width), "self_attn/k_proj/kernel": (embed, kv_width),
             "self_attn/v_proj/kernel": (embed, kv_width), "self_attn/o_proj/kernel": (q_width, embed),
             "mlp/wi_0/kernel": (embed, config.intermediate_size), "mlp/wi_1/kernel": (embed, config.intermediate_size),
             "mlp/wo/kernel": (config.intermediate_size, embed),
             "input_layernorm/scale": (embed,), "post_attention_layernorm/scale": (embed,)}
    if config.attention_bias:
        layer.update({"self_attn/q_proj/bias": (q_width,), "self_attn/k_proj/bias": (kv_width,),
                      "self_attn/v_proj/bias": (kv_width,)})
    if config.attention_out_bias:
        layer["self_attn/o_proj/bias"] = (embed,)
    if config.mlp_bias:
        layer.update({"mlp/wi_0/bias": (config.intermediate_size,), "mlp/wi_1/bias": (config.intermediate_size,),
                      "mlp/wo/bias": (embed,)})
    if config.sandwich_norms:
        layer.update({"pre_feedforward_layernorm/scale": (embed,), "post_feedforward_layernorm/scale": (embed,)})
    if config.qk_norm:
        layer.update({"self_attn/q_norm/scale": (head_dim,), "self_attn/k_norm/scale": (head_dim,)})
    shapes = {"embed_tokens/embedding": (config.vocab_size, embed), "decoder/norm/scale": (embed,)}
    for i in range(config.num_hidden_layers):
        shapes.update({f"decoder/layers_{i}/{k}": v for k, v in layer.items()})
    if not config.tie_word_embeddings:
        shapes["lm_head/kernel"] = (embed, config.vocab_size)
    return shapes


def expected_shapes(config) -> dict[str, tuple]:
    """Flat `path -> shape` for every parameter of `config` in the unscanned layout."""
    if hasattr(config, "model_type"):
        return decoder_only_shapes(config)
    relpos = (config.num_heads, config.relative_attention_num_buckets)
    shapes = {
        "token_embedder/embedding": (config.vocab_size, config.d_model),
        "encoder/relpos_bias/rel_embedding": relpos,
        "encoder/encoder_norm/scale": (config.d_model,),
        "decoder/relpos_bias/rel_embedding": relpos,
        "decoder/decoder_norm/scale": (config.d_model,),
    }
    enc = _layer_shapes(config, _ENCODER_ATTENTION, ("pre_attention_layer_norm", "pre_mlp_layer_norm"))
    dec = _layer_shapes(config, _DECODER_ATTENTION, (
        "pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"))
    for i in range(config.num_layers):
        shapes.update({f"encoder/layers_{i}/{k}": v for k, v in enc.items()})
    for i in range(num_decoder_layers(config)):
        shapes.update({f"decoder/layers_{i}/{k}": v for k, v in dec.items()})
    if not config.tie_word_embeddings:
        shapes["decoder/logits_dense/kernel"] = (config.d_model, config.vocab_size)
    return shapes


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> `{"a/b/c": leaf}`."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def check_params(flat: Mapping[str, np.ndarray], config, source: str) -> dict:
    """Validate a flat tree against `config`; returns the nested float32 params.

    Raises CheckpointError listing every missing tensor, unexpected tensor and wrong shape at once, so a bad
    checkpoint is diagnosed in one run.
    """
    want = expected_shapes(config)
    problems = [f"missing tensor {k} (expected shape {want[k]})" for k in sorted(want.keys() - flat.keys())]
    problems += [f"unexpected tensor {k} with shape {tuple(np.shape(flat[k]))}"
                 for k in sorted(flat.keys() - want.keys())]
    problems += [f"tensor {k} has shape {tuple(np.shape(flat[k]))}, expected {want[k]}"
                 for k in sorted(want.keys() & flat.keys()) if tuple(np.shape(flat[k])) != want[k]]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{source}: checkpoint does not match the model config:\n  {shown}")
    return unflatten({k: np.asarray(v, dtype=np.float32) for k, v in flat.items()})


def check_tensor_shapes(tensors: Mapping[str, Any], want: Mapping[str, tuple], source) -> None:
    """One `CheckpointError` naming every missing, unexpected or misshapen tensor, in the names and orientation
    of the checkpoint's own files (what the user can look up)."""
    problems = [f"missing tensor {n} (expected shape {want[n]})" for n in sorted(want.keys() - tensors.keys())]
    problems += [f"unexpected tensor {n} with shape {tuple(tensors[n].shape)}"
                 for n in sorted(tensors.keys() - want.keys())]
    problems += [f"tensor {n} has shape {tuple(tensors[n].shape)}, expected {want[n]}"
                 for n in sorted(want.keys() & tensors.keys()) if tuple(tensors[n].shape) != want[n]]
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(f"{source}: weights do not match config.json:\n  " + "\n  ".join(problems[:20]) + more)
