"""The numpy work of the host pipeline's units: one unpacked unit of examples, one packing window.

Imports numpy (and the plain-Python `schema`) only: the worker processes of `host_workers` run these, and
`host_pipeline` runs the very same functions in-thread (workers=0), so every worker count gives the same arrays.
A kernel takes the tokenized arrays (`tokens[f]`, `lengths[f]`), the unit's payload and static options, and
returns `{name: int32 array}` whose leading axis is rows.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from sbs_jax.data import schema
from sbs_jax.data.schema import STREAM_FEATURES, STREAM_IDS


def shift_right(targets: np.ndarray, bos_id: int, segment_ids: np.ndarray | None = None) -> np.ndarray:
    """`seqio.utils.make_autoregressive_inputs` on [rows, length] arrays."""
    inputs = np.concatenate([np.full_like(targets[:, :1], bos_id), targets[:, :-1]], axis=1)
    if segment_ids is not None:
        previous = np.concatenate([np.zeros_like(segment_ids[:, :1]), segment_ids[:, :-1]], axis=1)
        not_first = (segment_ids == previous).astype(targets.dtype)
        inputs = inputs * not_first + (1 - not_first) * bos_id
    return inputs


def _padded(tokens: np.ndarray, idx: np.ndarray, length: int) -> np.ndarray:
    rows = tokens[idx][:, :length]
    out = np.zeros((idx.shape[0], length), np.int32)
    out[:, :rows.shape[1]] = rows
    return out


def unpacked_rows(tokens: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray], idx: np.ndarray, *,
                  streams: tuple[str, ...], feature_lengths: Mapping[str, int], bos_id: int) -> dict:
    """Rows `idx` as `feature_converter` gives them: `{"stream/key": [len(idx), length]}`."""
    out = {}
    for stream in streams:
        in_key, tgt_key = STREAM_FEATURES[stream]
        targets = _padded(tokens[tgt_key], idx, feature_lengths[tgt_key])
        weights = (targets > 0).astype(np.int32)
        if stream == schema.RATIONALE:  # only-EOS rationales: unparsed teacher output, no loss
            weights *= (lengths[tgt_key][idx] > 1).astype(np.int32)[:, None]
        out[f"{stream}/{schema.ENCODER_INPUT_TOKENS}"] = _padded(tokens[in_key], idx, feature_lengths[in_key])
        out[f"{stream}/{schema.DECODER_INPUT_TOKENS}"] = shift_right(targets, bos_id)
        out[f"{stream}/{schema.DECODER_TARGET_TOKENS}"] = targets
        out[f"{stream}/{schema.DECODER_LOSS_WEIGHTS}"] = weights
    return out


def segments(nonzero: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray], idx: np.ndarray,
             streams: tuple[str, ...]) -> np.ndarray:
    """[segments, 4] int32 (example, stream position in `streams`, input tokens, target tokens) for examples
    `idx`, in `packing.stream_examples` order: label_i, rationale_i (if parsed), label_i+1, ...
    `nonzero[f]`: count_nonzero of each example's feature f (seqio's packer keeps that many tokens)."""
    cols = []
    keep = []
    for pos, stream in enumerate(streams):
        in_key, tgt_key = STREAM_FEATURES[stream]
        cols.append(np.stack([idx, np.full_like(idx, pos), nonzero[in_key][idx], nonzero[tgt_key][idx]], axis=1))
        keep.append(lengths[tgt_key][idx] > 1 if stream == schema.RATIONALE else np.ones(idx.shape, bool))
    table = np.stack(cols, axis=1).reshape(-1, 4)  # example-major: each example's streams in order
    return table[np.stack(keep, axis=1).reshape(-1)].astype(np.int32)  # half the bytes sent to workers


def _row_plan(segs: np.ndarray, enc_len: int, dec_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """seqio's greedy rule over each window (column 4 of `segs`): a segment that does not fit in the open row
    closes it; a window's last row closes at the window's end. (row, input offset, target offset) per segment,
    and the number of rows."""
    n_in, n_tg = segs[:, 2].astype(np.int64), segs[:, 3].astype(np.int64)
    breaks = []  # segments that open a new row (after the first); the only per-segment Python loop
    a = b = 0
    window = int(segs[0, 4]) if len(segs) else 0
    for s, (i, t, w) in enumerate(zip(n_in.tolist(), n_tg.tolist(), segs[:, 4].tolist())):
        a, b = a + i, b + t
        if w != window or a > enc_len or b > dec_len:
            breaks.append(s)
            a, b, window = i, t, w
    opens = np.zeros(len(segs), bool)
    opens[breaks] = True
    row_of = np.cumsum(opens)
    first = np.concatenate([[0], np.asarray(breaks, np.int64)])  # first segment of each row

    def offsets(n: np.ndarray) -> np.ndarray:  # tokens before the segment in its row
        before = np.cumsum(n) - n
        return before - before[first][row_of]

    return row_of, offsets(n_in), offsets(n_tg), len(breaks) + 1


def _coords(rows: np.ndarray, offsets: np.ndarray, counts: np.ndarray):
    """For every token of every segment at once: (row, column, position j < count, segment index)."""
    starts = np.cumsum(counts) - counts
    seg = np.repeat(np.arange(len(counts)), counts)
    j = np.arange(int(counts.sum())) - starts[seg]
    return rows[seg], offsets[seg] + j, j, seg


def packed_rows(tokens: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray], segs: np.ndarray, *,
                streams: tuple[str, ...], enc_len: int, dec_len: int, bos_id: int) -> dict:
    """The rows of one or more consecutive packing windows in the layout of `packing` (what `pack_streams`
    gives). `segs`: [segments, 5] (`segments`' columns, then the window's number)."""
    del lengths  # the segment table already holds the lengths seqio's packer uses
    row_of, a_of, b_of, n_rows = _row_plan(segs, enc_len, dec_len)
    enc = np.zeros((n_rows, enc_len), np.int32)
    enc_pos = np.zeros_like(enc)
    tgt = np.zeros((n_rows, dec_len), np.int32)
    tgt_pos, stream = np.zeros_like(tgt), np.zeros_like(tgt)
    for pos, name in enumerate(streams):
        in_key, tgt_key = STREAM_FEATURES[name]
        m = segs[:, 1] == pos
        ex = segs[m, 0]
        r, c, j, seg = _coords(row_of[m], a_of[m], segs[m, 2])
        enc[r, c], enc_pos[r, c] = tokens[in_key][ex[seg], j], j
        r, c, j, seg = _coords(row_of[m], b_of[m], segs[m, 3])
        tgt[r, c], tgt_pos[r, c], stream[r, c] = tokens[tgt_key][ex[seg], j], j, STREAM_IDS[name]
    # As seqio: a segment starts where the position is 0; padding (token 0) gets segment 0.
    enc_seg = (np.cumsum(enc_pos == 0, axis=1, dtype=np.int32) * (enc != 0)).astype(np.int32)
    tgt_seg = (np.cumsum(tgt_pos == 0, axis=1, dtype=np.int32) * (tgt != 0)).astype(np.int32)
    return {schema.ENCODER_INPUT_TOKENS: enc, schema.ENCODER_SEGMENT_IDS: enc_seg,
            schema.ENCODER_POSITIONS: enc_pos,
            schema.DECODER_INPUT_TOKENS: shift_right(tgt, bos_id, tgt_seg),
            schema.DECODER_TARGET_TOKENS: tgt, schema.DECODER_SEGMENT_IDS: tgt_seg,
            schema.DECODER_POSITIONS: tgt_pos, schema.DECODER_LOSS_WEIGHTS: (tgt > 0).astype(np.int32),
            schema.DECODER_STREAM_IDS: stream}


KERNELS = {"unpacked": unpacked_rows, "packed": packed_rows}
