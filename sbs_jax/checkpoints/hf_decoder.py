"""HuggingFace decoder-only directories (Llama, Qwen2, Gemma 1/2/3) <-> our parameter tree.

One name table per config, used in both directions: `model.layers.{i}.self_attn.q_proj.weight` <->
`decoder/layers_{i}/self_attn/q_proj/kernel` (torch Linear weights are [out, in], our kernels [in, out], so
every matrix but the embedding is transposed; vectors are copied as they are). The config comes from the
directory's config.json (`DecoderConfig.from_hf_dict`), never from a transformers class default.
"""
import json

import numpy as np
from etils import epath

from sbs_jax import paths
from sbs_jax.checkpoints.errors import CheckpointError
from sbs_jax.checkpoints.layout import check_params, check_tensor_shapes, decoder_only_shapes, flatten

_EMBED = "embed_tokens/embedding"
_LAYER_NAMES = {  # HF name inside model.layers.{i} -> our path inside decoder/layers_{i}
    "input_layernorm.weight": "input_layernorm/scale",
    "post_attention_layernorm.weight": "post_attention_layernorm/scale",
    "pre_feedforward_layernorm.weight": "pre_feedforward_layernorm/scale",
    "post_feedforward_layernorm.weight": "post_feedforward_layernorm/scale",
    "self_attn.q_norm.weight": "self_attn/q_norm/scale",
    "self_attn.k_norm.weight": "self_attn/k_norm/scale",
    "mlp.gate_proj.weight": "mlp/wi_0/kernel", "mlp.up_proj.weight": "mlp/wi_1/kernel",
    "mlp.down_proj.weight": "mlp/wo/kernel",
    "mlp.gate_proj.bias": "mlp/wi_0/bias", "mlp.up_proj.bias": "mlp/wi_1/bias", "mlp.down_proj.bias": "mlp/wo/bias",
}
for _proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
    _LAYER_NAMES[f"self_attn.{_proj}.weight"] = f"self_attn/{_proj}/kernel"
    _LAYER_NAMES[f"self_attn.{_proj}.bias"] = f"self_attn/{_proj}/bias"


def hf_name_map(config) -> dict[str, str]:
    """HF tensor name -> our flat path, for exactly the tensors `config` has (`lm_head.weight` only untied)."""
    ours = decoder_only_shapes(config)
    names = {"model.embed_tokens.weight": _EMBED, "model.norm.weight": "decoder/norm/scale"}
    for i in range(config.num_hidden_layers):
        for hf, path in _LAYER_NAMES.items():
            if f"decoder/layers_{i}/{path}" in ours:
                names[f"model.layers.{i}.{hf}"] = f"decoder/layers_{i}/{path}"
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "lm_head/kernel"
    assert sorted(names.values()) == sorted(ours), "name table and layout disagree"
    return names


def _transposed(path: str) -> bool:
    return path.endswith("/kernel")


def config_from_hf_dict(d: dict, source):
    from sbs_jax.model.decoder import DecoderConfig

    try:
        return DecoderConfig.from_hf_dict(d, dtype="float32")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: unsupported {d.get('model_type')} config: {e}") from e


def hf_tensors_to_params(tensors: dict, config, source):
    """HF-named tensors -> our nested float32 params; every problem with any tensor is listed in one error."""
    tensors = dict(tensors)
    head = tensors.get("lm_head.weight")
    embedding = tensors.get("model.embed_tokens.weight")
    if config.tie_word_embeddings and head is not None:
        # A tied checkpoint may still store the head; it must be the embedding, which is what transformers uses.
        if embedding is None or head.shape != embedding.shape or not np.array_equal(head, embedding):
            raise CheckpointError(f"{source}: config.json ties word embeddings but lm_head.weight differs from "
                                  "model.embed_tokens.weight")
        del tensors["lm_head.weight"]
    names = hf_name_map(config)
    ours_shapes = decoder_only_shapes(config)
    want = {n: ours_shapes[p][::-1] if _transposed(p) else ours_shapes[p] for n, p in names.items()}
    check_tensor_shapes(tensors, want, source)
    flat = {}
    for hf_name, path in names.items():
        value = np.asarray(tensors[hf_name], dtype=np.float32)
        flat[path] = value.T if _transposed(path) else value
    return check_params(flat, config, str(source))


def params_to_hf_tensors(config, params, dtype=np.float32) -> dict[str, np.ndarray]:
    flat = flatten(params)
    check_params(flat, config, "params")
    out = {}
    for hf_name, path in hf_name_map(config).items():
        value = np.asarray(flat[path], dtype=np.float32)
        value = value.T if _transposed(path) else value
        out[hf_name] = np.ascontiguousarray(value).astype(dtype)
    return out


def save_hf_decoder(directory: epath.Path, config, params, np_dtype, dtype_name: str) -> epath.Path:
    """Write config.json, generation_config.json and model.safetensors for `AutoModelForCausalLM`."""
    tensors = params_to_hf_tensors(config, params, np_dtype)
    paths.save_safetensors(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    d = dict(config.to_hf_dict(), torch_dtype=dtype_name)
    (directory / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    generation = {"bos_token_id": config.bos_id, "pad_token_id": config.pad_id,
                  "eos_token_id": list(config.eos_ids) if len(config.eos_ids) > 1 else config.eos_ids[0]}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return directory
