"""From registered tasks to the batches the trainer and the evaluator consume (ARCHITECTURE.md, Data).

`get_train_dataset` yields `{"label": {...}, "rationale": {...}}` (only `label` for ft/distill tasks) of
int32 arrays padded to the feature lengths; both streams hold the same examples in the same rows. With
`pack=True` it yields `{"packed": {...}}` instead: rows holding several (example, stream) segments
(`sbs_jax.data.input_pipeline.packing`).
`train_batches` yields the same batches as numpy arrays, from the numpy back end (`host_pipeline`: tokenized
once, shuffled, packed and batched in numpy) where the task allows it, else from `get_train_dataset`.
`get_eval_examples` gives every example of a split exactly once, in order, as arrays with its raw strings.
Inputs longer than the `inputs` length are truncated; how many is counted and logged, never silent.
"""
from __future__ import annotations

import functools
from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from sbs_jax.data.input_pipeline import feature_converter as fc
from sbs_jax.data.input_pipeline import host_pipeline
from sbs_jax.data.input_pipeline import packing
from sbs_jax.data.input_pipeline import rationale_picking
from sbs_jax.data.registry import register
from sbs_jax.data import schema
from sbs_jax.data.records.data_dir import DataError


def _tasks(name: str) -> list[seqio.Task]:
    provider = seqio.get_mixture_or_task(name)
    return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def is_paired(name: str) -> bool:
    """Whether a task or mixture carries both streams (seqio keeps a mixture's output features uniform)."""
    return "rationales" in seqio.get_mixture_or_task(name).output_features


def sequence_lengths(task_feature_lengths: Mapping[str, int], paired: bool) -> dict[str, int]:
    """Trainer lengths {"inputs", "targets"[, "rationales"]} -> task feature lengths seqio trims to."""
    needed = ("inputs", "targets", "rationales") if paired else ("inputs", "targets")
    missing = [k for k in needed if k not in task_feature_lengths]
    if missing:
        raise ValueError(f"task_feature_lengths lacks {missing}; expected keys {list(needed)}")
    for k in needed:
        if int(task_feature_lengths[k]) < 2:
            raise ValueError(f"task_feature_lengths[{k!r}] = {task_feature_lengths[k]}; expected at least 2")
    lengths = {"inputs": int(task_feature_lengths["inputs"]), "targets": int(task_feature_lengths["targets"])}
    if paired:
        lengths["rationale_inputs"] = lengths["inputs"]
        lengths["rationales"] = int(task_feature_lengths["rationales"])
    return lengths


def get_train_dataset(mixture_or_task_name: str, *, task_feature_lengths: Mapping[str, int], batch_size: int,
                      split: str = "train", shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
                      shard_info: seqio.ShardInfo | None = None, pack: bool = False,
                      packed_lengths: Mapping[str, int] | None = None,
                      packed_streams: tuple[str, ...] | None = None) -> tf.data.Dataset:
    """Batched, paired training data for a task or a mixture of same-kind tasks.

    Args:
      mixture_or_task_name: a registered task (`svamp_sbs`, ...) or seqio Mixture of such tasks.
      task_feature_lengths: {"inputs": Li, "targets": Lt, "rationales": Lr} ("rationales" for *_sbs* tasks).
      batch_size: global batch size; with `shard_info` each host gets `batch_size // num_shards` rows.
      split, shuffle, seed, num_epochs: as in seqio; `num_epochs=None` repeats forever. The same seed gives
        the same batches in every process, so resuming can skip n batches.
      shard_info: `seqio.ShardInfo(index=host, num_shards=hosts)` for multi-host input.
      pack: yield `{"packed": {...}}` batches of `batch_size` packed rows (each shard packs its own examples).
      packed_lengths: {"inputs": Le, "targets": Ld} row lengths with `pack`; default
        `packing.default_packed_lengths`. Must be at least the task feature lengths (checked).
      packed_streams: with `pack`, the streams that become segments (default: every stream the task has;
        ("label",) packs a paired task's label stream only, for finetuning on it).
    Returns a `tf.data.Dataset` of nested dicts of int32 tensors with fixed shapes (drop_remainder).
    """
    paired, lengths, local_batch = _batch_plan(mixture_or_task_name, task_feature_lengths, batch_size, split,
                                               shard_info)
    _check_no_picking(mixture_or_task_name, split)
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    ds = provider.get_dataset(sequence_length=lengths, split=split, shuffle=shuffle, seed=seed,
                              num_epochs=num_epochs, shard_info=shard_info)
    if pack:
        streams = _packed_streams(mixture_or_task_name, paired, packed_streams)
        rows = resolve_packed_lengths(mixture_or_task_name, split, lengths, packed_lengths, streams)
        ds = packing.pack_streams(ds, rows, streams, bos_id=0)
        ds = ds.batch(local_batch, drop_remainder=True).map(lambda x: {schema.PACKED: x})
    else:
        converter = fc.PairedFeatureConverter() if paired else fc.LabelFeatureConverter()
        ds = converter(ds, task_feature_lengths=lengths)
        ds = ds.batch(local_batch, drop_remainder=True).map(fc.nest, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _batch_plan(name: str, task_feature_lengths, batch_size: int, split: str, shard_info):
    """(paired?, the task's sequence lengths, this shard's batch size); logs how many inputs get truncated."""
    paired = is_paired(name)
    lengths = sequence_lengths(task_feature_lengths, paired)
    if shard_info is not None and batch_size % shard_info.num_shards:
        raise ValueError(f"batch_size {batch_size} is not divisible by {shard_info.num_shards} shards")
    log_truncation(name, split, lengths)
    return paired, lengths, batch_size // (shard_info.num_shards if shard_info else 1)


BACKENDS = ("auto", "numpy", "tf.data")


def train_batches(mixture_or_task_name: str, *, task_feature_lengths: Mapping[str, int], batch_size: int,
                  split: str = "train", shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, pack: bool = False,
                  packed_lengths: Mapping[str, int] | None = None,
                  packed_streams: tuple[str, ...] | None = None, backend: str = "auto",
                  workers: int = 0) -> Iterator[dict]:
    """`get_train_dataset`'s batches as numpy (same arguments), from `backend`: "numpy" (`host_pipeline`),
    "tf.data" (`get_train_dataset`), or "auto": numpy wherever `host_pipeline.supports` the task. Both give
    the same batches for a seed. `workers`: worker processes of the numpy back end (0: in this thread; the
    batches are the same for every count); the tf.data path ignores it (tf.data has its own threads)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers={workers!r}: expected an int >= 0 (0 = in-thread)")
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    supported = host_pipeline.supports(provider)
    if backend == "numpy" and not supported:
        raise ValueError(f"backend='numpy' needs a single task over in-memory examples; {mixture_or_task_name!r} "
                         f"is a {type(provider).__name__} over {type(getattr(provider, 'source', None)).__name__}")
    if backend == "tf.data" or not supported:
        return get_train_dataset(mixture_or_task_name, task_feature_lengths=task_feature_lengths,
                                 batch_size=batch_size, split=split, shuffle=shuffle, seed=seed,
                                 num_epochs=num_epochs, shard_info=shard_info, pack=pack,
                                 packed_lengths=packed_lengths, packed_streams=packed_streams).as_numpy_iterator()
    paired, lengths, local_batch = _batch_plan(mixture_or_task_name, task_feature_lengths, batch_size, split,
                                               shard_info)
    data = _tokenized(provider, split, tuple(sorted(lengths.items())),
                      None if shard_info is None else (shard_info.index, shard_info.num_shards))
    buffer = provider._shuffle_buffer_size  # noqa: SLF001
    picking = _rationale_picking(mixture_or_task_name, split)
    if picking is None:
        order = host_pipeline.IndexStream(data.num_examples, shuffle=shuffle, buffer_size=buffer, seed=seed,
                                          num_epochs=num_epochs)
    else:
        counts = picking
        index = np.arange(len(counts))
        if shard_info is not None and shard_info.num_shards > 1:  # the source shards by example
            index = index[index % shard_info.num_shards == shard_info.index]
        positions = host_pipeline.IndexStream(len(index), shuffle=shuffle, buffer_size=buffer, seed=seed,
                                              num_epochs=num_epochs, positions=True)
        order = rationale_picking.PickedRows(positions, counts[index], index, seed)
    if pack:
        streams = _packed_streams(mixture_or_task_name, paired, packed_streams)
        rows = resolve_packed_lengths(mixture_or_task_name, split, lengths, packed_lengths, streams)
        return host_pipeline.packed_batches(data, order, streams=streams, packed_lengths=rows,
                                            batch_size=local_batch, workers=workers)
    streams = schema.STREAMS if paired else (schema.LABEL,)
    return host_pipeline.unpacked_batches(data, order, streams=streams, lengths=lengths, batch_size=local_batch,
                                          workers=workers)


@functools.lru_cache(maxsize=8)  # keyed by the Task object: re-registering a name gives a fresh entry
def _tokenized(task: seqio.Task, split: str, lengths: tuple, shard: tuple[int, int] | None):
    shard_info = None if shard is None else seqio.ShardInfo(index=shard[0], num_shards=shard[1])
    lengths = dict(lengths)
    return host_pipeline.TokenizedSplit.from_task(task, split=split, sequence_length=lengths,
                                                  features=tuple(lengths), shard_info=shard_info)


def _rationale_picking(name: str, split: str) -> np.ndarray | None:
    """Rows per example when training on `split` of task `name` picks one rationale per epoch, else None."""
    try:
        info = register.get_task_info(name)
    except ValueError:
        return None
    return np.asarray(info.train_rows) if info.picks_rationales(split) else None


def _check_no_picking(name: str, split: str) -> None:
    for task in _tasks(name):
        if _rationale_picking(task.name, split) is not None:
            raise ValueError(f"task {task.name!r} has several rationales per example with rationale_sampling="
                             "'one_per_epoch', which the numpy back end implements: train it alone with "
                             "backend 'auto'/'numpy', or register it with rationale_sampling='all'")


def _packed_streams(name: str, paired: bool, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    available = schema.STREAMS if paired else (schema.LABEL,)
    streams = available if requested is None else tuple(requested)
    if not streams or schema.LABEL not in streams or any(s not in available for s in streams):
        raise ValueError(f"packed_streams={requested!r}: expected a subset of {available} with 'label' for "
                         f"task {name!r}")
    return streams


def resolve_packed_lengths(mixture_or_task_name: str, split: str, lengths: Mapping[str, int],
                           packed_lengths: Mapping[str, int] | None, streams: tuple[str, ...]) -> dict[str, int]:
    """Checked packed row lengths; logs them and how many rationale segments are omitted (unparsed)."""
    rows = packing.resolve_packed_lengths(lengths, packed_lengths, streams)
    omitted = 0
    if schema.RATIONALE in streams:
        omitted = sum(packing.count_omitted_rationales(_token_lengths(t, split)["rationales"])
                      for t in _tasks(mixture_or_task_name))
    logging.info("%s:%s: packing (example, stream) segments into rows of %d input / %d target tokens; %d "
                 "examples have no parsed rationale and get no rationale segment", mixture_or_task_name, split,
                 rows["inputs"], rows["targets"], omitted)
    return rows


def get_eval_examples(task_name: str, *, split: str, task_feature_lengths: Mapping[str, int],
                      shard_info: seqio.ShardInfo | None = None) -> schema.EvalExamples:
    """Every example of `split` (of this shard, with `shard_info`) once, in order, as arrays:
    `encoder_input_tokens` [N, Li] int32 (label-stream inputs, `predict: ` prefix, seqio-trimmed, EOS-ended)
    and the raw `inputs`, gold `targets` and teacher `rationales` ("" when absent) as [N] object arrays.

    Decoding batches are cut from these rows by the caller (`sbs_jax.train.decode_batching`); the evaluator
    reads the whole split in every process, so all processes plan and decode the same batches in lockstep.
    """
    in_len = int(task_feature_lengths["inputs"])
    log_truncation(task_name, split, {"inputs": in_len})
    task = seqio.get_mixture_or_task(task_name)
    lengths = {k: int(v) for k, v in task_feature_lengths.items() if k in task.output_features}
    ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1,
                          shard_info=shard_info)
    rows = list(ds.as_numpy_iterator())
    tokens = np.zeros((len(rows), in_len), np.int32)  # [examples, inputs length]
    text = {k: np.full((len(rows),), "", dtype=object) for k in ("input", "label", "rationale")}
    for i, ex in enumerate(rows):
        ids = ex["inputs"][:in_len]
        tokens[i, :len(ids)] = ids
        for k in text:
            text[k][i] = ex[k].decode("utf-8")
    return schema.EvalExamples(encoder_input_tokens=tokens, inputs=text["input"], targets=text["label"],
                               rationales=text["rationale"])


MAX_COUNTED_EXAMPLES = 200_000  # other sources: truncation is counted on (at most) this many examples


def truncation_stats(mixture_or_task_name: str, split: str, lengths: Mapping[str, int]) -> dict[str, dict]:
    """Per task feature: how many examples of the split are longer than its length (EOS included).

    Counted in Python from the in-memory examples of tasks sbs_jax registered; for other sources the
    count comes from one pass over (the first MAX_COUNTED_EXAMPLES of) the tokenized split.
    """
    out: dict[str, dict] = {}
    for task in _tasks(mixture_or_task_name):
        counts = _token_lengths(task, split)
        for feature, limit in lengths.items():
            if feature in counts:
                entry = out.setdefault(feature, {"examples": 0, "truncated": 0, "limit": int(limit)})
                entry["examples"] += len(counts[feature])
                entry["truncated"] += int(np.sum(counts[feature] > limit))
    return out


def log_truncation(mixture_or_task_name: str, split: str, lengths: Mapping[str, int]) -> dict[str, dict]:
    stats = truncation_stats(mixture_or_task_name, split, lengths)
    for feature, s in stats.items():
        if s["truncated"]:
            logging.warning("%s:%s: %d of %d examples have %s longer than %d tokens; truncated",
                            mixture_or_task_name, split, s["truncated"], s["examples"], feature, s["limit"])
    return stats


def _encode_lengths(vocab, texts: list[str]) -> np.ndarray:
    """Token counts with EOS, batched through SentencePiece where the vocabulary has it."""
    if not texts:
        return np.zeros((0,), np.int64)
    ids = vocab.encode_batch(texts) if hasattr(vocab, "encode_batch") else [vocab.encode(t) for t in texts]
    return np.array([len(x) + 1 for x in ids], np.int64)


@functools.lru_cache(maxsize=64)  # keyed by the Task object: re-registering a name gives a fresh entry
def _token_lengths(task: seqio.Task, split: str) -> dict[str, np.ndarray]:
    vocab = task.output_features["inputs"].vocabulary
    try:
        info = register.get_task_info(task.name)
    except ValueError:
        info = None
    if info is not None and info.split_data is not None and seqio.get_mixture_or_task(task.name) is task:
        if split not in info.split_data:
            raise DataError(f"task {task.name!r} has no split {split!r}; splits: {sorted(info.split_data)}")
        examples = info.source_examples(split)
        label = "teacher_label" if info.label_source == "teacher" else "label"
        n = functools.partial(_encode_lengths, vocab)
        out = {"inputs": n([info.label_prefix + ex.input for ex in examples]),
               "targets": n([(getattr(ex, label) or ex.label) for ex in examples])}
        if info.paired:
            out["rationale_inputs"] = n([info.rationale_prefix + ex.input for ex in examples])
            out["rationales"] = n([ex.rationale for ex in examples])
        return out
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                          trim_output_features=False).take(MAX_COUNTED_EXAMPLES)
    keys = [k for k in task.output_features if k in ds.element_spec]
    lengths = {k: [] for k in keys}
    for ex in ds.map(lambda ex: {k: tf.size(ex[k]) for k in keys}).as_numpy_iterator():
        for k in keys:
            lengths[k].append(int(ex[k]))
    return {k: np.array(v, np.int64) for k, v in lengths.items()}
