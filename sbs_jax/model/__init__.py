"""T5 student model: config, flax modules, scan/unscan converters, losses."""
from sbs_jax.model.config import PRESETS, T5Config, get_config
from sbs_jax.model.scan import scan_params, unscan_params
from sbs_jax.model.t5 import Transformer, init_decode_cache

__all__ = ["PRESETS", "T5Config", "Transformer", "get_config", "init_decode_cache", "scan_params",
           "unscan_params"]
