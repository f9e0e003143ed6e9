"""Evaluation of decoder-only students: generation (greedy, or beam search) from the training prompt, the label
parsed per format.

The prompt of an example is the label stream's (`EvalExamples.encoder_input_tokens`: label prefix + input, the
vocabulary's EOS stripped) after the model's BOS, with the prefix moved after the input for
`multitask_shared_prompt` (`causal_lm.label_prompt`): exactly the prompt part of the training rows, so the
model continues where training taught it to. Generations are cut at the
model's EOS, detokenized and parsed by `causal_labels` (multitask: the label; rationale_first: after the
marker, a missing label counts wrong and counts as a parse failure; label_first: before it).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm
from sbs_jax.data.scoring import causal_labels
from sbs_jax.data.vocab import codec
from sbs_jax.model.decoder import decoding


def prompts(tokens: np.ndarray, layout: causal_lm.CausalLayout) -> list[list[int]]:
    """Each row's prompt: the label stream's prompt (`causal_lm.label_prompt`: [BOS] + its tokens, stream prefix
    + input as `EvalExamples.encoder_input_tokens`, up to the vocabulary's EOS; the prefix moved after the input
    for `multitask_shared_prompt`)."""
    out = []
    for row in np.asarray(tokens):
        ends = np.flatnonzero(row == layout.source_eos_id)
        stop = int(ends[0]) if ends.size else int(np.count_nonzero(row))
        out.append(causal_lm.label_prompt(layout, row[:stop]))
    return out


def new_tokens(layout: causal_lm.CausalLayout, label_length: int, rationale_length: int) -> int:
    """How many tokens a label generation may take: the label's, plus the rationale and the marker when the
    format generates both in one sequence."""
    if not layout.generates_rationale:
        return int(label_length)
    return int(label_length) + int(rationale_length) + len(layout.marker)


def stop_ids(model_config, layout: causal_lm.CausalLayout, *, label_only: bool) -> tuple[int, ...]:
    """The ids generation stops at: the model's EOS ids, and for `label_first` when only the label is wanted
    also the marker's first token (training rows hold the marker tokenized on its own right after the label,
    so the label ends where it starts: "post-thinking" need not generate its rationale)."""
    ids = tuple(int(i) for i in model_config.eos_ids)
    if label_only and layout.format == schema.LABEL_FIRST and layout.marker:
        ids += (int(layout.marker[0]),)
    return ids


def cut_at_stop(ids, stops: tuple[int, ...], eos_id: int) -> list[int]:
    """A generated row up to its first stop id (EOS kept as the end, a marker stop dropped)."""
    ids = [int(t) for t in ids]
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i] + [eos_id]
    return ids


def generate_texts(model, params, vocab, layout: causal_lm.CausalLayout, tokens: np.ndarray, *, batch_size: int,
                   max_new_tokens: int, decode=None, label_only: bool = False) -> list[str]:
    """Generations of the rows' prompts (`prompts`), detokenized up to EOS; `decode` (an
    `evaluation.DecodeConfig`) chooses greedy or beam search, greedy when None; `label_only`: stop after the
    label where the format allows (`stop_ids`)."""
    rows_in = prompts(tokens, layout)
    if not rows_in:
        return []
    stops = stop_ids(model.config, layout, label_only=label_only)
    generated = generate(model, params, rows_in, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         pad_to=max(len(p) for p in rows_in), num_beams=getattr(decode, "num_beams", 1),
                         length_penalty=getattr(decode, "length_penalty", 1.0), eos_ids=stops)
    return [codec.decode_row(vocab.decode, cut_at_stop(g, stops, layout.eos_id), eos_id=layout.eos_id,
                             pad_id=model.config.pad_id) for g in generated]


def run_layout(model_dir, model_config, vocab) -> causal_lm.CausalLayout:
    """The layout a decoder-only run trained with: run.json's `causal_format` over the run's vocabulary."""
    from sbs_jax import errors, run_dir

    info = run_dir.read_run_info(model_dir) or {}
    causal_format = info.get("causal_format")
    if causal_format not in schema.CAUSAL_FORMATS:
        raise errors.InputError(f"{run_dir.RunDir(model_dir).run_json}: causal_format is {causal_format!r}, "
                                f"expected one of {schema.CAUSAL_FORMATS} (sbs train records it for decoder-only "
                                "students)")
    from sbs_jax.data.registry import selection

    # The label prefix the run trained with (its selection manifest); multitask_shared_prompt moves it after x.
    prefixes = (selection.run_label_prefix(model_dir, default=schema.PREDICT_PREFIX), schema.EXPLAIN_PREFIX)
    return causal_lm.layout_for(causal_format, vocab, eos_ids=model_config.eos_ids,
                                bos_id=model_config.prompt_bos_id, prefixes=prefixes)


def generate(model, params, prompt_rows: list[list[int]], *, batch_size: int, max_new_tokens: int,
             pad_to: int, num_beams: int = 1, length_penalty: float = 1.0, eos_ids=None) -> np.ndarray:
    """Continuations [rows, max_new_tokens] (0 after the first of `eos_ids`, default the model's): greedy, or
    HF-exact beam search with `num_beams` > 1; batches of `batch_size` rows left-padded to `pad_to` tokens
    (fixed shapes: one compilation)."""
    eos_ids = tuple(eos_ids or model.config.eos_ids)
    out = np.zeros((len(prompt_rows), max_new_tokens), np.int32)
    for start in range(0, len(prompt_rows), batch_size):
        chunk = prompt_rows[start:start + batch_size]
        filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
        tokens, valid = decoding.left_pad(filled, pad_id=model.config.pad_id)
        width = pad_to - tokens.shape[1]
        tokens = np.pad(tokens, ((0, 0), (width, 0)), constant_values=model.config.pad_id)
        valid = np.pad(valid, ((0, 0), (width, 0)))
        if num_beams > 1:
            result = decoding.beam_search(model, params, tokens, valid, max_new_tokens=max_new_tokens,
                                          num_beams=num_beams, length_penalty=length_penalty, eos_ids=eos_ids)
        else:
            result = decoding.greedy_decode(model, params, tokens, valid, max_new_tokens=max_new_tokens,
                                            eos_ids=eos_ids)
        out[start:start + len(chunk)] = np.asarray(result)[:len(chunk)]
    return out


def predict_split(model, params, vocab, examples: schema.EvalExamples, layout: causal_lm.CausalLayout, *,
                  metric: str, batch_size: int, max_new_tokens: int, decode=None,
                  label_only: bool = False) -> tuple[dict[str, float], list[dict]]:
    """(metrics {"accuracy", "parse_failures", "num_examples"}, rows {"input", "gold", "generation",
    "prediction", "rationale", "parsed", "correct"}) for every example, in order."""
    texts = generate_texts(model, params, vocab, layout, examples.encoder_input_tokens, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, decode=decode, label_only=label_only)
    result, scored = causal_labels.score_generations(metric, [str(t) for t in examples.targets], texts,
                                                     layout.format)
    rows = [{"input": str(examples.inputs[i]), "generation": texts[i], **scored[i]} for i in range(len(texts))]
    return result, rows


def predict_examples(model, params, vocab, examples: schema.EvalExamples, layout: causal_lm.CausalLayout, *,
                     metric: str, batch_size: int, label_length: int, rationale_feature_length: int,
                     rationale_length: int = 0, decode=None) -> tuple[dict[str, float], list[dict]]:
    """`predict_split` with the generation length of the format (`new_tokens`); with `rationale_length` and the
    multitask format, each row's rationale is generated from its explain prompt too (the one-sequence formats
    already hold theirs)."""
    # label_first stops after the label unless its rationale is asked for.
    metrics, rows = predict_split(model, params, vocab, examples, layout, metric=metric, batch_size=batch_size,
                                  max_new_tokens=new_tokens(layout, label_length, rationale_feature_length),
                                  decode=decode, label_only=not rationale_length)
    if rationale_length and not layout.generates_rationale and len(rows):
        explain = codec.encode_with_vocab(vocab, list(examples.inputs), schema.RATIONALE,
                                          examples.encoder_input_tokens.shape[1])
        # The explain stream's prompt: its prefix in place of the label's (after x for multitask_shared_prompt).
        explain_layout = dataclasses.replace(layout, label_prefix=layout.rationale_prefix)
        texts = generate_texts(model, params, vocab, explain_layout, explain, batch_size=batch_size,
                               max_new_tokens=rationale_length, decode=decode)
        for row, text in zip(rows, texts):
            row["rationale"] = text
    return metrics, rows
