"""Synthetic packed paired batches with the measured CQA length distribution (no seqio/TF).

Each paired example has two segments: its `predict:` inputs with its label (stream 1) and its `explain:`
inputs with its rationale (stream 2). Per-example lengths are drawn, with a fixed seed, from the joint
histogram that `python -m bench.shapes --histogram bench/cqa_lengths.json` measured on CQA train (so an
example's four lengths stay together), and segments are packed first-fit into rows of `enc_len` encoder and
`dec_len` decoder tokens. A segment occupies one row: its encoder tokens and its decoder tokens share a
segment id (ids restart at 1 per row, positions at 0 per segment), decoder inputs are the targets shifted
right within each segment. Token ids are random: content does not change the work.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

HISTOGRAM = pathlib.Path(__file__).with_name("cqa_lengths.json")
FIELDS = ("inputs", "explain_inputs", "targets", "rationales")


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """Rows of `enc_len` encoder / `dec_len` decoder tokens. 512 / 192 follows the measured CQA token ratio:
    an example has 93.8 encoder tokens (both prefixes) for 32.8 decoder tokens (label + rationale), 2.9 : 1."""
    enc_len: int = 512
    dec_len: int = 192


@dataclasses.dataclass
class PackedBatch:
    arrays: dict              # {"packed": {name: [rows, length] int32}}
    examples: int             # paired examples packed (each is two segments)
    segments: list            # (encoder length, decoder length) of every segment


def load_histogram(path: pathlib.Path = HISTOGRAM) -> tuple[np.ndarray, np.ndarray]:
    """(lengths [distinct, 4] in FIELDS order, probabilities [distinct])."""
    data = json.loads(path.read_text())
    if tuple(data["fields"]) != FIELDS:
        raise ValueError(f"{path}: expected fields {FIELDS}, found {data['fields']}")
    counts = np.asarray(data["counts"], np.int64)
    return counts[:, :4], counts[:, 4] / counts[:, 4].sum()


def sample_lengths(num: int, seed: int, path: pathlib.Path = HISTOGRAM) -> np.ndarray:
    """[num, 4] per-example lengths drawn from the measured joint histogram."""
    lengths, probs = load_histogram(path)
    return lengths[np.random.default_rng(seed).choice(len(lengths), size=num, p=probs)]


def pack(lengths: np.ndarray, rows: int, layout: PackedLayout) -> tuple[list[list[tuple]], int]:
    """First-fit packing of examples, in order, into `rows` rows until an example's two segments no longer both
    fit. Returns (per row, its segments as (example, stream, encoder length, decoder length)), examples used."""
    free = [[layout.enc_len, layout.dec_len] for _ in range(rows)]
    placed: list[list[tuple]] = [[] for _ in range(rows)]
    for index, (inp, explain, target, rationale) in enumerate(lengths):
        chosen = []
        for stream, enc, dec in ((1, int(inp), int(target)), (2, int(explain), int(rationale))):
            row = next((r for r in range(rows) if free[r][0] >= enc and free[r][1] >= dec), None)
            if row is None:
                for r, _, e, d in chosen:  # undo the example's first segment
                    free[r][0] += e
                    free[r][1] += d
                    placed[r].pop()
                return placed, index
            free[row][0] -= enc
            free[row][1] -= dec
            placed[row].append((index, stream, enc, dec))
            chosen.append((row, stream, enc, dec))
    return placed, len(lengths)


def build_arrays(placed: list[list[tuple]], layout: PackedLayout, vocab: int, rng: np.random.Generator) -> dict:
    """The `{"packed": {...}}` batch of packed rows."""
    rows = len(placed)
    enc = {k: np.zeros((rows, layout.enc_len), np.int32) for k in ("encoder_input_tokens", "encoder_segment_ids",
                                                                   "encoder_positions")}
    dec = {k: np.zeros((rows, layout.dec_len), np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions",
        "decoder_loss_weights", "decoder_stream_ids")}
    for r, segments in enumerate(placed):
        e = d = 0
        for segment_id, (_, stream, enc_n, dec_n) in enumerate(segments, start=1):
            tokens = rng.integers(2, vocab, enc_n).astype(np.int32)
            tokens[-1] = 1  # EOS
            enc["encoder_input_tokens"][r, e:e + enc_n] = tokens
            enc["encoder_segment_ids"][r, e:e + enc_n] = segment_id
            enc["encoder_positions"][r, e:e + enc_n] = np.arange(enc_n)
            targets = rng.integers(2, vocab, dec_n).astype(np.int32)
            targets[-1] = 1
            dec["decoder_target_tokens"][r, d:d + dec_n] = targets
            dec["decoder_input_tokens"][r, d + 1:d + dec_n] = targets[:-1]  # shifted right; start token 0
            dec["decoder_segment_ids"][r, d:d + dec_n] = segment_id
            dec["decoder_positions"][r, d:d + dec_n] = np.arange(dec_n)
            dec["decoder_loss_weights"][r, d:d + dec_n] = 1
            dec["decoder_stream_ids"][r, d:d + dec_n] = stream
            e, d = e + enc_n, d + dec_n
    return {"packed": {**enc, **dec}}


def packed_batches(num_batches: int, rows: int, layout: PackedLayout, vocab: int, seed: int = 0) -> list[PackedBatch]:
    """`num_batches` consecutive batches of `rows` packed rows over one seeded stream of sampled examples."""
    lengths = sample_lengths(max(64, 4 * rows * layout.enc_len // 90) * num_batches, seed)
    rng = np.random.default_rng(seed + 1)
    out, start = [], 0
    for _ in range(num_batches):
        placed, used = pack(lengths[start:], rows, layout)
        if used == 0:
            raise ValueError(f"no example fits a row of {layout.enc_len}/{layout.dec_len} tokens")
        segments = [(enc_n, dec_n) for row in placed for (_, _, enc_n, dec_n) in row]
        out.append(PackedBatch(build_arrays(placed, layout, vocab, rng), used, segments))
        start += used
    return out


def rows_for_examples(examples: int, layout: PackedLayout, multiple: int = 1, seed: int = 0,
                      probe_batches: int = 8) -> int:
    """Rows per batch (a multiple of `multiple`, the data-parallel devices) whose packing of the measured
    lengths holds closest to `examples` examples per batch on average over `probe_batches` batches."""
    def mean_examples(rows: int) -> float:
        return float(np.mean([b.examples for b in packed_batches(probe_batches, rows, layout, 8, seed)]))

    per_row = mean_examples(4 * multiple) / (4 * multiple)
    guess = max(multiple, int(round(examples / per_row / multiple)) * multiple)
    candidates = [r for r in (guess - multiple, guess, guess + multiple) if r >= multiple]
    return min(candidates, key=lambda r: abs(mean_examples(r) - examples))
