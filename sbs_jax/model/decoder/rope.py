"""Rotary position embeddings as transformers computes them (`modeling_rope_utils.py`): inverse frequencies in
float32 on the host (they depend on the config only), angles `position * inv_freq` in float32, halves rotated
(`rotate_half`), cos/sin cast to the activation dtype."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from sbs_jax.model.decoder.config import DecoderConfig


def inverse_frequencies(config: DecoderConfig, *, local: bool = False) -> np.ndarray:
    """[head_dim // 2] float32. `local=True`: Gemma 3's sliding layers (base `rope_local_theta`, unscaled)."""
    dim = config.head_dim
    base = config.rope_local_theta if local else config.rope_theta
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(base), exponent)).astype(np.float32)
    if local or config.rope_type == "default":
        return inv_freq
    factor = np.float32(config.rope_factor)
    if config.rope_type == "linear":
        return (inv_freq / factor).astype(np.float32)
    # llama3 (`_compute_llama3_parameters`): long wavelengths divided by `factor`, short ones kept, the band
    # between interpolated smoothly.
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    old_context = config.rope_original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = (np.float32(2 * math.pi) / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = ((np.float32(old_context) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions, inv_freq: np.ndarray):
    """positions [b, q] int -> (cos, sin) [b, q, head_dim] float32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """x [b, q, heads, head_dim]; cos/sin [b, q, head_dim] -> x rotated, in x's dtype."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
