"""Evaluation of decoder-only students: greedy generation from the training prompt, the label parsed per format.

The prompt of an example is the label stream's (`EvalExamples.encoder_input_tokens`: label prefix + input, the
vocabulary's EOS stripped) after the model's BOS, with the prefix moved after the input for
`multitask_shared_prompt` (`causal_lm.label_prompt`): exactly the prompt part of the training rows, so the
model continues where training taught it to. Generations are cut at the
model's EOS, detokenized and parsed by `causal_labels` (multitask: the label; rationale_first: after the
marker, a missing label counts wrong and counts as a parse failure; label_first: before it).
"""
from __future__ import annotations

import numpy as np

from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm
from sbs_jax.data.scoring import causal_labels
from sbs_jax.data.vocab import codec
from sbs_jax.model.decoder import decoding


def prompts(examples: schema.EvalExamples, layout: causal_lm.CausalLayout) -> list[list[int]]:
    """Each example's prompt tokens: the label stream's prompt (`causal_lm.label_prompt`) of its label-stream
    inputs up to the vocabulary's EOS."""
    out = []
    for row in np.asarray(examples.encoder_input_tokens):
        ends = np.flatnonzero(row == layout.source_eos_id)
        stop = int(ends[0]) if ends.size else int(np.count_nonzero(row))
        out.append(causal_lm.label_prompt(layout, row[:stop]))
    return out


def generate(model, params, prompt_rows: list[list[int]], *, batch_size: int, max_new_tokens: int,
             pad_to: int) -> np.ndarray:
    """Greedy continuations [rows, max_new_tokens] (0 after EOS), batches of `batch_size` rows left-padded to
    `pad_to` tokens (fixed shapes: one compilation)."""
    out = np.zeros((len(prompt_rows), max_new_tokens), np.int32)
    for start in range(0, len(prompt_rows), batch_size):
        chunk = prompt_rows[start:start + batch_size]
        filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
        tokens, valid = decoding.left_pad(filled, pad_id=model.config.pad_id)
        width = pad_to - tokens.shape[1]
        tokens = np.pad(tokens, ((0, 0), (width, 0)), constant_values=model.config.pad_id)
        valid = np.pad(valid, ((0, 0), (width, 0)))
        result = decoding.greedy_decode(model, params, tokens, valid, max_new_tokens=max_new_tokens)
        out[start:start + len(chunk)] = np.asarray(result)[:len(chunk)]
    return out


def predict_split(model, params, vocab, examples: schema.EvalExamples, layout: causal_lm.CausalLayout, *,
                  metric: str, batch_size: int, max_new_tokens: int) -> tuple[dict[str, float], list[dict]]:
    """(metrics {"accuracy", "parse_failures", "num_examples"}, rows {"input", "gold", "generation",
    "prediction", "rationale", "parsed", "correct"}) for every example, in order."""
    rows_in = prompts(examples, layout)
    pad_to = max(len(p) for p in rows_in) if rows_in else 1
    generated = generate(model, params, rows_in, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         pad_to=pad_to)
    texts = [codec.decode_row(vocab.decode, g, eos_id=layout.eos_id, pad_id=model.config.pad_id)
             for g in generated]
    result, scored = causal_labels.score_generations(metric, [str(t) for t in examples.targets], texts,
                                                     layout.format)
    rows = [{"input": str(examples.inputs[i]), "generation": texts[i], **scored[i]} for i in range(len(texts))]
    return result, rows
