"""HF `transformers` directory for any HF-based serving stack (TGI, vLLM-style servers, pipelines).

The weights and config come from `sbs_jax.checkpoints.save_hf`; this adds what a server needs to reproduce our
predictions: a `tokenizer.json` that tokenises exactly like training for unigram and BPE vocabularies
(`hf_tokenizer`; the SentencePiece model ships too, as `spiece.model`) and generation defaults that match the
exported decode (greedy or beam, and the stream's maximum length as `max_new_tokens`).
"""
from __future__ import annotations

import json

from etils import epath

from sbs_jax.checkpoints import save_hf
from sbs_jax.export.hf_tokenizer import write_tokenizer_files
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
        # Replaces save_hf's `T5Tokenizer` config: that class reads every spiece.model as a Unigram model.
        write_tokenizer_files(output_dir, spm_model, model_max_length=spec.max_input_length)
    write_spec(output_dir, spec, config, dtype)
    return output_dir
