"""The T5 encoder-decoder family (v1.0 and v1.1): config and presets, flax modules, KV-cache decoding."""
from sbs_jax.model.t5.config import PRESETS, T5Config, get_config, preset_name
from sbs_jax.model.t5.model import Transformer, init_decode_cache

__all__ = ["PRESETS", "T5Config", "Transformer", "get_config", "init_decode_cache", "preset_name"]
