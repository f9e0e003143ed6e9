"""`sbs infer`: labels (and optionally rationales) for new inputs, from JSON lines or plain text."""
from __future__ import annotations

import dataclasses
import json
import numpy as np
from etils import epath

from sbs_jax import errors, paths
from sbs_jax.data.registry import selection
from sbs_jax.data.vocab import codec
from sbs_jax.data import schema
from sbs_jax.train import evaluation


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """input_path: `.jsonl`/`.json` (one object per line, text under `input_field`, other fields copied to the
    output) or any other file as plain text (one input per line). output_path: JSON lines
    `{..., "input", "prediction"[, "rationale"]}`."""
    model_dir: str
    input_path: str
    output_path: str
    step: int | None = None
    input_field: str = "input"
    input_length: int = 512
    target_length: int = 64
    rationale_length: int = 0
    batch_size: int = 32
    decode: evaluation.DecodeConfig = evaluation.DecodeConfig()


def read_inputs(path: str, input_field: str) -> list[dict]:
    p = epath.Path(path)
    if not p.is_file():
        raise errors.InputError(f"{p}: input file not found (InferConfig.input_path, INFER_INPUT)")
    rows = []
    json_lines = p.suffix in (".jsonl", ".json")
    for lineno, line in enumerate(paths.read_utf8(p, "input file").splitlines(), 1):
        if not line.strip():
            continue
        if not json_lines:
            rows.append({"input": line})
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise errors.InputError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(input_field), str):
            raise errors.InputError(f"{p}:{lineno}: expected an object with a string field {input_field!r}")
        rows.append({**record, "input": record[input_field]})
    return rows


def _examples(vocab, rows: list[dict], length: int, prefix: str) -> schema.EvalExamples:
    texts = np.array([r["input"] for r in rows], dtype=object)
    empty = np.full((len(rows),), "", dtype=object)
    return schema.EvalExamples(encoder_input_tokens=codec.encode_with_vocab(vocab, list(texts), schema.LABEL, length,
                                                                         prefix=prefix),
                               inputs=texts, targets=empty, rationales=empty)


def run_infer(config: InferConfig) -> dict:
    import jax

    from sbs_jax import partitioning

    rows = read_inputs(config.input_path, config.input_field)
    model, params, vocab, mesh, rules, step = evaluation.load_for_inference(config.model_dir, config.step)
    # The label prefix the run trained with (none for the official code's standard finetuning/distillation).
    prefix = selection.run_label_prefix(config.model_dir, default=schema.PREDICT_PREFIX)
    examples = _examples(vocab, rows, config.input_length, prefix)
    batch_size = partitioning.round_up_to_data(config.batch_size, mesh)
    if evaluation.is_decoder_only(model):
        preds = _predict_causal(config, model, params, vocab, examples, batch_size)
    else:
        decoder = evaluation.Decoder(model, mesh, rules, config.decode)
        preds = evaluation.predict_split(decoder, params, vocab, examples, batch_size=batch_size,
                                         target_length=config.target_length,
                                         rationale_length=config.rationale_length)
    if jax.process_index() == 0:
        out = epath.Path(config.output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for record, pred in zip(rows, preds):
                extra = {k: pred[k] for k in ("rationale", "parsed") if k in pred}
                f.write(json.dumps({**record, "prediction": pred["prediction"], **extra}, ensure_ascii=False)
                        + "\n")
    return {"step": step, "num_examples": len(rows), "output": config.output_path}


def _predict_causal(config: InferConfig, model, params, vocab, examples: schema.EvalExamples,
                    batch_size: int) -> list[dict]:
    """A decoder-only student's rows: the label parsed from its generation per the run's format (`parsed`
    False where the format's label is missing), and with `rationale_length` the rationale (from the same
    generation in the one-sequence formats, from the explain prompt in multitask)."""
    from sbs_jax.train import causal_evaluation

    layout = causal_evaluation.run_layout(config.model_dir, model.config, vocab)
    # A one-sequence format generates its rationale before (or after) the label whether or not it is printed.
    rationale_tokens = config.rationale_length or run_rationale_length(config.model_dir)
    _, preds = causal_evaluation.predict_examples(
        model, params, vocab, examples, layout, metric="exact_match", batch_size=batch_size,
        label_length=config.target_length, rationale_feature_length=rationale_tokens,
        rationale_length=config.rationale_length, decode=config.decode)
    keep = ("prediction", "parsed") + (("rationale",) if config.rationale_length else ())
    return [{k: p[k] for k in keep} for p in preds]


def run_rationale_length(model_dir) -> int:
    """The rationales length the run trained with (run.json), 256 when it records none."""
    from sbs_jax import run_dir

    info = run_dir.read_run_info(model_dir) or {}
    return int((info.get("task_feature_lengths") or {}).get("rationales", 256))
