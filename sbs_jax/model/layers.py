"""Building blocks every model family shares, in flax linen: RMS norm, dense, embedding, MLP, masks.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and key activations are
constrained with `nn.with_logical_constraint`; mesh axes are named only in `sbs_jax.partitioning`.
Parameters are float32; computation runs in the module's `dtype`; softmax, norms and logits in float32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Large negative used for masked attention scores (T5X uses -1e10 as well); finite so that fully masked
# (padding) query rows give a uniform softmax instead of NaN.
NEG_INF = -1e10

# Activation names as HF spells them (`feed_forward_proj`, `hidden_act`, `hidden_activation`).
ACTIVATION_FNS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu": exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # HF "gelu_new": tanh approximation
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # the same tanh form (Gemma)
    "silu": jax.nn.silu,
}


def fan_in_init(scale: float = 1.0):
    """Normal init with std = scale / sqrt(fan_in) for [in, out] kernels (HF T5 `_init_weights`)."""
    return nn.initializers.variance_scaling(scale * scale, "fan_in", "normal")


class RMSNorm(nn.Module):
    """Scale-only layer norm over the last axis, variance in float32.

    plus_one=False (T5, Llama, Qwen2): normalise in float32, cast to `dtype`, multiply by the scale (init 1).
    plus_one=True (Gemma): multiply by `1 + scale` (init 0) in float32, then cast.
    """

    epsilon: float
    dtype: jnp.dtype
    plus_one: bool = False
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale = self.param("scale", nn.with_logical_partitioning(init, (self.axis_name,)), (x.shape[-1],),
                           jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        if self.plus_one:
            return (normed * (1.0 + scale)).astype(self.dtype)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


class Dense(nn.Module):
    """Projection of the last axis; kernel is [in, out] with logical names `axes`, optional bias [out]."""

    features: int
    axes: Sequence[str]
    dtype: jnp.dtype
    kernel_init: nn.initializers.Initializer = fan_in_init()
    out_dtype: Optional[jnp.dtype] = None  # e.g. float32 logits from bf16 operands
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.axes)),
                            (x.shape[-1], self.features), jnp.float32)
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype),
                       preferred_element_type=self.out_dtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[-1],)),
                              (self.features,), jnp.float32)
            y = y + bias.astype(y.dtype)
        return y


class Embed(nn.Module):
    """Token embedding [vocab, embed]; `attend` gives the tied output projection."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype
    init_std: float = 1.0  # T5's; decoder-only families use their initializer_range

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("vocab", "embed")),
            (self.num_embeddings, self.features), jnp.float32)

    def __call__(self, tokens):  # [batch, length] -> [batch, length, embed]
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x):  # [batch, length, embed] -> [batch, length, vocab] float32
        return jnp.einsum("ble,ve->blv", x.astype(self.dtype), self.embedding.astype(self.dtype),
                          preferred_element_type=jnp.float32)


class MlpBlock(nn.Module):
    """FFN `wo(act(wi x))`, or gated `wo(act(wi_0 x) * wi_1 x)` (T5 v1.1, Llama/Qwen2 SwiGLU, Gemma GeGLU);
    dropout after the product. Names are T5X's: a Llama `gate_proj` is `wi_0`, `up_proj` `wi_1`, `down_proj`
    `wo`."""

    d_ff: int
    activation: str
    gated: bool
    dtype: jnp.dtype
    dropout_rate: float = 0.0
    deterministic: bool = True
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = fan_in_init()

    @nn.compact
    def __call__(self, x):  # [batch, length, embed]
        act = ACTIVATION_FNS[self.activation]

        def dense(features, axes, name):
            return Dense(features, axes, self.dtype, kernel_init=self.kernel_init, use_bias=self.use_bias, name=name)

        if self.gated:
            hidden = act(dense(self.d_ff, ("embed", "mlp"), "wi_0")(x))
            hidden = hidden * dense(self.d_ff, ("embed", "mlp"), "wi_1")(x)
        else:
            hidden = act(dense(self.d_ff, ("embed", "mlp"), "wi")(x))
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))  # [batch, length, mlp]
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=self.deterministic)
        out = dense(x.shape[-1], ("mlp", "embed"), "wo")(hidden)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


def attention_mask(query_valid, key_valid, query_segments=None, key_segments=None, causal: bool = False):
    """Boolean mask [b, 1, q, k]: both positions real, same segment (packing), key not after query (causal)."""
    mask = query_valid[:, :, None] & key_valid[:, None, :]
    if query_segments is not None:
        mask = mask & (query_segments[:, :, None] == key_segments[:, None, :])
    if causal:
        q, k = query_valid.shape[1], key_valid.shape[1]
        mask = mask & (jnp.arange(q)[:, None] >= jnp.arange(k)[None, :])[None]
    return mask[:, None]


def default_positions(tokens, positions: Optional[jnp.ndarray]):
    """Given positions, or 0..L-1 shared by the batch ([1, L]) for unpacked inputs."""
    if positions is not None:
        return positions
    return jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
