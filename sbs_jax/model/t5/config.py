"""`T5Config`: the one typed description of a T5 student, its HF config.json mapping and size presets."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from sbs_jax.model.runtime import DTYPES as _DTYPES
from sbs_jax.model.runtime import REMAT_POLICIES as _REMAT_POLICIES

# Activation names as HF spells them in `feed_forward_proj` ("relu", "gated-gelu", ...). HF maps the legacy
# "gated-gelu" to the tanh approximation (`gelu_new`), which is what T5 v1.1 was trained with.
_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder-decoder (HF field names where HF has one).

    `tie_word_embeddings=True` means the T5 v1.0 output layer: logits = (h * d_model**-0.5) @ embedding.T.
    `False` means the v1.1 layout: a separate, unscaled `decoder/logits_dense` kernel.
    `dtype` is the compute dtype; parameters are always float32.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: Optional[int] = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    dtype: str = "bfloat16"
    scan_layers: bool = False
    remat_policy: str = "none"
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}")
        if self.num_decoder_layers is not None and self.num_decoder_layers <= 0:
            raise ValueError(f"T5Config.num_decoder_layers must be positive or None, got {self.num_decoder_layers}")
        if self.relative_attention_num_buckets % 2:
            raise ValueError("T5Config.relative_attention_num_buckets must be even (half per direction), "
                             f"got {self.relative_attention_num_buckets}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or parts[-1] not in _ACTIVATIONS:
            raise ValueError(f"T5Config.feed_forward_proj must be ACT or 'gated-ACT' with ACT in {_ACTIVATIONS}, "
                             f"got {self.feed_forward_proj!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"T5Config.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.remat_policy not in _REMAT_POLICIES:
            raise ValueError(f"T5Config.remat_policy must be one of {_REMAT_POLICIES}, got {self.remat_policy!r}")

    # Derived properties used by the model code.
    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def layer_stacks(self) -> dict[str, int]:
        """Layer stack name -> number of layers (what `scan_params` / `unscan_params` convert)."""
        return {"encoder": self.num_layers, "decoder": self.decoder_layers}

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """The FFN activation, resolved as HF does ("gated-gelu" -> "gelu_new")."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def joined_kv(self) -> int:
        return self.num_heads * self.d_kv

    def replace(self, **overrides) -> "T5Config":
        return dataclasses.replace(self, **overrides)

    # HF config.json round trip.
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> "T5Config":
        """Build from a HF `config.json` dict; `overrides` set non-HF fields (dtype, scan_layers, ...).

        Tied-and-scaled (v1.0) vs untied-and-unscaled (v1.1): transformers 5.x always writes
        `"tie_word_embeddings": true` and records the real choice in `scale_decoder_outputs`, so that key wins
        when present; older configs (and the public hub ones) only carry `tie_word_embeddings`, default True.
        A transformers-5 v1.1 checkpoint may then lack `lm_head.weight` (tied to `shared`); filling
        `decoder/logits_dense` from the embedding in that case is the weight loader's job.
        """
        required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"HF T5 config is missing required keys {missing}")
        if "scale_decoder_outputs" in d:
            tied = bool(d["scale_decoder_outputs"])
        else:
            tied = bool(d.get("tie_word_embeddings", True))
        fields = dict(
            vocab_size=int(d["vocab_size"]), d_model=int(d["d_model"]), d_kv=int(d["d_kv"]), d_ff=int(d["d_ff"]),
            num_layers=int(d["num_layers"]),
            num_decoder_layers=None if d.get("num_decoder_layers") in (None, d["num_layers"])
            else int(d["num_decoder_layers"]),
            num_heads=int(d["num_heads"]),
            relative_attention_num_buckets=int(d.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(d.get("relative_attention_max_distance", 128)),
            dropout_rate=float(d.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-6)),
            feed_forward_proj=str(d.get("feed_forward_proj", "relu")),
            tie_word_embeddings=tied,
            pad_id=int(d.get("pad_token_id", 0) if d.get("pad_token_id") is not None else 0),
            eos_id=int(d.get("eos_token_id", 1) if d.get("eos_token_id") is not None else 1),
            decoder_start_token_id=int(d.get("decoder_start_token_id", 0)
                                       if d.get("decoder_start_token_id") is not None else 0),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict:
        """The HF `config.json` dict; writes both tie keys so transformers 4.x and 5.x read the same model."""
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "is_encoder_decoder": True,
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.decoder_layers,
            "num_heads": self.num_heads,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "dropout_rate": self.dropout_rate,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_factor": 1.0,
            "feed_forward_proj": self.feed_forward_proj,
            "tie_word_embeddings": self.tie_word_embeddings,
            "scale_decoder_outputs": self.tie_word_embeddings,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_id,
            "decoder_start_token_id": self.decoder_start_token_id,
            "use_cache": True,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Public sizes: (d_model, d_ff, num_layers, num_heads, d_kv). v1.0 from the T5 paper / google-t5 configs,
# v1.1 from the google/t5-v1_1-* configs.
_T5_1_0 = {
    "tiny": (64, 128, 2, 4, 16),
    "small": (512, 2048, 6, 8, 64),
    "base": (768, 3072, 12, 12, 64),
    "large": (1024, 4096, 24, 16, 64),
    "xl": (1024, 16384, 24, 32, 128),
    "xxl": (1024, 65536, 24, 128, 128),
}
_T5_1_1 = {
    "tiny": (64, 128, 2, 4, 16),
    "small": (512, 1024, 8, 6, 64),
    "base": (768, 2048, 12, 12, 64),
    "large": (1024, 2816, 24, 16, 64),
    "xl": (2048, 5120, 24, 32, 64),
    "xxl": (4096, 10240, 24, 64, 64),
}
PRESETS = tuple(f"t5_1_0_{s}" for s in _T5_1_0) + tuple(f"t5_1_1_{s}" for s in _T5_1_1)


def get_config(name: str, **overrides) -> T5Config:
    """A preset (`t5_1_0_small`, `t5_1_1_base`, ...) with field overrides, e.g. `dtype="float32"`."""
    if name.startswith("t5_1_0_") and name[7:] in _T5_1_0:
        d_model, d_ff, layers, heads, d_kv = _T5_1_0[name[7:]]
        family = dict(feed_forward_proj="relu", tie_word_embeddings=True)
    elif name.startswith("t5_1_1_") and name[7:] in _T5_1_1:
        d_model, d_ff, layers, heads, d_kv = _T5_1_1[name[7:]]
        family = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    else:
        raise ValueError(f"unknown T5 preset {name!r}; expected one of {PRESETS}")
    fields = dict(d_model=d_model, d_ff=d_ff, num_layers=layers, num_heads=heads, d_kv=d_kv, **family)
    fields.update(overrides)
    return T5Config(**fields)


def preset_name(config: T5Config) -> str | None:
    """The size preset `config` has the architecture of (vocab size and runtime fields aside), else None."""
    sizes = ("d_model", "d_ff", "num_layers", "num_heads", "d_kv", "feed_forward_proj", "tie_word_embeddings")
    for name in PRESETS:
        preset = get_config(name)
        if all(getattr(preset, f) == getattr(config, f) for f in sizes) and \
                config.num_decoder_layers in (None, config.num_layers):
            return name
    return None
