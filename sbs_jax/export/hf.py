"""HF `transformers` directory for any HF-based serving stack (TGI, vLLM-style servers, pipelines).

The weights and config come from `sbs_jax.checkpoints.save_hf`; this adds what a server needs to reproduce our
predictions: the SentencePiece model (as `spiece.model`, read by `T5Tokenizer`) and generation defaults that
match the exported decode (greedy or beam, and the stream's maximum length as `max_new_tokens`).
"""
from __future__ import annotations

import json

from etils import epath

from sbs_jax.checkpoints import save_hf
from sbs_jax.export.serving import ServingSpec, write_spec

GENERATION_FILE = "generation_config.json"


def export_hf(output_dir, config, params, *, spec: ServingSpec, dtype: str = "float32",
              spm_model=None) -> epath.Path:
    """Write a directory `T5ForConditionalGeneration.from_pretrained` loads; returns it."""
    output_dir = save_hf(output_dir, config, params, dtype=dtype, spiece_model=spm_model)
    generation_path = output_dir / GENERATION_FILE
    generation = json.loads(generation_path.read_text())
    # HF's default max_length (20) would cut rationales short; the label length is what `predict:` needs.
    generation.update({"max_new_tokens": spec.max_label_length, "num_beams": spec.num_beams,
                       "do_sample": False})
    if spec.num_beams > 1:
        generation["length_penalty"] = spec.length_penalty
    generation_path.write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    if spm_model is not None:
        tokenizer_path = output_dir / "tokenizer_config.json"
        tokenizer = json.loads(tokenizer_path.read_text()) if tokenizer_path.is_file() else {}
        tokenizer.update({"tokenizer_class": "T5Tokenizer", "model_max_length": spec.max_input_length})
        tokenizer_path.write_text(json.dumps(tokenizer, indent=2, sort_keys=True) + "\n")
    write_spec(output_dir, spec, config, dtype)
    return output_dir
