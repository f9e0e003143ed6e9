"""A numpy back end for training batches: tokenize once through SeqIO, then shuffle, pack and batch in numpy.

`pipeline.get_train_dataset` (tf.data) spends most of its time on per-example tf.data work after
tokenization (feature conversion, segment splitting, packing in `tf.while_loop`), every epoch. For tasks over
in-memory examples (`sources.InMemoryDataSource`: every task `register` builds from files or examples) this
module yields the very same batches (tests/test_host_pipeline.py compares them with the tf.data path) from
arrays built once:

1. `TokenizedSplit`: one pass of the registered SeqIO task (`task.get_dataset(shuffle=False, num_epochs=1)`,
   so every SeqIO preprocessor runs as registered) stored as padded int32 arrays plus true lengths.
2. `IndexStream`: the example order. SeqIO shuffles with `ds.repeat(num_epochs).shuffle(buffer, seed)` after
   1:1 maps only, and tf.data's shuffle picks by position, never by content, so the same shuffle over
   `range(n)` gives the same order.
3. `unpacked_batches` / `packed_batches`: the feature converter's and `packing.pack_streams`' layouts, built
   with vectorised numpy (packing: seqio's greedy rule over windows of max(row lengths) segments).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import numpy as np

from sbs_jax.data import schema
from sbs_jax.data.schema import STREAM_FEATURES, STREAM_IDS

_ORDER_CHUNK = 8192  # indices fetched from tf.data per call (one call per ~8k examples)


def supports(provider) -> bool:
    """Whether `provider` (a seqio Task or Mixture) can use this back end: a single task over in-memory examples
    (mixtures sample across tasks in tf.data; other sources may shuffle files or not know their size)."""
    import seqio

    from sbs_jax.data.sources import InMemoryDataSource

    return isinstance(provider, seqio.Task) and isinstance(provider.source, InMemoryDataSource)


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
    """Every example of one (shard of a) split after SeqIO preprocessing and trimming, in source order.

    tokens[f]: [examples, longest f] int32, zero-padded; lengths[f]: [examples] tokens before padding."""
    tokens: Mapping[str, np.ndarray]
    lengths: Mapping[str, np.ndarray]

    @property
    def num_examples(self) -> int:
        return int(next(iter(self.lengths.values())).shape[0])

    @classmethod
    def from_task(cls, task, *, split: str, sequence_length: Mapping[str, int], features: tuple[str, ...],
                  shard_info=None) -> "TokenizedSplit":
        ds = task.get_dataset(sequence_length=dict(sequence_length), split=split, shuffle=False, num_epochs=1,
                              shard_info=shard_info)
        ds = ds.map(lambda ex: {f: ex[f] for f in features}).ragged_batch(1024)
        rows: dict[str, list[np.ndarray]] = {f: [] for f in features}
        for chunk in ds.as_numpy_iterator():
            for f in features:
                rows[f].extend(chunk[f])  # RaggedTensorValue rows -> np arrays
        tokens, lengths = {}, {}
        for f in features:
            seqs = [np.asarray(r, np.int32) for r in rows[f]]
            lengths[f] = np.array([len(s) for s in seqs], np.int64)
            out = np.zeros((len(seqs), int(lengths[f].max(initial=0))), np.int32)
            for i, s in enumerate(seqs):
                out[i, :len(s)] = s
            tokens[f] = out
        return cls(tokens, lengths)


class IndexStream:
    """Example indices in the order `ds.repeat(num_epochs).shuffle(buffer_size, seed)` yields a dataset's
    elements (no shuffle: source order, repeated)."""

    def __init__(self, num_examples: int, *, shuffle: bool, buffer_size: int | None, seed: int | None,
                 num_epochs: int | None):
        import tensorflow as tf

        ds = tf.data.Dataset.range(num_examples)
        if num_epochs != 1:
            ds = ds.repeat(num_epochs)
        if shuffle:
            ds = ds.shuffle(buffer_size, seed=seed)
        self._chunks = ds.batch(_ORDER_CHUNK).as_numpy_iterator()
        self._buffer = np.zeros((0,), np.int64)

    def take(self, n: int) -> np.ndarray | None:
        """The next `n` indices, or None when fewer remain (finite epochs)."""
        while self._buffer.shape[0] < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return None
            self._buffer = np.concatenate([self._buffer, chunk])
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def _padded(split: TokenizedSplit, feature: str, idx: np.ndarray, length: int) -> np.ndarray:
    rows = split.tokens[feature][idx][:, :length]
    out = np.zeros((idx.shape[0], length), np.int32)
    out[:, :rows.shape[1]] = rows
    return out


def shift_right(targets: np.ndarray, bos_id: int, segment_ids: np.ndarray | None = None) -> np.ndarray:
    """`seqio.utils.make_autoregressive_inputs` on [rows, length] arrays."""
    inputs = np.concatenate([np.full_like(targets[:, :1], bos_id), targets[:, :-1]], axis=1)
    if segment_ids is not None:
        previous = np.concatenate([np.zeros_like(segment_ids[:, :1]), segment_ids[:, :-1]], axis=1)
        not_first = (segment_ids == previous).astype(targets.dtype)
        inputs = inputs * not_first + (1 - not_first) * bos_id
    return inputs


def unpacked_batches(split: TokenizedSplit, order: IndexStream, *, streams: tuple[str, ...],
                     lengths: Mapping[str, int], batch_size: int, bos_id: int = 0) -> Iterator[dict]:
    """`{stream: {encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights}}`
    batches, as `feature_converter` + `batch(drop_remainder=True)` + `nest` give them."""
    while (idx := order.take(batch_size)) is not None:
        batch = {}
        for stream in streams:
            in_key, tgt_key = STREAM_FEATURES[stream]
            targets = _padded(split, tgt_key, idx, lengths[tgt_key])
            weights = (targets > 0).astype(np.int32)
            if stream == schema.RATIONALE:  # only-EOS rationales: unparsed teacher output, no loss
                weights *= (split.lengths[tgt_key][idx] > 1).astype(np.int32)[:, None]
            batch[stream] = {schema.ENCODER_INPUT_TOKENS: _padded(split, in_key, idx, lengths[in_key]),
                             schema.DECODER_INPUT_TOKENS: shift_right(targets, bos_id),
                             schema.DECODER_TARGET_TOKENS: targets, schema.DECODER_LOSS_WEIGHTS: weights}
        yield batch


def _segments(split: TokenizedSplit, order: IndexStream, streams: tuple[str, ...]) -> Iterator[tuple]:
    """(example, stream id, inputs feature, targets feature, inputs length, targets length) per segment, in
    `packing.stream_examples` order: label_i, rationale_i (if parsed), label_i+1, ..."""
    features = [(STREAM_IDS[s], *STREAM_FEATURES[s]) for s in streams]
    # seqio's packer keeps the first count_nonzero(tokens) tokens of a segment.
    nonzero = {f: np.count_nonzero(split.tokens[f], axis=1) for _, a, b in features for f in (a, b)}
    while (idx := order.take(_ORDER_CHUNK)) is not None:
        for i in idx.tolist():
            for sid, in_key, tgt_key in features:
                if sid == STREAM_IDS[schema.RATIONALE] and split.lengths[tgt_key][i] <= 1:
                    continue
                yield i, sid, in_key, tgt_key, int(nonzero[in_key][i]), int(nonzero[tgt_key][i])


def _rows(segments: Iterator[tuple], enc_len: int, dec_len: int) -> Iterator[list[tuple]]:
    """seqio `trim_and_pack_dataset` (tf ops): windows of max(enc_len, dec_len) segments, each packed greedily
    (a segment that does not fit in the open row closes it); a window's last row is closed at its end."""
    window = max(enc_len, dec_len)
    while True:
        taken = [s for _, s in zip(range(window), segments)]
        if not taken:
            return
        row, n_in, n_tg = [], 0, 0
        for seg in taken:
            if n_in + seg[4] > enc_len or n_tg + seg[5] > dec_len:
                yield row
                row, n_in, n_tg = [], 0, 0
            row.append(seg)
            n_in, n_tg = n_in + seg[4], n_tg + seg[5]
        yield row
        if len(taken) < window:  # finite data: seqio's padded_batch keeps the short last window
            return


def packed_batches(split: TokenizedSplit, order: IndexStream, *, streams: tuple[str, ...],
                   packed_lengths: Mapping[str, int], batch_size: int, bos_id: int = 0) -> Iterator[dict]:
    """`{"packed": rows}` batches in the layout of `packing` (what `pack_streams` + `batch` give)."""
    enc_len, dec_len = int(packed_lengths["inputs"]), int(packed_lengths["targets"])
    rows = _rows(_segments(split, order, streams), enc_len, dec_len)
    while True:
        batch_rows = [r for _, r in zip(range(batch_size), rows)]
        if len(batch_rows) < batch_size:
            return
        enc = np.zeros((batch_size, enc_len), np.int32)
        enc_pos = np.zeros_like(enc)
        tgt = np.zeros((batch_size, dec_len), np.int32)
        tgt_pos, stream = np.zeros_like(tgt), np.zeros_like(tgt)
        for r, row in enumerate(batch_rows):
            a = b = 0
            for i, sid, in_key, tgt_key, n_in, n_tg in row:
                enc[r, a:a + n_in] = split.tokens[in_key][i, :n_in]
                enc_pos[r, a:a + n_in] = np.arange(n_in)
                tgt[r, b:b + n_tg] = split.tokens[tgt_key][i, :n_tg]
                tgt_pos[r, b:b + n_tg] = np.arange(n_tg)
                stream[r, b:b + n_tg] = sid
                a, b = a + n_in, b + n_tg
        # As seqio: a segment starts where the position is 0; padding (token 0) gets segment 0.
        enc_seg = np.cumsum(enc_pos == 0, axis=1, dtype=np.int32) * (enc != 0)
        tgt_seg = np.cumsum(tgt_pos == 0, axis=1, dtype=np.int32) * (tgt != 0)
        yield {schema.PACKED: {
            schema.ENCODER_INPUT_TOKENS: enc, schema.ENCODER_SEGMENT_IDS: enc_seg.astype(np.int32),
            schema.ENCODER_POSITIONS: enc_pos,
            schema.DECODER_INPUT_TOKENS: shift_right(tgt, bos_id, tgt_seg),
            schema.DECODER_TARGET_TOKENS: tgt, schema.DECODER_SEGMENT_IDS: tgt_seg.astype(np.int32),
            schema.DECODER_POSITIONS: tgt_pos, schema.DECODER_LOSS_WEIGHTS: (tgt > 0).astype(np.int32),
            schema.DECODER_STREAM_IDS: stream}}
