"""HF `AutoModelForCausalLM` directory of a decoder-only student, for HF pipelines and servers (vLLM, TGI).

The weights and config come from `sbs_jax.checkpoints.save_hf` (Llama, Qwen2, Gemma names); this adds what a
server needs to reproduce `sbs infer`: the prompt tokenizer (the run's own `tokenizer.json`, or one built from
its SentencePiece model that writes `[BOS] prefix + input` exactly as training does, `hf_tokenizer`), generation
defaults that match `sbs infer` (greedy or beam, `max_new_tokens` of the label, plus the rationale and the
marker for the one-sequence formats), and `sbs_serving.json` with the label prefix and the causal format, which
says how to read the label out of a generation (`sbs_jax.data.scoring.causal_labels`).
"""
from __future__ import annotations

import json

from etils import epath

from sbs_jax.checkpoints import save_hf
from sbs_jax.export.hf_tokenizer import write_tokenizer_files
from sbs_jax.export.serving import ServingSpec, write_spec

GENERATION_FILE = "generation_config.json"


def export_hf_causal(output_dir, config, params, *, spec: ServingSpec, dtype: str, vocab,
                     causal_format: str | None, max_new_tokens: int) -> epath.Path:
    """Write a directory `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load;
    `max_new_tokens` is what `sbs infer` generates for the format (`causal_evaluation.new_tokens`)."""
    from sbs_jax.data.vocab import hf_tokenizer_vocabulary as hf_vocab

    output_dir = save_hf(output_dir, config, params, dtype=dtype)
    generation_path = output_dir / GENERATION_FILE
    generation = json.loads(generation_path.read_text())
    # Finished rows are filled with pad_token_id; the EOS (special, dropped by `skip_special_tokens`) rather than
    # the model's pad id, which in Llama 3-style vocabularies is an ordinary token ("!" is id 0).
    generation.update({"max_new_tokens": int(max_new_tokens), "num_beams": spec.num_beams,
                       "do_sample": False, "pad_token_id": int(config.eos_ids[0])})
    if spec.num_beams > 1:
        generation["length_penalty"] = spec.length_penalty
    generation_path.write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    if vocab is not None:
        vocab = epath.Path(vocab)
        if hf_vocab.is_tokenizer_json(vocab):
            # The run's own tokenizer files; its config.json is the pretrained model's, not the student's.
            vocab.copy(output_dir / hf_vocab.TOKENIZER_FILENAME, overwrite=True)
            source = vocab.parent / hf_vocab.TOKENIZER_CONFIG_FILENAME
            settings = json.loads(source.read_text()) if source.is_file() else {}
            # Batched generation needs left padding and a pad token; Llama 3's tokenizer has none, so the
            # EOS pads (masked by the attention mask, and the fill of finished rows anyway).
            settings["padding_side"] = "left"
            if settings.get("pad_token") is None and settings.get("eos_token") is not None:
                settings["pad_token"] = settings["eos_token"]
            (output_dir / hf_vocab.TOKENIZER_CONFIG_FILENAME).write_text(
                json.dumps(settings, indent=2, sort_keys=True) + "\n")
        else:
            write_tokenizer_files(output_dir, vocab, model_max_length=spec.max_input_length, causal=True,
                                  causal_bos_id=config.prompt_bos_id)
    write_spec(output_dir, spec, config, dtype, causal_format=causal_format)
    return output_dir
