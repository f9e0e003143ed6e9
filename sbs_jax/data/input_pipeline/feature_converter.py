"""Feature converters from task features to the paired encoder-decoder arrays of ARCHITECTURE.md.

Both converters are `seqio.FeatureConverter`s, so `seqio.get_dataset(..., feature_converter=...)` works too.
Their flat output keys `label/<feature>` and `rationale/<feature>` become the nested batch
`{"label": {...}, "rationale": {...}}` in `sbs_jax.data.input_pipeline.pipeline`. These converters do not pack (packing
rows would break the row-by-row pairing of the two streams); packed training rows, where each (example,
stream) pair is its own segment, come from `sbs_jax.data.input_pipeline.packing`.

A rationale target that holds only EOS comes from an example whose teacher output did not parse (the source
stores ""); its rationale-stream loss weights are all zero, so no empty target is ever trained on, while its
label stream trains normally.
"""
from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from sbs_jax.data import schema
from sbs_jax.data.schema import STREAM_FEATURES, STREAM_KEYS

_Spec = seqio.FeatureConverter.FeatureSpec


def _pad(tokens: tf.Tensor, length: int) -> tf.Tensor:
    tokens = tokens[:length]
    return tf.pad(tokens, [[0, length - tf.shape(tokens)[0]]])


def _stream(inputs: tf.Tensor, targets: tf.Tensor, in_len: int, tgt_len: int, bos_id: int,
            keep: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    targets = _pad(targets, tgt_len)  # [tgt_len]
    weights = tf.cast(targets > 0, tf.int32)
    if keep is not None:
        weights = weights * tf.cast(keep, tf.int32)
    return {
        schema.ENCODER_INPUT_TOKENS: _pad(inputs, in_len),
        schema.DECODER_INPUT_TOKENS: seqio.utils.make_autoregressive_inputs(targets, bos_id=bos_id),
        schema.DECODER_TARGET_TOKENS: targets,
        schema.DECODER_LOSS_WEIGHTS: weights,
    }


class _StreamsConverter(seqio.FeatureConverter):
    STREAMS: tuple[str, ...] = ()
    PACKING_FEATURE_DTYPES = None

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError(f"{type(self).__name__} does not pack rows (that would break stream pairing); "
                             "use sbs_jax.data.input_pipeline.packing (get_train_dataset(..., pack=True))")
        super().__init__(pack=False, **kwargs)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        def convert(ex):
            out = {}
            for stream in self.STREAMS:
                in_key, tgt_key = STREAM_FEATURES[stream]
                # Only-EOS rationale targets mark unparsed teacher outputs (see the module docstring).
                keep = tf.size(ex[tgt_key]) > 1 if stream == schema.RATIONALE else None
                arrays = _stream(ex[in_key], ex[tgt_key], task_feature_lengths[in_key],
                                 task_feature_lengths[tgt_key], self.bos_id, keep)
                out.update({f"{stream}/{k}": v for k, v in arrays.items()})
            return out

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        lengths = {}
        for stream in self.STREAMS:
            in_key, tgt_key = STREAM_FEATURES[stream]
            lengths[f"{stream}/{schema.ENCODER_INPUT_TOKENS}"] = task_feature_lengths[in_key]
            for k in STREAM_KEYS[1:]:
                lengths[f"{stream}/{k}"] = task_feature_lengths[tgt_key]
        return lengths


class PairedFeatureConverter(_StreamsConverter):
    """Step-by-step tasks: task features inputs/targets/rationale_inputs/rationales -> both streams."""
    STREAMS = schema.STREAMS
    TASK_FEATURES = {k: _Spec(dtype=tf.int32) for k in ("inputs", "targets", "rationale_inputs", "rationales")}
    MODEL_FEATURES = {f"{s}/{k}": _Spec(dtype=tf.int32) for s in STREAMS for k in STREAM_KEYS}


class LabelFeatureConverter(_StreamsConverter):
    """Standard finetuning / distillation tasks: inputs/targets -> the label stream only."""
    STREAMS = (schema.LABEL,)
    TASK_FEATURES = {k: _Spec(dtype=tf.int32) for k in ("inputs", "targets")}
    MODEL_FEATURES = {f"{schema.LABEL}/{k}": _Spec(dtype=tf.int32) for k in STREAM_KEYS}


def nest(flat: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """{"label/x": a, "rationale/x": b} -> {"label": {"x": a}, "rationale": {"x": b}}."""
    out: dict[str, dict[str, object]] = {}
    for key, value in flat.items():
        stream, name = key.split("/", 1)
        out.setdefault(stream, {})[name] = value
    return out
