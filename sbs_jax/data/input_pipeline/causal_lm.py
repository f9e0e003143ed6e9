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
- `multitask_shared_prompt`: the paper's two streams with each stream's prefix after the input, so both share
  the prompt `[BOS] x`; one tree-shaped row per example, `[BOS] x | label-prefix label EOS | explain-prefix
  rationale EOS` (`{"sequence": rows}` plus `decoder_branch_ids`: 0 on the shared prompt, the stream id on
  each completion branch, whose positions continue from the prompt's end). With `DecoderLM(branch_ids=)` each
  branch sees the prompt and itself only, so the per-stream losses are those of the two sequences
  `[BOS] x label-prefix label EOS` and `[BOS] x explain-prefix rationale EOS`, with the prompt computed once.
  Generation runs the label branch: prompt `[BOS] x label-prefix` (`label_prompt`).

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
    label_prefix, rationale_prefix: the tokens the label / rationale stream's inputs start with (the task's
    prefixes tokenized; `multitask_shared_prompt` only, which moves them after the input).
    """
    format: str = schema.MULTITASK
    eos_id: int = 1
    bos_id: int | None = None
    source_eos_id: int = 1
    marker: tuple[int, ...] = ()
    label_prefix: tuple[int, ...] = ()
    rationale_prefix: tuple[int, ...] = ()

    def __post_init__(self):
        if self.format not in schema.CAUSAL_FORMATS:
            raise ValueError(f"causal format: expected one of {schema.CAUSAL_FORMATS}, got {self.format!r}")
        if self.format in schema.FORMAT_MARKERS and not self.marker:
            raise ValueError(f"causal format {self.format!r} needs the tokens of its marker "
                             f"{schema.FORMAT_MARKERS[self.format]!r} between label and rationale")

    def groups(self, paired: bool) -> tuple[str, ...]:
        """Batch keys of this layout: the streams (multitask, label-only tasks) or the one sequence."""
        if not paired:
            return (schema.LABEL,)
        return schema.STREAMS if self.format == schema.MULTITASK else (schema.SEQUENCE,)

    def tree_rows(self, paired: bool) -> bool:
        """Whether rows are tree-shaped (shared prompt, one branch per stream: `decoder_branch_ids`)."""
        return paired and self.format == schema.MULTITASK_SHARED_PROMPT

    def row_keys(self, paired: bool) -> tuple[str, ...]:
        """The arrays of each row."""
        return schema.CAUSAL_KEYS + ((schema.DECODER_BRANCH_IDS,) if self.tree_rows(paired) else ())

    @property
    def generates_rationale(self) -> bool:
        """Whether a generation from the label prompt holds the rationale too (the one-sequence formats)."""
        return self.format in schema.FORMAT_MARKERS

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
        if self.tree_rows(paired):
            # x <= inputs minus the longer prefix; each branch drops its own last token (+1 where a branch's first
            # token is a weighted target, so the last prompt token is repeated in every branch: `tree_arrays`).
            pl, pr = len(self.label_prefix), len(self.rationale_prefix)
            return {schema.SEQUENCE: li + lt + lr - 2 + bos + min(pl, pr) + (1 if min(pl, pr) == 0 else 0)}
        return {schema.SEQUENCE: li + lt + lr - 2 + bos + len(self.marker)}


def layout_for(causal_format: str, vocab, *, eos_ids: Sequence[int], bos_id: int | None,
               prefixes: tuple[str, str] = (schema.PREDICT_PREFIX, schema.EXPLAIN_PREFIX)) -> CausalLayout:
    """The layout of a model (its EOS ids and the BOS it starts sequences with: `DecoderConfig.eos_ids`,
    `.prompt_bos_id`) over a task vocabulary; the vocabulary's EOS must be one of the model's, or generations
    would never end where the text does. `prefixes`: the task's (label, rationale) stream prefixes, which
    `multitask_shared_prompt` moves after the input (a SentencePiece vocabulary tokenizes `prefix + x` as
    `prefix` then `x`; `shared_prompt_row` checks it on every example)."""
    if vocab.eos_id not in tuple(eos_ids):
        raise ValueError(f"the task vocabulary ends texts with id {vocab.eos_id}, the model's eos_ids are "
                         f"{tuple(eos_ids)}; set the model's eos_ids to include {vocab.eos_id} (or use the "
                         "model's own tokenizer)")
    marker = ()
    if causal_format in schema.FORMAT_MARKERS:
        marker = tuple(int(t) for t in vocab.encode(schema.FORMAT_MARKERS[causal_format]))
    label_prefix = rationale_prefix = ()
    if causal_format == schema.MULTITASK_SHARED_PROMPT:
        label_prefix, rationale_prefix = (tuple(int(t) for t in vocab.encode(p)) for p in prefixes)
    return CausalLayout(causal_format, eos_id=int(vocab.eos_id), bos_id=bos_id, source_eos_id=int(vocab.eos_id),
                        marker=marker, label_prefix=label_prefix, rationale_prefix=rationale_prefix)


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
    if layout.format == schema.MULTITASK_SHARED_PROMPT:
        if paired:
            raise ValueError("multitask_shared_prompt rows are trees, not sequences: build them with "
                             "causal_rows (example_rows); packing does not take them")
        prompt = [(np.asarray(label_prompt(layout, strip("inputs")), np.int32), 0, _NO_STREAM)]
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


def _after_prefix(tokens: np.ndarray, prefix: tuple[int, ...], feature: str) -> np.ndarray:
    if tuple(int(t) for t in tokens[:len(prefix)]) != prefix:
        raise ValueError(f"{feature} does not start with the stream prefix tokens {list(prefix)} (starts "
                         f"{tokens[:len(prefix)].tolist()}); the layout's prefixes must be the task's (layout_for)")
    return tokens[len(prefix):]


def label_prompt(layout: CausalLayout, label_inputs: Sequence[int]) -> list[int]:
    """The label stream's prompt, from which generation starts: `[BOS] + label_inputs` (the vocabulary's EOS
    stripped), or for `multitask_shared_prompt` `[BOS] x label-prefix` (the prefix moved after the input)."""
    head = [] if layout.bos_id is None else [layout.bos_id]
    tokens = np.asarray(label_inputs, np.int32)
    if layout.format == schema.MULTITASK_SHARED_PROMPT:
        tokens = np.concatenate([_after_prefix(tokens, layout.label_prefix, "inputs"),
                                 np.asarray(layout.label_prefix, np.int32)])
    return head + [int(t) for t in tokens]


def shared_prompt_parts(features: Mapping[str, np.ndarray], layout: CausalLayout):
    """(the shared prompt `[BOS] x`, {branch id: the branch's parts}) of a `multitask_shared_prompt` example:
    branch 1 `label-prefix label EOS`, branch 2 `explain-prefix rationale EOS`, as (tokens, weight, stream)."""
    strip = lambda key: _strip_eos(features[key], layout.source_eos_id)  # noqa: E731
    if layout.label_prefix == layout.rationale_prefix:
        raise ValueError(f"multitask_shared_prompt: both streams have the prefix tokens {list(layout.label_prefix)}; "
                         "the branches would have the same prompt (the streams need different prefixes)")
    x = _after_prefix(strip("inputs"), layout.label_prefix, "inputs")
    x_rationale = _after_prefix(strip("rationale_inputs"), layout.rationale_prefix, "rationale_inputs")
    if not np.array_equal(x, x_rationale):
        raise ValueError(f"inputs and rationale_inputs differ after their prefixes ({x.size} and "
                         f"{x_rationale.size} tokens): the prompt cannot be shared (a truncated input? raise the "
                         "inputs length)")
    head = [] if layout.bos_id is None else [(np.array([layout.bos_id], np.int32), 0, _NO_STREAM)]
    eos = np.array([layout.eos_id], np.int32)
    reason = strip("rationales")
    weight = 1 if reason.size else 0  # an unparsed teacher output: the branch stays, with no weighted target
    label, rationale = schema.LABEL_STREAM_ID, schema.RATIONALE_STREAM_ID
    branches = {
        label: [(np.asarray(layout.label_prefix, np.int32), 0, _NO_STREAM), (strip("targets"), 1, label),
                (eos, 1, label)],
        rationale: [(np.asarray(layout.rationale_prefix, np.int32), 0, _NO_STREAM), (reason, weight, rationale),
                    (eos, weight, rationale)]}
    return head + [(x, 0, _NO_STREAM)], branches


def tree_arrays(prompt: Sequence[tuple[np.ndarray, int, int]],
                branches: Mapping[int, Sequence[tuple[np.ndarray, int, int]]]) -> dict[str, np.ndarray]:
    """One tree-shaped row: each branch's own sequence `prompt + branch` shifted (`sequence_arrays`), the
    prompt's slots once (branch id 0), then each branch's remaining slots (its id), positions continuing from
    the prompt's. The last prompt slot predicts each branch's first token; it is shared only where no branch
    weights that target (a prompt target), else every branch repeats the last prompt token."""
    rows = {b: sequence_arrays(list(prompt) + list(parts)) for b, parts in branches.items()}
    n = sum(len(p[0]) for p in prompt)
    shared = n if n and all(r[schema.DECODER_LOSS_WEIGHTS][n - 1] == 0 for r in rows.values()) else max(n - 1, 0)
    first = next(iter(rows.values()))
    out = {k: [v[:shared]] for k, v in first.items()}
    out[schema.DECODER_BRANCH_IDS] = [np.zeros(shared, np.int32)]
    for b, row in rows.items():
        for k, v in row.items():
            out[k].append(v[shared:])
        out[schema.DECODER_BRANCH_IDS].append(np.full(row[schema.DECODER_TOKENS].shape[0] - shared, b, np.int32))
    return {k: np.concatenate(v).astype(np.int32) for k, v in out.items()}


def example_rows(features: Mapping[str, np.ndarray], layout: CausalLayout,
                 paired: bool) -> dict[str, dict[str, np.ndarray]]:
    """Per batch key, the example's unpadded row (`CausalLayout.row_keys`)."""
    if layout.tree_rows(paired):
        return {schema.SEQUENCE: tree_arrays(*shared_prompt_parts(features, layout))}
    return {key: sequence_arrays(parts) for key, parts in example_parts(features, layout, paired).items()}


def causal_rows(examples: Sequence[Mapping[str, np.ndarray]], layout: CausalLayout, *, paired: bool,
                lengths: Mapping[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """Examples' task features -> `{batch key: {causal key: [len(examples), lengths[key]] int32}}`, zero-padded.

    A sequence longer than its row is an error naming the example (the task lengths bound every sequence;
    `CausalLayout.row_lengths` gives rows that hold them)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in layout.groups(paired):
        out[key] = {k: np.zeros((len(examples), int(lengths[key])), np.int32) for k in layout.row_keys(paired)}
    for i, features in enumerate(examples):
        try:
            rows = example_rows(features, layout, paired)
        except ValueError as e:
            raise ValueError(f"causal rows of example {i}: {e}") from e
        for key, row in rows.items():
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
