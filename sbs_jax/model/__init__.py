"""Student models: one subpackage per family (`t5/`) over shared layers, layer stacks and losses.

The package face keeps the T5 names every caller uses; family-specific code is imported from its subpackage.
"""
from sbs_jax.model.scan import scan_params, unscan_params
from sbs_jax.model.t5 import PRESETS, T5Config, Transformer, get_config, init_decode_cache

__all__ = ["PRESETS", "T5Config", "Transformer", "get_config", "init_decode_cache", "scan_params",
           "unscan_params"]
