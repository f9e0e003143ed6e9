"""Decoder-only students (Llama 2/3/3.1/3.2, Qwen2/2.5, Gemma 1/2/3): one flax module, the families as config."""
from sbs_jax.model.decoder.config import MODEL_TYPES, DecoderConfig
from sbs_jax.model.decoder.model import DecoderLM, init_decode_cache, positions_from_mask

__all__ = ["MODEL_TYPES", "DecoderConfig", "DecoderLM", "init_decode_cache", "positions_from_mask"]
