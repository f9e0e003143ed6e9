"""Serialized `jax.export` artifacts for JAX-native serving, one per output stream.

The directory holds `<stream>.stablehlo` (a serialized `jax.export.Exported` of
`(params, encoder_input_tokens [b, max_input_length]) -> tokens [b, decode_length]`, batch symbolic),
`params.safetensors` (flat `a/b/c` names), `spiece.model` and `sbs_serving.json`. `StableHLOStudent` loads it
back and serves strings without the model's Python code: tokenisation runs in numpy around the artifact.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from etils import epath

from sbs_jax import paths
from sbs_jax.checkpoints.layout import flatten, unflatten
from sbs_jax.export.serving import (SPEC_FILE, ServingSpec, cast_params, decode_outputs, encode_inputs,
                                    make_decode_fn, write_spec)

PARAMS_FILE = "params.safetensors"
SPM_FILE = "spiece.model"
DEFAULT_PLATFORMS = ("cpu",)


def export_stablehlo(output_dir, config, params, *, spm_model, spec: ServingSpec, dtype: str = "float32",
                     platforms: Sequence[str] = DEFAULT_PLATFORMS) -> epath.Path:
    """Write the artifacts of every stream in `spec.outputs` to `output_dir` (see the module docstring).

    `dtype`: storage dtype of the weights; the computation runs in `config.dtype`, as in training.
    """
    import jax
    import jax.numpy as jnp

    output_dir = epath.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = config.replace(dropout_rate=0.0)
    params = cast_params(params, dtype)
    param_specs = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    (batch,) = jax.export.symbolic_shape("b")
    tokens_spec = jax.ShapeDtypeStruct((batch, spec.max_input_length), jnp.int32)
    for stream in spec.outputs:
        exported = jax.export.export(jax.jit(make_decode_fn(config, spec, stream)), platforms=tuple(platforms))(
            param_specs, tokens_spec)
        (output_dir / f"{stream}.stablehlo").write_bytes(exported.serialize())
    paths.save_safetensors({k: np.ascontiguousarray(v) for k, v in flatten(params).items()}, output_dir / PARAMS_FILE)
    epath.Path(spm_model).copy(output_dir / SPM_FILE, overwrite=True)
    write_spec(output_dir, spec, config, dtype)
    return output_dir


class StableHLOStudent:
    """A student exported with `export_stablehlo`, served from its directory: `predict(texts)`."""

    def __init__(self, directory):
        import jax
        import sentencepiece as spm

        self.directory = epath.Path(directory)
        spec_path = self.directory / SPEC_FILE
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path}: missing; not a directory written by `sbs export --format "
                                    "stablehlo`")
        record = json.loads(spec_path.read_text())
        self.spec = ServingSpec.from_json(json.dumps(record["serving"]), str(spec_path))
        self.eos_id, self.pad_id = record["model"]["eos_id"], record["model"]["pad_id"]
        self.sp = spm.SentencePieceProcessor(model_proto=(self.directory / SPM_FILE).read_bytes())
        self.params = unflatten(paths.load_safetensors(self.directory / PARAMS_FILE))
        self.exported = {
            stream: jax.export.deserialize(bytearray((self.directory / f"{stream}.stablehlo").read_bytes()))
            for stream in self.spec.outputs
        }

    def predict(self, texts: Sequence[str]) -> dict[str, list[str]]:
        """{stream: [decoded text per input]} for every exported stream."""
        outputs = {}
        for stream, exported in self.exported.items():
            tokens = encode_inputs(self.sp, texts, self.spec.prefix(stream), self.spec.max_input_length,
                                   eos_id=self.eos_id, pad_id=self.pad_id)
            outputs[stream] = decode_outputs(self.sp, np.asarray(exported.call(self.params, tokens)),
                                             eos_id=self.eos_id)
        return outputs
