"""HuggingFace `transformers` directories <-> our parameter tree: T5 here, decoder-only families
(`model_type` llama, qwen2, gemma, gemma2, gemma3_text) in `hf_decoder.py`, chosen by config.json's model_type.

An HF T5 directory holds `config.json` and the weights as `model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` (torch is imported only for that last form).
torch Linear weights are `[out, in]`; our kernels are `[in, out]`, so every matrix but the embedding is
transposed; the relative-position table is `[buckets, heads]` in HF and `[heads, buckets]` here.
"""
import dataclasses
import io
import json

import numpy as np
from etils import epath

from sbs_jax import paths
from sbs_jax.checkpoints.errors import CheckpointError
from sbs_jax.checkpoints.layout import (check_params, check_tensor_shapes, expected_shapes, flatten, is_gated,
                                        num_decoder_layers)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX)
_REQUIRED_INT_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
# Old HF checkpoints carry a never-used cross-attention bias; HF itself ignores it on load.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _stack_names(config, stack: str) -> dict[str, str]:
    """HF name -> our path for one stack (`encoder` | `decoder`)."""
    if stack == "encoder":
        n_layers = config.num_layers
        sublayers = [("layer.0", "SelfAttention", "attention", "pre_attention_layer_norm"),
                     ("layer.1", None, None, "pre_mlp_layer_norm")]
    else:
        n_layers = num_decoder_layers(config)
        sublayers = [("layer.0", "SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                     ("layer.1", "EncDecAttention", "encoder_decoder_attention", "pre_cross_attention_layer_norm"),
                     ("layer.2", None, None, "pre_mlp_layer_norm")]
    wis = ("wi_0", "wi_1") if is_gated(config) else ("wi",)
    names = {
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight": f"{stack}/relpos_bias/rel_embedding",
        f"{stack}.final_layer_norm.weight": f"{stack}/{stack}_norm/scale",
    }
    for i in range(n_layers):
        block, layer = f"{stack}.block.{i}", f"{stack}/layers_{i}"
        for hf_sub, hf_att, our_att, our_norm in sublayers:
            names[f"{block}.{hf_sub}.layer_norm.weight"] = f"{layer}/{our_norm}/scale"
            if hf_att is None:
                for w in wis + ("wo",):
                    names[f"{block}.{hf_sub}.DenseReluDense.{w}.weight"] = f"{layer}/mlp/{w}/kernel"
            else:
                for hf_proj, our_proj in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
                    names[f"{block}.{hf_sub}.{hf_att}.{hf_proj}.weight"] = f"{layer}/{our_att}/{our_proj}/kernel"
    return names


def hf_name_map(config) -> dict[str, str]:
    """HF tensor name -> our flat path, for every tensor of `config` (`lm_head.weight` only when untied)."""
    names = {"shared.weight": "token_embedder/embedding"}
    names.update(_stack_names(config, "encoder"))
    names.update(_stack_names(config, "decoder"))
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "decoder/logits_dense/kernel"
    return names


# ----------------------------------------------------------------------------------------------- config.json
def read_hf_config_dict(directory: epath.Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; an HF T5 checkpoint directory needs one")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(d).__name__}")
    model_type = d.get("model_type", "t5")
    if model_type in decoder_model_types():
        return d
    if model_type not in ("t5", "mt5"):
        raise CheckpointError(f"{path}: model_type is {model_type!r}; supported: 't5', 'mt5', "
                              + ", ".join(repr(t) for t in decoder_model_types()))
    for field in _REQUIRED_INT_FIELDS:
        value = d.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            found = "missing" if field not in d else repr(value)
            raise CheckpointError(f"{path}: field {field!r} must be a positive integer, found {found}")
    return d


def decoder_model_types() -> tuple:
    from sbs_jax.model.decoder.config import MODEL_TYPES

    return MODEL_TYPES


def is_decoder_only(config) -> bool:
    """A `DecoderConfig` (Llama, Qwen2, Gemma) rather than a `T5Config`."""
    return hasattr(config, "model_type")


def config_from_hf_dict(d: dict, source):
    from sbs_jax.model.t5.config import T5Config

    try:
        return T5Config.from_hf_dict(d)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: unsupported T5 config: {e}") from e


# ----------------------------------------------------------------------------------------------- tensors
def _read_safetensors(path: epath.Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError

    try:
        return paths.load_safetensors(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e


def _read_torch(path: epath.Path) -> dict[str, np.ndarray]:
    import torch

    try:
        source = str(path) if paths.is_local(path) else io.BytesIO(path.read_bytes())
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (pickle, zip, runtime) for a corrupt file
        raise CheckpointError(f"{path}: not a readable pytorch_model.bin: {e}") from e
    return {k: v.detach().float().numpy() for k, v in state.items()}


def _read_sharded(directory: epath.Path, index_name: str, reader) -> dict[str, np.ndarray]:
    index_path = directory / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: expected a JSON object with a 'weight_map': {e}") from e
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
            raise CheckpointError(f"{index_path}: shard {shard} listed in weight_map is missing")
        tensors.update(reader(directory / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{index_path}: tensors listed in weight_map are in no shard: {missing[:5]}")
    return tensors


def read_hf_tensors(directory: epath.Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory, preferring safetensors as transformers does."""
    if (directory / SAFETENSORS_FILE).is_file():
        return _read_safetensors(directory / SAFETENSORS_FILE)
    if (directory / SAFETENSORS_INDEX).is_file():
        return _read_sharded(directory, SAFETENSORS_INDEX, _read_safetensors)
    if (directory / TORCH_FILE).is_file():
        return _read_torch(directory / TORCH_FILE)
    if (directory / TORCH_INDEX).is_file():
        return _read_sharded(directory, TORCH_INDEX, _read_torch)
    raise CheckpointError(f"{directory}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")


def _resolve_output_layer(tensors: dict, d: dict, config, source):
    """Decide tied vs untied from the weights, not only from config.json.

    transformers 5.x writes `tie_word_embeddings: true` for every T5 and keeps the v1.1 behaviour in
    `scale_decoder_outputs: false`, unties only when `lm_head.weight` differs from `shared.weight`, and may
    save a model whose head is the embedding but unscaled. All four combinations map exactly onto ours:
    tied+scaled is v1.0; anything else becomes an untied `logits_dense` with the scale folded in.
    """
    shared = tensors["shared.weight"]
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if alias in tensors:
            if not np.array_equal(tensors.pop(alias), shared):
                raise CheckpointError(f"{source}: {alias} differs from shared.weight; T5 ties input embeddings")
    lm_head = tensors.pop("lm_head.weight", None)
    scaled = bool(d.get("scale_decoder_outputs", d.get("tie_word_embeddings", True)))
    head_is_embedding = lm_head is None or (lm_head.shape == shared.shape and np.array_equal(lm_head, shared))
    if head_is_embedding and scaled:
        return dataclasses.replace(config, tie_word_embeddings=True), None
    head = shared if lm_head is None else lm_head
    if scaled:
        head = head * np.float32(config.d_model ** -0.5)
    return dataclasses.replace(config, tie_word_embeddings=False), head


def hf_tensors_to_params(tensors: dict, d: dict, config, source):
    """HF-named tensors (+ the config.json dict) -> (config, nested params)."""
    tensors = dict(tensors)
    if "shared.weight" not in tensors:
        raise CheckpointError(f"{source}: missing tensor shared.weight (expected shape "
                              f"{(config.vocab_size, config.d_model)})")
    config, head = _resolve_output_layer(tensors, d, config, source)
    if head is not None:
        tensors["lm_head.weight"] = head
    for name in _IGNORED:
        tensors.pop(name, None)
    names = hf_name_map(config)
    ours_shapes = expected_shapes(config)
    # Checked in HF names and orientation, so the message names what the user's files contain.
    want = {n: ours_shapes[p] if p == "token_embedder/embedding" else ours_shapes[p][::-1] for n, p in names.items()}
    check_tensor_shapes(tensors, want, source)
    flat = {}
    for hf_name, ours in names.items():
        value = np.asarray(tensors[hf_name], dtype=np.float32)
        flat[ours] = value if ours == "token_embedder/embedding" else value.T
    return config, check_params(flat, config, str(source))


def load_hf(path) -> tuple:
    """An HF directory -> (config, params): (T5Config, ...) for a T5, (DecoderConfig, ...) for Llama / Qwen2 /
    Gemma (`DecoderConfig.model_type` says which), in float32 compute."""
    directory = epath.Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory; an HF checkpoint is a folder with {CONFIG_FILE}")
    d = read_hf_config_dict(directory)
    if d.get("model_type", "t5") in decoder_model_types():
        from sbs_jax.checkpoints import hf_decoder

        config = hf_decoder.config_from_hf_dict(d, directory / CONFIG_FILE)
        return config, hf_decoder.hf_tensors_to_params(read_hf_tensors(directory), config, directory)
    config = config_from_hf_dict(d, directory / CONFIG_FILE)
    return hf_tensors_to_params(read_hf_tensors(directory), d, config, directory)


# ----------------------------------------------------------------------------------------------- export
def params_to_hf_tensors(config, params, dtype=np.float32) -> dict[str, np.ndarray]:
    flat = flatten(params)
    check_params(flat, config, "params")
    out = {}
    for hf_name, ours in hf_name_map(config).items():
        value = np.asarray(flat[ours], dtype=np.float32)
        value = value if ours == "token_embedder/embedding" else value.T
        out[hf_name] = np.ascontiguousarray(value).astype(dtype)
    return out


def hf_config_dict(config, dtype: str) -> dict:
    d = dict(config.to_hf_dict())
    d.update({
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        # Standard HF semantics (also what google/t5-v1_1-* ship); transformers 5.x derives the output scaling
        # from it and unties lm_head because the saved lm_head.weight differs from shared.weight.
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "torch_dtype": dtype,
    })
    return d


def save_hf(path, config, params, *, dtype: str = "float32", spiece_model=None) -> epath.Path:
    """Write an HF directory that `T5ForConditionalGeneration.from_pretrained` (v1.0 and v1.1) or, for a
    `DecoderConfig`, `AutoModelForCausalLM.from_pretrained` loads."""
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}.get(dtype)
    if np_dtype is None:
        raise CheckpointError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    directory = epath.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    if is_decoder_only(config):
        if spiece_model is not None:
            raise CheckpointError(f"{config.model_type} checkpoints use a tokenizer.json, not a SentencePiece "
                                  "spiece.model; copy the tokenizer files next to the weights instead")
        from sbs_jax.checkpoints.hf_decoder import save_hf_decoder

        return save_hf_decoder(directory, config, params, np_dtype, dtype)
    tensors = params_to_hf_tensors(config, params, np_dtype)
    paths.save_safetensors(tensors, directory / SAFETENSORS_FILE, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config_dict(config, dtype), indent=2, sort_keys=True) + "\n")
    generation = {"decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_id,
                  "pad_token_id": config.pad_id}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if spiece_model is not None:
        source = epath.Path(spiece_model)
        if not source.is_file():
            raise CheckpointError(f"{source}: SentencePiece model not found")
        source.copy(directory / "spiece.model", overwrite=True)
        (directory / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "T5Tokenizer", "model_max_length": 512}, indent=2) + "\n")
    return directory
