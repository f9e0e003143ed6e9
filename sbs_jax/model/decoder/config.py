"""`DecoderConfig`: one typed description of a decoder-only student (Llama, Qwen2, Gemma 1/2/3), read from and
written to an HF `config.json`.

Family differences are fields (norm `1 + w`, embedding scale, sandwich norms, q/k norms, soft-caps, sliding
layers, per-layer RoPE bases), derived from `model_type` by `from_hf_dict`; everything numeric comes from the
checkpoint's config.json, never from a config class's defaults (Qwen2Config's own θ is 1e4, its checkpoints'
1e6), and a field the model needs but the file lacks is an error naming it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

from sbs_jax.model.runtime import DTYPES, REMAT_POLICIES

MODEL_TYPES = ("llama", "qwen2", "gemma", "gemma2", "gemma3_text")
ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM",
                  "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
_GEMMA = ("gemma", "gemma2", "gemma3_text")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a decoder-only LM (HF field names). `dtype` is the compute dtype; params are float32.

    `layer_types[i]` is "full_attention" or "sliding_attention" (a key is visible to a sliding layer's query
    when `key_slot > query_slot - sliding_window`). RoPE: `rope_type` "default", "linear" (positions / factor)
    or "llama3" (Llama 3.1/3.2 frequency scaling); Gemma 3's sliding layers use `rope_local_theta` unscaled.
    """

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 16
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    rope_local_theta: Optional[float] = None
    attention_bias: bool = False       # bias on q, k, v
    attention_out_bias: bool = False   # bias on o (Llama's `attention_bias` sets both; Qwen2 has q/k/v only)
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    query_pre_attn_scalar: Optional[float] = None  # attention scale query_pre_attn_scalar**-0.5 (Gemma 2/3)
    attn_logit_softcapping: Optional[float] = None
    final_logit_softcapping: Optional[float] = None
    sliding_window: Optional[int] = None
    layer_types: tuple = ()             # () = every layer full attention
    initializer_range: float = 0.02     # std of every kernel's and the embedding's normal init (HF _init_weights)
    pad_id: int = 0
    bos_id: Optional[int] = None
    eos_ids: tuple = ()
    dtype: str = "bfloat16"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"DecoderConfig.model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"DecoderConfig: num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"DecoderConfig.head_dim must be even (RoPE rotates halves), got {self.head_dim}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"DecoderConfig.rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}")
        if self.layer_types:
            if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - set(LAYER_TYPES):
                raise ValueError(f"DecoderConfig.layer_types must list {self.num_hidden_layers} entries from "
                                 f"{LAYER_TYPES}, got {self.layer_types!r}")
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ValueError("DecoderConfig: sliding_attention layers need a positive sliding_window")
        if self.dtype not in DTYPES:
            raise ValueError(f"DecoderConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"DecoderConfig.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if not self.eos_ids:
            raise ValueError("DecoderConfig.eos_ids must name at least one end-of-sequence token id")

    # Family switches used by the model code.
    @property
    def is_gemma(self) -> bool:
        """Gemma's RMSNorm multiplies by (1 + w) and its embeddings are scaled by sqrt(hidden_size)."""
        return self.model_type in _GEMMA

    @property
    def sandwich_norms(self) -> bool:
        """Gemma 2/3: norms after attention and around the MLP (post_attention / pre_ and post_feedforward)."""
        return self.model_type in ("gemma2", "gemma3_text")

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "gemma3_text"

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim) ** -0.5

    @property
    def sliding_layers(self) -> tuple:
        """Per layer: whether it attends through the sliding window."""
        if not self.layer_types:
            return (False,) * self.num_hidden_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def prompt_bos_id(self) -> Optional[int]:
        """The BOS a sequence starts with: Llama 3 `<|begin_of_text|>`, Gemma `<bos>`; Qwen2's tokenizer adds
        none (its config's bos_token_id is never prepended)."""
        return None if self.model_type == "qwen2" else self.bos_id

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def layer_stacks(self) -> dict[str, int]:
        return {"decoder": self.num_hidden_layers}

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    def replace(self, **overrides) -> "DecoderConfig":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # HF config.json round trip.
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> "DecoderConfig":
        """Build from a HF `config.json` dict; `overrides` set non-HF fields (dtype, scan_layers, ...).

        Raises ValueError naming the field for an unknown model_type, a missing required field or an
        unsupported RoPE type.
        """
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported; expected one of {MODEL_TYPES}")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if d.get(k) is None]
        if missing:
            raise ValueError(f"{model_type} config is missing required fields {missing}")
        layers, heads = int(d["num_hidden_layers"]), int(d["num_attention_heads"])
        fields: dict[str, Any] = dict(
            model_type=model_type, vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]), num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", model_type != "llama")),
            initializer_range=float(d.get("initializer_range", 0.02)),
        )
        fields.update(_rope_fields(d, model_type))
        fields.update(_family_fields(d, model_type, layers))
        fields.update(_token_fields(d))
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict:
        """The HF `config.json` dict (hub-style keys, which transformers 4.x and 5.x both read)."""
        d = {
            "architectures": [_ARCHITECTURES[self.model_type]], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings, "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope_theta, "attention_dropout": 0.0, "use_cache": True,
            "initializer_range": self.initializer_range,
            "pad_token_id": self.pad_id, "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_ids[0] if len(self.eos_ids) == 1 else list(self.eos_ids),
        }
        if self.rope_type == "linear":
            d["rope_scaling"] = {"rope_type": "linear", "factor": self.rope_factor}
        elif self.rope_type == "llama3":
            d["rope_scaling"] = {"rope_type": "llama3", "factor": self.rope_factor,
                                 "low_freq_factor": self.rope_low_freq_factor,
                                 "high_freq_factor": self.rope_high_freq_factor,
                                 "original_max_position_embeddings": self.rope_original_max_position_embeddings}
        act_key = "hidden_activation" if self.model_type in ("gemma2", "gemma3_text") else "hidden_act"
        d[act_key] = self.hidden_act
        if self.model_type == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        elif self.model_type == "qwen2":
            d.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window,
                     max_window_layers=self.num_hidden_layers)
        else:
            d.update(attention_bias=self.attention_bias)
        if self.model_type in ("gemma2", "gemma3_text"):
            scalar = self.query_pre_attn_scalar
            d.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
                     sliding_window=self.sliding_window,
                     final_logit_softcapping=self.final_logit_softcapping,
                     attn_logit_softcapping=self.attn_logit_softcapping)
        if self.model_type == "gemma3_text":
            d["rope_local_base_freq"] = self.rope_local_theta
        if self.layer_types:
            d["layer_types"] = list(self.layer_types)
        return d


def _rope_fields(d: Mapping[str, Any], model_type: str) -> dict:
    """RoPE from hub-style `rope_theta` + `rope_scaling`, or transformers-5 `rope_parameters` (flat, or per
    layer type for Gemma 3)."""
    params = d.get("rope_parameters")
    local = None
    if isinstance(params, Mapping) and "full_attention" in params:
        local = (params.get("sliding_attention") or {}).get("rope_theta")
        params = params["full_attention"]
    if isinstance(params, Mapping) and params:
        theta, scaling = params.get("rope_theta", d.get("rope_theta")), params
    else:
        theta, scaling = d.get("rope_theta"), d.get("rope_scaling") or {}
    if theta is None:
        raise ValueError(f"{model_type} config has no rope_theta (nor rope_parameters.rope_theta); the "
                         "checkpoint's value is needed, class defaults differ from checkpoints")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported; expected one of {ROPE_TYPES}")
    out: dict[str, Any] = dict(rope_theta=float(theta), rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        if scaling.get("factor") is None:
            raise ValueError(f"rope_scaling of type {rope_type!r} needs a 'factor'")
        out["rope_factor"] = float(scaling["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if scaling.get(key) is None:
                raise ValueError(f"rope_scaling of type 'llama3' needs {key!r}")
        out.update(rope_low_freq_factor=float(scaling["low_freq_factor"]),
                   rope_high_freq_factor=float(scaling["high_freq_factor"]),
                   rope_original_max_position_embeddings=int(
                       scaling.get("original_max_position_embeddings") or d.get("max_position_embeddings")))
    if model_type == "gemma3_text":
        local = local if local is not None else d.get("rope_local_base_freq")
        if local is None:
            raise ValueError("gemma3_text config has no rope_local_base_freq (the sliding layers' RoPE base)")
        out["rope_local_theta"] = float(local)
    return out


def _family_fields(d: Mapping[str, Any], model_type: str, layers: int) -> dict:
    if model_type in ("gemma2", "gemma3_text"):
        act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    else:
        act = d.get("hidden_act") or ("gelu_pytorch_tanh" if model_type == "gemma" else "silu")
    if model_type == "gemma" and act == "gelu":
        act = "gelu_pytorch_tanh"  # transformers maps Gemma's legacy "gelu" to the tanh form it was trained with
    out: dict[str, Any] = dict(hidden_act=act)
    if model_type == "llama":
        bias = bool(d.get("attention_bias", False))
        out.update(attention_bias=bias, attention_out_bias=bias, mlp_bias=bool(d.get("mlp_bias", False)))
    elif model_type == "qwen2":
        out.update(attention_bias=True)
    else:
        bias = bool(d.get("attention_bias", False))
        out.update(attention_bias=bias, attention_out_bias=bias)
    window = d.get("sliding_window")
    layer_types = d.get("layer_types")
    if model_type == "qwen2":
        window = window if d.get("use_sliding_window") else None
        if layer_types is None:
            first = int(d.get("max_window_layers", layers))
            layer_types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                           for i in range(layers)]
    elif model_type == "gemma2":
        layer_types = layer_types or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
    elif model_type == "gemma3_text":
        pattern = int(d.get("sliding_window_pattern", 6))
        layer_types = layer_types or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                      for i in range(layers)]
    else:
        window, layer_types = None, None
    if layer_types is not None and "sliding_attention" not in layer_types:
        window, layer_types = None, None
    out.update(sliding_window=None if window is None else int(window),
               layer_types=tuple(layer_types) if layer_types else ())
    if model_type in ("gemma2", "gemma3_text"):
        if d.get("query_pre_attn_scalar") is None:
            raise ValueError(f"{model_type} config has no query_pre_attn_scalar")
        out["query_pre_attn_scalar"] = float(d["query_pre_attn_scalar"])
        out["final_logit_softcapping"] = _optional_float(d.get("final_logit_softcapping"))
        # transformers' Gemma 3 attention ignores attn_logit_softcapping; so do we.
        if model_type == "gemma2":
            out["attn_logit_softcapping"] = _optional_float(d.get("attn_logit_softcapping"))
    return out


def _optional_float(value) -> Optional[float]:
    return None if value is None else float(value)


def _token_fields(d: Mapping[str, Any]) -> dict:
    eos = d.get("eos_token_id")
    eos_ids = tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    if not eos_ids:
        raise ValueError("config has no eos_token_id; decoding needs to know where a generation ends")
    pad = d.get("pad_token_id")
    bos = d.get("bos_token_id")
    return dict(eos_ids=eos_ids, pad_id=int(pad) if pad is not None else 0, bos_id=None if bos is None else int(bos))


def embed_scale(config: DecoderConfig) -> Optional[float]:
    """Gemma scales embeddings by sqrt(hidden_size) (rounded to the compute dtype by the model)."""
    return math.sqrt(config.hidden_size) if config.is_gemma else None
