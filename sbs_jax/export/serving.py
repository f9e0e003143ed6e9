"""What a served student computes, shared by every export format.

A request is a batch of raw inputs. For each requested output stream (the label, and optionally the rationale)
the input gets the stream's task prefix (`predict: ` / `explain: `), is tokenised with the student's
SentencePiece model, truncated to `max_input_length - 1` tokens and ended with EOS (seqio's
`append_eos_after_trim`), padded with 0, decoded greedily (or by beam search) and detokenised up to the first
EOS. The same steps run in TF ops inside the SavedModel and in numpy beside the StableHLO artifact.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Sequence

import numpy as np
from etils import epath

from sbs_jax.data.vocab import codec
from sbs_jax.data.vocab import eos_marker
from sbs_jax.data import schema
from sbs_jax.data.schema import STREAMS  # re-export
SPEC_FILE = "sbs_serving.json"


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """Request format and decoding of an exported student."""

    max_input_length: int = 512
    max_label_length: int = 64
    max_rationale_length: int = 256
    outputs: tuple[str, ...] = ("label",)
    label_prefix: str = schema.PREDICT_PREFIX  # `sbs export` takes the run's own (selection.run_label_prefix)
    rationale_prefix: str = schema.EXPLAIN_PREFIX
    num_beams: int = 1  # 1 = greedy
    length_penalty: float = 1.0  # HF generate()'s default, which decoding.beam_search reproduces

    def __post_init__(self):
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not self.outputs or len(set(self.outputs)) != len(self.outputs) or set(self.outputs) - set(STREAMS):
            raise ValueError(f"outputs must be a non-empty subset of {STREAMS}, got {self.outputs}")
        for name in ("max_input_length", "max_label_length", "max_rationale_length", "num_beams"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.max_input_length < 2:
            raise ValueError(f"max_input_length must leave room for one token and EOS, got {self.max_input_length}")

    def prefix(self, stream: str) -> str:
        return {schema.LABEL: self.label_prefix, schema.RATIONALE: self.rationale_prefix}[stream]

    def decode_length(self, stream: str) -> int:
        return {schema.LABEL: self.max_label_length, schema.RATIONALE: self.max_rationale_length}[stream]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "serving spec") -> "ServingSpec":
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not a valid serving spec: {e}") from e


def write_spec(directory, spec: ServingSpec, config, dtype: str, **extra) -> epath.Path:
    """Record what was exported beside the artifact: the request format, the model config and the dtype (and
    `extra` fields, e.g. a decoder-only student's `causal_format`)."""
    path = epath.Path(directory) / SPEC_FILE
    record = {"serving": dataclasses.asdict(spec), "model": config.to_dict(), "dtype": dtype, **extra}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ JAX side
def make_decode_fn(config, spec: ServingSpec, stream: str) -> Callable:
    """`(params, encoder_input_tokens [batch, max_input_length]) -> tokens [batch, decode_length]` int32.

    `params` may be stored in bfloat16; they are widened to float32 (exact) because the model keeps float32
    parameters and casts to its compute dtype (`config.dtype`) itself.
    """
    import jax
    import jax.numpy as jnp

    from sbs_jax.model.t5 import decoding
    from sbs_jax.model.t5 import Transformer

    model = Transformer(config)
    length = spec.decode_length(stream)

    def decode(params, encoder_input_tokens):
        params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
        if spec.num_beams > 1:
            return decoding.beam_search(model, params, encoder_input_tokens, max_decode_length=length,
                                        num_beams=spec.num_beams, length_penalty=spec.length_penalty)
        return decoding.greedy_decode(model, params, encoder_input_tokens, max_decode_length=length)

    return decode


def cast_params(params, dtype: str):
    """Parameters as numpy arrays in the export dtype ("float32" or "bfloat16")."""
    import flax.linen as nn
    import jax
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    # Freshly initialised trees carry logical-axis boxes; checkpoints hold plain arrays.
    return jax.tree.map(lambda p: np.asarray(p, dtype=np.float32).astype(np_dtype), nn.unbox(params))


# ---------------------------------------------------------------------------------------------- numpy side
def encode_inputs(sp, texts: Sequence[str], prefix: str, length: int, *, eos_id: int = 1,
                  pad_id: int = 0) -> np.ndarray:
    """[batch, length] int32: prefix + text tokenised, cut to length - 1, EOS appended, padded."""
    def encode(text: str) -> list[int]:
        return eos_marker.encode(sp.EncodeAsIds, [text], eos_id=eos_id)[0]

    return codec.encode_rows(encode, texts, prefix, length, eos_id=eos_id, pad_id=pad_id)


def decode_outputs(sp, tokens: np.ndarray, *, eos_id: int = 1) -> list[str]:
    """Detokenise each row up to its first EOS; ids the SentencePiece model lacks read as unknown (seqio)."""
    def decode(ids: list[int]) -> str:
        return sp.DecodeIds([i if i < sp.GetPieceSize() else sp.unk_id() for i in ids])

    return [codec.decode_row(decode, row, eos_id=eos_id) for row in np.asarray(tokens).tolist()]
