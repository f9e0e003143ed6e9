"""Sequence packing of the paired streams for training (T5X-style), the packed batch of ARCHITECTURE.md.

Every (example, stream) pair becomes one *segment*: example i's `predict: x` encoder tokens and its label
target tokens share one segment id, its `explain: x` tokens and its rationale tokens another. Segments are
laid out in data order (label_i, rationale_i, label_i+1, ...) and packed greedily into rows of
`packed_lengths = {"inputs": Le, "targets": Ld}` tokens (default `default_packed_lengths`) by seqio's
`trim_and_pack_dataset` (a segment that does not fit closes the row; seqio packs windows of max(Le, Ld)
segments, so the last row of each window may be short). Per row:

    encoder_input_tokens, encoder_segment_ids, encoder_positions                          [Le]
    decoder_input_tokens, decoder_target_tokens, decoder_segment_ids, decoder_positions,
    decoder_loss_weights, decoder_stream_ids                                              [Ld]

Segment ids count 1, 2, ... from each row's start (0 on padding), positions restart at 0 in each segment,
decoder inputs are the targets shifted right within each segment (BOS = 0 at a segment's start), loss weights
are 1 on every target token, stream ids are 1 (label) or 2 (rationale) on target tokens and 0 on padding.

Per-example trimming is unchanged: TASK_FEATURE_LENGTHS still cut each example's features before packing,
and packed rows must be at least that long (`resolve_packed_lengths`), so packing never cuts a segment.

Unparsed teacher outputs (a rationale target that is only EOS, see `feature_converter`) get no rationale
segment at all: they would carry loss weight 0 and only take room. `count_omitted_rationales` counts them.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from sbs_jax.data import schema
from sbs_jax.data.schema import STREAM_FEATURES, STREAM_IDS


def default_packed_lengths(lengths: Mapping[str, int], streams: tuple[str, ...]) -> dict[str, int]:
    """Rows with the capacity of one unpacked example of every packed stream: {"inputs": 2·Li, "targets":
    Lt + Lr} for both streams ({"inputs": Li, "targets": Lt} for the label stream only), task lengths as
    `pipeline.sequence_lengths` gives them. A packed batch of B rows then costs what an unpacked batch of B
    examples costs (dense layers; attention grows with the row length) and holds every example that fits."""
    inputs, targets = int(lengths["inputs"]), int(lengths["targets"])
    if schema.RATIONALE in streams:
        inputs += int(lengths["rationale_inputs"])
        targets += int(lengths["rationales"])
    return {"inputs": inputs, "targets": targets}


def resolve_packed_lengths(lengths: Mapping[str, int], packed_lengths: Mapping[str, int] | None,
                           streams: tuple[str, ...]) -> dict[str, int]:
    """`packed_lengths` (or the default) checked against the per-example trim lengths of the packed streams."""
    needed = {"inputs": int(lengths["inputs"]), "targets": int(lengths["targets"])}
    if schema.RATIONALE in streams:
        needed["inputs"] = max(needed["inputs"], int(lengths["rationale_inputs"]))
        needed["targets"] = max(needed["targets"], int(lengths["rationales"]))
    if packed_lengths is None:
        return default_packed_lengths(lengths, streams)
    unknown = sorted(set(packed_lengths) - {"inputs", "targets"})
    missing = sorted({"inputs", "targets"} - set(packed_lengths))
    if unknown or missing:
        raise ValueError(f"TrainConfig.packed_lengths: expected keys ['inputs', 'targets'], got "
                         f"{sorted(packed_lengths)} (missing {missing}, unknown {unknown})")
    out = {k: int(v) for k, v in packed_lengths.items()}
    for key, need in needed.items():
        if out[key] < need:
            source = "inputs" if key == "inputs" else ("max(targets, rationales)" if schema.RATIONALE in streams
                                                      else "targets")
            raise ValueError(f"TrainConfig.packed_lengths[{key!r}] = {out[key]} is shorter than one example's "
                             f"segment may be after trimming (TASK_FEATURE_LENGTHS {source} = {need}); "
                             f"expected at least {need}")
    return out


def stream_examples(ds: tf.data.Dataset, streams: tuple[str, ...]) -> tf.data.Dataset:
    """Task examples -> one example per (example, stream): {"inputs", "targets", "stream_ids"}, in the order
    label_0, rationale_0, label_1, ... Rationale segments of unparsed teacher outputs are dropped."""
    def split(ex):
        inputs = [ex[STREAM_FEATURES[s][0]] for s in streams]
        targets = [ex[STREAM_FEATURES[s][1]] for s in streams]
        ids = [tf.fill(tf.shape(t), STREAM_IDS[s]) for s, t in zip(streams, targets)]
        keep = [tf.constant(True) if s == schema.LABEL else tf.size(t) > 1 for s, t in zip(streams, targets)]
        # Ragged -> padded [streams, length]; zeros after a segment are stripped again by the packer.
        stack = lambda xs: tf.RaggedTensor.from_row_lengths(  # noqa: E731
            tf.concat(xs, 0), tf.stack([tf.size(x) for x in xs])).to_tensor()
        return {"inputs": stack(inputs), "targets": stack(targets), "stream_ids": stack(ids),
                "keep": tf.stack(keep)}

    def kept(x):
        return x["keep"]

    def drop_flag(x):
        return {k: v for k, v in x.items() if k != "keep"}

    return ds.map(split, num_parallel_calls=tf.data.AUTOTUNE).unbatch().filter(kept).map(drop_flag)


def _model_features(row: Mapping[str, tf.Tensor], bos_id: int) -> dict[str, tf.Tensor]:
    targets, segments = row["targets"], row["targets_segment_ids"]
    return {
        schema.ENCODER_INPUT_TOKENS: row["inputs"],
        schema.ENCODER_SEGMENT_IDS: row["inputs_segment_ids"],
        schema.ENCODER_POSITIONS: row["inputs_positions"],
        schema.DECODER_INPUT_TOKENS: seqio.utils.make_autoregressive_inputs(targets, sequence_id=segments,
                                                                            bos_id=bos_id),
        schema.DECODER_TARGET_TOKENS: targets,
        schema.DECODER_SEGMENT_IDS: segments,
        schema.DECODER_POSITIONS: row["targets_positions"],
        schema.DECODER_LOSS_WEIGHTS: tf.cast(targets > 0, tf.int32),
        schema.DECODER_STREAM_IDS: row["stream_ids"],
    }


def pack_streams(ds: tf.data.Dataset, packed_lengths: Mapping[str, int], streams: tuple[str, ...],
                 bos_id: int = 0) -> tf.data.Dataset:
    """Trimmed task examples -> packed rows (unbatched), the layout of the module docstring.

    `packed_lengths` must come from `resolve_packed_lengths`, so that no segment is cut here.
    """
    lengths = {"inputs": int(packed_lengths["inputs"]), "targets": int(packed_lengths["targets"]),
               "stream_ids": int(packed_lengths["targets"])}
    packed = seqio.utils.trim_and_pack_dataset(stream_examples(ds, streams), lengths)
    return packed.map(lambda row: _model_features(row, bos_id), num_parallel_calls=tf.data.AUTOTUNE)


def count_omitted_rationales(rationale_lengths: np.ndarray) -> int:
    """Examples whose rationale target is only EOS (token count 1): no rationale segment is packed for them."""
    return int(np.sum(np.asarray(rationale_lengths) <= 1))


def packed_stats(rows: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Host-side statistics of packed rows [rows, length]: examples (label segments), segments, and the
    fraction of row tokens that are real (encoder, decoder)."""
    stream = np.asarray(rows[schema.DECODER_STREAM_IDS])
    starts = np.asarray(rows[schema.DECODER_POSITIONS]) == 0
    n_rows = stream.shape[0]
    return {
        "rows": float(n_rows),
        "examples": float(np.sum(starts & (stream == schema.LABEL_STREAM_ID))),
        "rationale_segments": float(np.sum(starts & (stream == schema.RATIONALE_STREAM_ID))),
        "encoder_fill": float(np.mean(np.asarray(rows[schema.ENCODER_SEGMENT_IDS]) > 0)),
        "decoder_fill": float(np.mean(np.asarray(rows[schema.DECODER_SEGMENT_IDS]) > 0)),
    }
