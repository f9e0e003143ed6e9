"""Evaluation: decode the label stream, score it with the task's metric, write predictions; teacher-forced
per-stream losses. Selection uses the validation split; the test split is only reported."""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np
from etils import epath

from sbs_jax import partitioning
from sbs_jax.data.vocab import codec
from sbs_jax.data import schema
from sbs_jax.model.t5 import decoding
from sbs_jax.train import decode_batching, objective as objective_lib


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """num_beams 1 = greedy (the paper's setting); otherwise HF-exact beam search with `length_penalty`.

    length_sorted_batches: decode length-sorted batches, each padded to the smallest of the bucket lengths
    `min_bucket_length · 2^k` (capped at the inputs length) that fits its longest input, and return the rows in
    their original order (decode_batching.py); the predictions are those of full-length padding. False: every
    batch in the given order at the full inputs length. (Training batches are a separate matter:
    `TrainConfig.cut_batches`.) length_bucketing: deprecated old name of `length_sorted_batches`.
    max_label_length: decode at most this many label tokens, EOS included (None: the targets feature length).
    The official code's `generation_max_length=64` counts HF's decoder start token, so it is 63 here.
    """
    num_beams: int = 1
    length_penalty: float = 1.0
    length_sorted_batches: bool = True
    length_bucketing: bool | None = None  # deprecated: the old name of length_sorted_batches
    min_bucket_length: int = 16
    max_label_length: int | None = None

    def label_length(self, task_feature_lengths: Mapping[str, int]) -> int:
        return int(self.max_label_length or task_feature_lengths["targets"])

    def __post_init__(self):
        if self.length_bucketing is not None:
            logging.getLogger(__name__).warning(
                "DecodeConfig.length_bucketing is deprecated; it is now DecodeConfig.length_sorted_batches")
            object.__setattr__(self, "length_sorted_batches", bool(self.length_bucketing))
        if self.num_beams < 1:
            raise ValueError(f"DecodeConfig.num_beams: expected >= 1, got {self.num_beams}")
        if self.min_bucket_length < 1:
            raise ValueError(f"DecodeConfig.min_bucket_length: expected >= 1, got {self.min_bucket_length}")
        if self.max_label_length is not None and self.max_label_length < 1:
            raise ValueError(f"DecodeConfig.max_label_length: expected >= 1 or None, got {self.max_label_length}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`sbs eval`: score a trained student on a split (default: the best checkpoint by validation accuracy).

    rationale_length: decode this many rationale tokens per example into the predictions file (0 = none).
    """
    model_dir: str
    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    split: str = "test"
    step: int | None = None
    batch_size: int = 64
    decode: DecodeConfig = DecodeConfig()
    rationale_length: int = 0
    max_examples: int | None = None
    partitioning: str = "data_parallel"
    mesh_model: int = 1


class Decoder:
    """Jitted label (and rationale) decoding on the mesh; every process gets every result.

    One jitted function per decode length; jax compiles it once per encoder shape it meets, and `shapes` records
    those `(batch, encoder length, decode length)` shapes.
    """

    def __init__(self, model, mesh, rules, decode: DecodeConfig):
        self.model, self.mesh, self.rules, self.decode = model, mesh, rules, decode
        self._fns: dict[int, Callable] = {}
        self.shapes: set[tuple[int, int, int]] = set()

    def buckets(self, full_length: int) -> tuple[int, ...] | None:
        """The encoder lengths batches are padded to (None: no bucketing, always `full_length`)."""
        if not self.decode.length_sorted_batches:
            return None
        return decode_batching.bucket_lengths(full_length, self.decode.min_bucket_length)

    def _fn(self, length: int):
        if length not in self._fns:
            def run(params, tokens):
                if self.decode.num_beams == 1:
                    return decoding.greedy_decode(self.model, params, tokens, max_decode_length=length,
                                                  eos_id=self.model.config.eos_id)
                return decoding.beam_search(self.model, params, tokens, max_decode_length=length,
                                            num_beams=self.decode.num_beams,
                                            length_penalty=self.decode.length_penalty,
                                            eos_id=self.model.config.eos_id)
            self._fns[length] = jax.jit(run, out_shardings=partitioning.replicated(self.mesh))
        return self._fns[length]

    def lower(self, params, tokens, length: int):
        """The decode program for `tokens`' shape, lowered from abstract params and tokens (ShapeDtypeStructs
        carrying their shardings): what `__call__` compiles for that shape (`sbs compile`)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._fn(length).lower(params, tokens)

    def __call__(self, params, tokens: np.ndarray, length: int) -> np.ndarray:
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            self.shapes.add((tokens.shape[0], tokens.shape[1], length))
            tokens = jax.device_put(tokens, partitioning.data_sharding(self.mesh))
            out = self._fn(length)(params, tokens)  # [batch, length] int32, replicated
        return np.asarray(out.addressable_data(0))


def detokenize(vocab, ids: np.ndarray, eos_id: int) -> str:
    return codec.decode_row(vocab.decode, ids, eos_id=eos_id)


def decode_rows(decoder: Decoder, params, tokens: np.ndarray, batch_size: int, length: int) -> np.ndarray:
    """[rows, inputs length] encoder tokens -> [rows, length] decoded tokens, in the rows' order, decoded in
    batches of `batch_size` (length-bucketed when the decoder's config says so)."""
    full = tokens.shape[1]
    plan = decode_batching.plan_batches(decode_batching.row_lengths(tokens), batch_size, decoder.buckets(full), full)
    out = np.zeros((tokens.shape[0], length), np.int32)
    for batch in plan:
        decoded = decoder(params, decode_batching.gather_padded(tokens, batch.rows, batch_size, batch.length), length)
        out[batch.rows] = decoded[:len(batch.rows)]
    return out


def predict_split(decoder: Decoder, params, vocab, examples: schema.EvalExamples, *, batch_size: int,
                  target_length: int, rationale_length: int = 0, max_examples: int | None = None) -> list[dict]:
    """Decoded predictions for the (first `max_examples`) rows of `examples`, in their order.

    Rows are decoded in batches of `batch_size` (length-sorted: `DecodeConfig.length_sorted_batches`); every
    process must pass the same examples (each reads the whole split), so all decode the same plan in lockstep.
    """
    examples = examples.head(max_examples)
    if not len(examples):
        return []
    eos = decoder.model.config.eos_id
    tokens = examples.encoder_input_tokens  # [examples, inputs length]
    pred = decode_rows(decoder, params, tokens, batch_size, target_length)
    rat = None
    if rationale_length:
        rat_in = codec.encode_with_vocab(vocab, list(examples.inputs), schema.RATIONALE, tokens.shape[1])
        rat = decode_rows(decoder, params, rat_in, batch_size, rationale_length)
    rows = []
    for i in range(len(tokens)):
        row = {"input": str(examples.inputs[i]), "gold": str(examples.targets[i]),
               "prediction": detokenize(vocab, pred[i], eos)}
        if rat is not None:
            row["rationale"] = detokenize(vocab, rat[i], eos)
        rows.append(row)
    return rows


def metric_name(task_name: str) -> str:
    """The name of the task's label metric (`exact_match` | `equation`), as recorded at registration."""
    from sbs_jax.data.registry import register

    try:
        return register.get_task_info(task_name).metric
    except ValueError:
        return "exact_match"


def score_predictions(task_name: str, rows: list[dict]) -> dict[str, float]:
    """The task's metric over the rows (its registered metric_fns), a per-row `correct` flag by the same rule,
    and the example count."""
    from sbs_jax.data.scoring import metrics

    result = metrics.score(task_name, [r["gold"] for r in rows], [r["prediction"] for r in rows])
    metric = metric_name(task_name)
    for r in rows:
        r["correct"] = bool(metrics.label_matches(metric, r["gold"], r["prediction"]))
    return {**{k: float(v) for k, v in result.items()}, "num_examples": float(len(rows))}


def write_predictions(path: epath.Path, rows: list[dict]) -> None:
    if jax.process_index() != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def teacher_forced_metrics(eval_step_fn: Callable, params, batches: Iterable, config: objective_lib.ObjectiveConfig,
                           to_global: Callable) -> dict[str, float]:
    """Per-stream token-mean loss and token accuracy over `batches` (no dropout)."""
    from sbs_jax.train.step import finish_eval_metrics

    sums = None
    for batch in batches:
        out = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), eval_step_fn(params, to_global(batch)))
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    if sums is None:
        return {}
    return finish_eval_metrics(sums, config)


def eval_step_jit(model, config, mesh):
    """The jitted teacher-forced eval step (metrics replicated); params and batch keep their shardings."""
    from sbs_jax.train.step import make_eval_step

    return jax.jit(make_eval_step(model, config), out_shardings=partitioning.replicated(mesh))


def eval_step_with_shardings(model, config, mesh, rules):
    fn = eval_step_jit(model, config, mesh)

    def run(params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn(params, batch)
    return run



def load_for_inference(model_dir, step: int | None, mesh_model: int = 1, preset: str = "data_parallel"):
    """(model, params on the mesh, vocab, mesh, rules, step) of a trained student: a `Transformer` (T5) or a
    `DecoderLM` (decoder-only), as its model_config.json says."""
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib
    from sbs_jax.model import Transformer
    from sbs_jax.model.decoder import DecoderConfig, DecoderLM
    from sbs_jax.train import checkpointing, state as state_lib

    _, step_dir = checkpointing.resolve(model_dir, step)
    model_config, params, vocab_path = checkpointing.load_params(step_dir)
    if vocab_path is None:
        raise FileNotFoundError(f"{model_dir}: no vocab/*.model or vocab/tokenizer.json; a training run copies its "
                                "vocabulary there")
    if isinstance(model_config, DecoderConfig):
        model = DecoderLM(model_config)
    else:
        model = Transformer(model_config.replace(dropout_rate=0.0))
    mesh, rules = partitioning.make_mesh(data=-1, model=mesh_model), partitioning.get_rules(preset)
    _, shardings = partitioning.param_shardings(model, mesh, rules, **state_lib.dummy_inputs(model=model))
    params = jax.device_put(params, shardings)
    return model, params, vocab_lib.load_vocabulary(str(vocab_path)), mesh, rules, int(step_dir.name)


def run_eval(config: EvalConfig) -> dict:
    """`sbs eval`: decode a split, score it, write `predictions/eval_<split>_step<step>.jsonl`."""
    from sbs_jax.data.input_pipeline import pipeline
    from sbs_jax.train import progress

    model, params, vocab, mesh, rules, step = load_for_inference(config.model_dir, config.step, config.mesh_model,
                                                                 config.partitioning)
    decoder = None if is_decoder_only(model) else Decoder(model, mesh, rules, config.decode)
    examples = pipeline.get_eval_examples(config.mixture_or_task_name, split=config.split,
                                          task_feature_lengths=config.task_feature_lengths)
    batch_size = partitioning.round_up_to_data(config.batch_size, mesh)
    label_length = config.decode.label_length(config.task_feature_lengths)
    if decoder is None:
        from sbs_jax.train import causal_evaluation

        layout = causal_evaluation.run_layout(config.model_dir, model.config, vocab)
        metrics, rows = causal_evaluation.predict_examples(
            model, params, vocab, examples.head(config.max_examples), layout,
            metric=metric_name(config.mixture_or_task_name), batch_size=batch_size, label_length=label_length,
            rationale_feature_length=config.task_feature_lengths.get("rationales", 0),
            rationale_length=config.rationale_length, decode=config.decode)
    else:
        rows = predict_split(decoder, params, vocab, examples, batch_size=batch_size, target_length=label_length,
                             rationale_length=config.rationale_length, max_examples=config.max_examples)
        metrics = score_predictions(config.mixture_or_task_name, rows)
    path = epath.Path(config.model_dir) / "predictions" / f"eval_{config.split}_step{step}.jsonl"
    write_predictions(path, rows)
    progress.MetricWriter(config.model_dir, tensorboard=False).write(step, metrics, f"eval_{config.split}")
    return {"step": step, "split": config.split, **metrics, "predictions": str(path)}



def is_decoder_only(model) -> bool:
    from sbs_jax.model.decoder import DecoderLM

    return isinstance(model, DecoderLM)

