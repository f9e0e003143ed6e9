"""Checkpoint import/export: HF transformers T5 directories, T5X checkpoints, and `sbs convert`."""
from sbs_jax.checkpoints.errors import CheckpointError
from sbs_jax.checkpoints.hf import load_hf, save_hf
from sbs_jax.checkpoints.pretrained import detect_format, load_pretrained
from sbs_jax.checkpoints.t5x import load_t5x

__all__ = ["CheckpointError", "detect_format", "load_hf", "load_pretrained", "load_t5x", "save_hf"]
