"""Causal-LM (decoder-only) rows from the tokenized task features, in one of three formats (numpy only).

The task features are the ones every step-by-step task has after SeqIO (`inputs` = label prefix + x,
`targets` = label, `rationale_inputs` = explain prefix + x, `rationales`), each ending with the task
vocabulary's EOS. A causal sequence is `[BOS] prompt completion EOS` with the model's BOS (None: no BOS, as
Qwen2) and EOS; the vocabulary's EOS is stripped from every feature first. Formats (`schema.CAUSAL_FORMATS`):

- `multitask` (the paper's): two sequences per example, `[BOS] inputs label EOS` (stream "label") and
  `[BOS] rationale_inputs rationale EOS` (stream "rationale"); batch `{"label": rows, "rationale": rows}`.
- `rationale_first` (chain of thought): one sequence `[BOS] inputs rationale MARKER label EOS`.
- `label_first` (post-thinking): one sequence `[BOS] inputs label MARKER rationale EOS`.
  One-sequence batches are `{"sequence": rows}`; `MARKER` is `schema.FORMAT_MARKERS[format]` tokenized.

Rows (`schema.CAUSAL_KEYS`, [rows, length] int32): `decoder_tokens` (the sequence without its last token),
`decoder_target_tokens` (without its first), `decoder_loss_weights` (1 on targets in the completion or EOS,
0 on prompt targets and padding), `decoder_stream_ids` (on weighted targets: 1 for label tokens, the marker
that introduces or ends the label, and EOS after a label; 2 for rationale tokens and EOS after a rationale),
`decoder_positions` (0.. on real tokens), `decoder_valid` (1 on real tokens). An unparsed teacher output
(empty rationale) keeps its sequence, with no weighted rationale target. Label-only tasks (finetune,
distill) give the label stream only, whatever the format.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from sbs_jax.data import schema

_NO_STREAM = 0


@dataclasses.dataclass(frozen=True)
class CausalLayout:
    """How task features become causal sequences.

    format: one of `schema.CAUSAL_FORMATS`.
    eos_id: the model's end-of-sequence id (ends every completion, so decoding stops).
    bos_id: the model's begin-of-sequence id, or None where the family adds none (Qwen2).
    source_eos_id: the task vocabulary's EOS that ends each tokenized feature (stripped).
    marker: the tokens of `schema.FORMAT_MARKERS[format]` (one-sequence formats only).
    """
    format: str = schema.MULTITASK
    eos_id: int = 1
    bos_id: int | None = None
    source_eos_id: int = 1
    marker: tuple[int, ...] = ()

    def __post_init__(self):
        if self.format not in schema.CAUSAL_FORMATS:
            raise ValueError(f"causal format: expected one of {schema.CAUSAL_FORMATS}, got {self.format!r}")
        if self.format != schema.MULTITASK and not self.marker:
            raise ValueError(f"causal format {self.format!r} needs the tokens of its marker "
                             f"{schema.FORMAT_MARKERS[self.format]!r} between label and rationale")

    def groups(self, paired: bool) -> tuple[str, ...]:
        """Batch keys of this layout: the streams (multitask, label-only tasks) or the one sequence."""
        if not paired:
            return (schema.LABEL,)
        return schema.STREAMS if self.format == schema.MULTITASK else (schema.SEQUENCE,)

    def row_lengths(self, task_feature_lengths: Mapping[str, int], paired: bool) -> dict[str, int]:
        """Row length per batch key that holds any example the task lengths allow: prompt (<= inputs - 1),
        completion parts (<= their length - 1 each), BOS, marker and EOS, minus the shift."""
        li, lt = int(task_feature_lengths["inputs"]), int(task_feature_lengths["targets"])
        bos = 0 if self.bos_id is None else 1
        if not paired:
            return {schema.LABEL: li + lt - 1 + bos}
        lr = int(task_feature_lengths["rationales"])
        if self.format == schema.MULTITASK:
            return {schema.LABEL: li + lt - 1 + bos, schema.RATIONALE: li + lr - 1 + bos}
        return {schema.SEQUENCE: li + lt + lr - 2 + bos + len(self.marker)}


def layout_for(causal_format: str, vocab, *, eos_ids: Sequence[int], bos_id: int | None) -> CausalLayout:
    """The layout of a model (its EOS ids and the BOS it starts sequences with: `DecoderConfig.eos_ids`,
    `.prompt_bos_id`) over a task vocabulary; the vocabulary's EOS must be one of the model's, or generations
    would never end where the text does."""
    if vocab.eos_id not in tuple(eos_ids):
        raise ValueError(f"the task vocabulary ends texts with id {vocab.eos_id}, the model's eos_ids are "
                         f"{tuple(eos_ids)}; set the model's eos_ids to include {vocab.eos_id} (or use the "
                         "model's own tokenizer)")
    marker = ()
    if causal_format in schema.FORMAT_MARKERS:
        marker = tuple(int(t) for t in vocab.encode(schema.FORMAT_MARKERS[causal_format]))
    return CausalLayout(causal_format, eos_id=int(vocab.eos_id), bos_id=bos_id, source_eos_id=int(vocab.eos_id),
                        marker=marker)


def _strip_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    tokens = np.asarray(tokens, np.int32)
    return tokens[:-1] if tokens.size and tokens[-1] == eos_id else tokens


def example_parts(features: Mapping[str, np.ndarray], layout: CausalLayout,
                  paired: bool) -> dict[str, list[tuple[np.ndarray, int, int]]]:
    """Per batch key, the sequence as (tokens, loss weight, stream id) parts, before shifting."""
    strip = lambda key: _strip_eos(features[key], layout.source_eos_id)  # noqa: E731
    eos = np.array([layout.eos_id], np.int32)
    head = [] if layout.bos_id is None else [(np.array([layout.bos_id], np.int32), 0, _NO_STREAM)]
    label = schema.LABEL_STREAM_ID
    rationale = schema.RATIONALE_STREAM_ID
    prompt = head + [(strip("inputs"), 0, _NO_STREAM)]
    if not paired:
        return {schema.LABEL: prompt + [(strip("targets"), 1, label), (eos, 1, label)]}
    marker = np.array(layout.marker, np.int32)
    if layout.format == schema.MULTITASK:
        reason = strip("rationales")
        # An unparsed teacher output (empty rationale) keeps its row with no weighted target, as T5 rows do.
        weight = 1 if reason.size else 0
        return {schema.LABEL: prompt + [(strip("targets"), 1, label), (eos, 1, label)],
                schema.RATIONALE: head + [(strip("rationale_inputs"), 0, _NO_STREAM), (reason, weight, rationale),
                                          (eos, weight, rationale)]}
    if layout.format == schema.RATIONALE_FIRST:
        parts = [(strip("rationales"), 1, rationale), (marker, 1, label), (strip("targets"), 1, label), (eos, 1, label)]
    else:
        parts = [(strip("targets"), 1, label), (marker, 1, label), (strip("rationales"), 1, rationale),
                 (eos, 1, rationale)]
    return {schema.SEQUENCE: prompt + parts}


def sequence_arrays(parts: Sequence[tuple[np.ndarray, int, int]]) -> dict[str, np.ndarray]:
    """One sequence's parts -> its unpadded row (`schema.CAUSAL_KEYS`, length = tokens - 1)."""
    tokens = np.concatenate([p[0] for p in parts]).astype(np.int32)
    weights = np.concatenate([np.full(len(p[0]), p[1], np.int32) for p in parts])
    streams = np.concatenate([np.full(len(p[0]), p[2] if p[1] else _NO_STREAM, np.int32) for p in parts])
    n = tokens.shape[0] - 1
    return {schema.DECODER_TOKENS: tokens[:-1], schema.DECODER_TARGET_TOKENS: tokens[1:],
            schema.DECODER_LOSS_WEIGHTS: weights[1:], schema.DECODER_STREAM_IDS: streams[1:],
            schema.DECODER_POSITIONS: np.arange(n, dtype=np.int32), schema.DECODER_VALID: np.ones(n, np.int32)}


def causal_rows(examples: Sequence[Mapping[str, np.ndarray]], layout: CausalLayout, *, paired: bool,
                lengths: Mapping[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """Examples' task features -> `{batch key: {causal key: [len(examples), lengths[key]] int32}}`, zero-padded.

    A sequence longer than its row is an error naming the example (the task lengths bound every sequence;
    `CausalLayout.row_lengths` gives rows that hold them)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in layout.groups(paired):
        out[key] = {k: np.zeros((len(examples), int(lengths[key])), np.int32) for k in schema.CAUSAL_KEYS}
    for i, features in enumerate(examples):
        for key, parts in example_parts(features, layout, paired).items():
            row = sequence_arrays(parts)
            n = row[schema.DECODER_TOKENS].shape[0]
            if n > lengths[key]:
                raise ValueError(f"causal row of example {i} ({key}) has {n} tokens; the row length is "
                                 f"{lengths[key]} (CausalLayout.row_lengths gives lengths that hold the task's)")
            for k, v in row.items():
                out[key][k][i, :n] = v
    return out


def packable_sequences(examples: Sequence[Mapping[str, np.ndarray]], layout: CausalLayout, *, paired: bool,
                       row_length: int) -> list[dict[str, np.ndarray]]:
    """Examples' sequences as unpadded rows in data order (label_i, rationale_i, label_i+1, ... for multitask).
    A sequence with no weighted target (the rationale sequence of an unparsed teacher output) is left out, as
    the T5 packer leaves out such segments: it would add no loss and only take room. A sequence longer than a
    row is an error naming the example."""
    out = []
    for i, features in enumerate(examples):
        for key, parts in example_parts(features, layout, paired).items():
            row = sequence_arrays(parts)
            n = row[schema.DECODER_TOKENS].shape[0]
            if n > row_length:
                raise ValueError(f"causal sequence of example {i} ({key}) has {n} tokens; packed rows hold "
                                 f"{row_length}")
            if row[schema.DECODER_LOSS_WEIGHTS].any():
                out.append(row)
    return out


class GreedyPacker:
    """Packs sequences greedily in the order added into rows of `row_length` tokens: a sequence that does not
    fit closes the row. Rows are the same however the sequences are split between calls of `add`, so a
    stream of examples packs to the same rows whatever chunks it is read in."""

    def __init__(self, row_length: int):
        self.row_length = int(row_length)
        self.closed: list[list[dict[str, np.ndarray]]] = []
        self._open: list[dict[str, np.ndarray]] = []
        self._used = 0

    def add(self, sequences: Sequence[dict[str, np.ndarray]]) -> None:
        for seq in sequences:
            n = seq[schema.DECODER_TOKENS].shape[0]
            if self._open and self._used + n > self.row_length:
                self.closed.append(self._open)
                self._open, self._used = [], 0
            self._open.append(seq)
            self._used += n

    def flush(self) -> None:
        """Closes the open row (the end of the data)."""
        if self._open:
            self.closed.append(self._open)
            self._open, self._used = [], 0

    def take(self, count: int) -> list[list[dict[str, np.ndarray]]]:
        """The first `count` closed rows (removed)."""
        rows, self.closed = self.closed[:count], self.closed[count:]
        return rows


def row_arrays(rows: Sequence[Sequence[dict[str, np.ndarray]]], row_length: int) -> dict[str, np.ndarray]:
    """Rows of sequences -> `{causal key + decoder_segment_ids: [len(rows), row_length]}`, zero-padded: each
    sequence is one segment (ids 1, 2, ... from each row's start, 0 on padding), positions restart at 0."""
    keys = schema.CAUSAL_KEYS + (schema.DECODER_SEGMENT_IDS,)
    out = {k: np.zeros((len(rows), row_length), np.int32) for k in keys}
    for r, row in enumerate(rows):
        start = 0
        for s, seg in enumerate(row, start=1):
            n = seg[schema.DECODER_TOKENS].shape[0]
            for k, v in seg.items():
                out[k][r, start:start + n] = v
            out[schema.DECODER_SEGMENT_IDS][r, start:start + n] = s
            start += n
    return out


def packed_rows(examples: Sequence[Mapping[str, np.ndarray]], layout: CausalLayout, *, paired: bool,
                row_length: int) -> dict[str, dict[str, np.ndarray]]:
    """Examples' sequences (`packable_sequences`) packed greedily in data order (`GreedyPacker`) into
    `{"packed": {causal key + decoder_segment_ids: [rows, row_length]}}` (`row_arrays`). With segment-masked
    attention the per-stream losses equal the unpacked rows' (tests/test_causal_packing.py)."""
    packer = GreedyPacker(row_length)
    packer.add(packable_sequences(examples, layout, paired=paired, row_length=row_length))
    packer.flush()
    return {schema.PACKED: row_arrays(packer.closed, row_length)}


def default_packed_length(row_lengths: Mapping[str, int]) -> int:
    """Rows with the capacity of one unpacked example: the sum of its rows' lengths (label + rationale rows
    for multitask, the one sequence's row otherwise; `CausalLayout.row_lengths`). A packed batch of B rows
    then costs about what an unpacked batch of B examples costs in the dense layers, as T5's default."""
    return sum(int(v) for v in row_lengths.values())


PACKED_LENGTH_KEY = "decoder"


def resolve_packed_length(row_lengths: Mapping[str, int], packed_lengths: Mapping[str, int] | None) -> int:
    """The packed row length of decoder-only runs from `TrainConfig.packed_lengths` (`{"decoder": L}`, None for
    `default_packed_length`), checked to hold the longest sequence the task lengths allow."""
    need = max(int(v) for v in row_lengths.values())
    if packed_lengths is None:
        return default_packed_length(row_lengths)
    if set(packed_lengths) != {PACKED_LENGTH_KEY}:
        raise ValueError(f"TrainConfig.packed_lengths (PACKED_LENGTHS): decoder-only rows have one length, "
                         f"expected {{'{PACKED_LENGTH_KEY}': L}}, got keys {sorted(packed_lengths)}")
    length = int(packed_lengths[PACKED_LENGTH_KEY])
    if length < need:
        raise ValueError(f"TrainConfig.packed_lengths['{PACKED_LENGTH_KEY}'] = {length} is shorter than one "
                         f"causal sequence may be after trimming ({need} tokens from TASK_FEATURE_LENGTHS, "
                         f"CausalLayout.row_lengths); expected at least {need}")
    return length
