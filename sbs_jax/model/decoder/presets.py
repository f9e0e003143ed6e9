"""Decoder-only size presets: the public config.json values of the real checkpoints, and tiny CPU variants.

A preset is a `config.json`-style dict read through `DecoderConfig.from_hf_dict`, so presets and imported
checkpoints go through one reader.
"""
from __future__ import annotations

from sbs_jax.model.decoder.config import DecoderConfig

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
_LLAMA3 = dict(model_type="llama", vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
               rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072, tie_word_embeddings=True,
               bos_token_id=128000, eos_token_id=128001, hidden_act="silu")
_QWEN25 = dict(model_type="qwen2", vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
               max_position_embeddings=32768, tie_word_embeddings=True, use_sliding_window=False,
               bos_token_id=151643, eos_token_id=151643, hidden_act="silu")
_GEMMA2 = dict(model_type="gemma2", vocab_size=256000, rms_norm_eps=1e-6, rope_theta=10000.0,
               max_position_embeddings=8192, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
               final_logit_softcapping=30.0, sliding_window=4096, hidden_activation="gelu_pytorch_tanh",
               bos_token_id=2, eos_token_id=1, pad_token_id=0)
_GEMMA3 = dict(model_type="gemma3_text", vocab_size=262144, rms_norm_eps=1e-6, rope_theta=1000000.0,
               rope_local_base_freq=10000.0, max_position_embeddings=32768, query_pre_attn_scalar=256,
               sliding_window=512, sliding_window_pattern=6, hidden_activation="gelu_pytorch_tanh",
               bos_token_id=2, eos_token_id=1, pad_token_id=0)


def _size(hidden, intermediate, layers, heads, kv_heads, head_dim):
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim)


_TINY = dict(vocab_size=256, max_position_embeddings=512)
PRESETS = {
    "llama3_2_1b": {**_LLAMA3, **_size(2048, 8192, 16, 32, 8, 64)},
    "llama3_2_3b": {**_LLAMA3, **_size(3072, 8192, 28, 24, 8, 128)},
    "qwen2_5_0_5b": {**_QWEN25, **_size(896, 4864, 24, 14, 2, 64)},
    "qwen2_5_1_5b": {**_QWEN25, **_size(1536, 8960, 28, 12, 2, 128)},
    "gemma2_2b": {**_GEMMA2, **_size(2304, 9216, 26, 8, 4, 256)},
    "gemma3_1b": {**_GEMMA3, **_size(1152, 6912, 26, 4, 1, 256)},
    # Tiny CPU variants: each family's switches at test sizes.
    "llama_tiny": {**_LLAMA3, **_TINY, **_size(64, 128, 2, 4, 2, 16), "bos_token_id": 1, "eos_token_id": 2},
    "qwen2_tiny": {**_QWEN25, **_TINY, **_size(64, 128, 2, 4, 2, 16), "bos_token_id": 1, "eos_token_id": 2},
    "gemma2_tiny": {**_GEMMA2, **_TINY, **_size(64, 128, 2, 4, 2, 16), "query_pre_attn_scalar": 16,
                    "sliding_window": 32},
    "gemma3_tiny": {**_GEMMA3, **_TINY, **_size(64, 128, 6, 4, 2, 16), "query_pre_attn_scalar": 16,
                    "sliding_window": 32},
}


def get_config(name: str, **overrides) -> DecoderConfig:
    """A preset (`llama3_2_1b`, `qwen2_5_0_5b`, `gemma2_2b`, `llama_tiny`, ...) with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown decoder preset {name!r}; expected one of {tuple(PRESETS)}")
    return DecoderConfig.from_hf_dict(PRESETS[name], **overrides)
