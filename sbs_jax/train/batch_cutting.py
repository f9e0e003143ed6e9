"""Training batch cutting: each unpacked global batch cut to a few bucket lengths (`TrainConfig.cut_batches`).

Batches come padded to TASK_FEATURE_LENGTHS, while their rows are usually much shorter (CQA: inputs up to
~72 tokens in a batch, labels ~5, rationales ~46, against the paper recipe's 1,024 / 256 / 256). The
official PyTorch code pads each batch to its longest example; here each global batch is cut to the smallest
bucket length (`min_length · 2^k`, or multiples of a step, capped at the padded length) that holds every
row's real tokens, so only a few shapes compile. The encoder features of all streams share one length (the
fused objective needs equal encoder shapes; the two streams' inputs differ by a prefix word), and each
stream's decoder features get their own.

Only columns no kept position can see are cut: encoder columns where every encoder feature is 0, and decoder
columns where targets and loss weights are 0. The decoder's attention mask comes from the targets, so such a
position is invisible to every real one; its input token (the last target shifted right) feeds only itself.
T5's relative position biases depend on distances, not on the padded length, so loss and gradients are those
of the full-length batch (tests/test_batch_cutting.py).

Causal rows of decoder-only students (`causal_lm`: every feature `decoder_*`) are cut the same way, each batch
key (`label`, `rationale`, `sequence`) to its own length: a row's real length is one past the last non-zero
value of any of its features (`decoder_valid` is 1 on every real token, even a token id 0), and what follows
it is padding that no real position attends to under the causal mask; positions are explicit (RoPE), so
the kept positions' logits, the loss and the gradients are the full-length batch's
(tests/test_causal_batch_cutting.py).

Every process must cut to the same lengths, but each holds only its rows of the global batch: the processes
exchange their needed lengths (one all-gather of a few int32 per step, `agree_lengths`) and all take the max.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import numpy as np

from sbs_jax.data import schema
from sbs_jax.train import decode_batching

ENCODER = "encoder"  # the length group of every stream's encoder features
# Not read for the needed length: the targets shifted right, so its last real token sits one column past the
# targets' and feeds only that (masked) position.
_DECODER_INPUTS = schema.DECODER_INPUT_TOKENS


def _group(stream: str, key: str) -> str:
    if key.startswith("encoder_"):
        return ENCODER
    if key.startswith("decoder_"):
        return stream
    raise ValueError(f"length bucketing: batch feature {stream}/{key} is neither an encoder_* nor a "
                     f"decoder_* feature, so its length axis is unknown")


def needed_lengths(batch: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, int]:
    """{"encoder": n, <stream>: n, ...}: the longest real row of these rows in each length group (0 when
    every row is empty). A row's real length is one past its last non-zero value."""
    out: dict[str, int] = {}
    for stream, features in batch.items():
        for key, value in features.items():
            group = _group(stream, key)
            length = 0 if key == _DECODER_INPUTS else int(decode_batching.row_lengths(value).max(initial=0))
            out[group] = max(out.get(group, 0), length)
    return out


def full_lengths(batch: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, int]:
    """The padded length of each group, checked to be one length per group."""
    out: dict[str, int] = {}
    for stream, features in batch.items():
        for key, value in features.items():
            group = _group(stream, key)
            if out.setdefault(group, value.shape[1]) != value.shape[1]:
                raise ValueError(f"length bucketing: {stream}/{key} has length {value.shape[1]}, other "
                                 f"{group!r} features have {out[group]}")
    return out


def agree_lengths(lengths: Mapping[str, int], allgather: Callable | None = None) -> dict[str, int]:
    """The max over processes of each group's needed length (this process's alone with one process).

    Every process calls this once per step, in step order: one all-gather of len(lengths) int32 values,
    which waits for the device work queued before it (the multi-process loop already waits for every step).
    """
    if jax.process_count() == 1 and allgather is None:
        return dict(lengths)
    if allgather is None:
        from jax.experimental import multihost_utils

        allgather = multihost_utils.process_allgather
    names = sorted(lengths)
    mine = np.asarray([lengths[n] for n in names], np.int32)  # [groups]
    gathered = np.asarray(allgather(mine)).reshape(-1, len(names))  # [processes, groups]
    return {n: int(v) for n, v in zip(names, gathered.max(axis=0))}


def train_bucket_lengths(full_length: int, min_length: int, step: int | None = None) -> tuple[int, ...]:
    """The lengths a group may be cut to: `min_length · 2^k` (`decode_batching.bucket_lengths`), or with `step`,
    `min_length` then the multiples of `step` above it; both end at `full_length`."""
    if step is None:
        return decode_batching.bucket_lengths(full_length, min_length)
    if step < 1 or min_length < 1:
        raise ValueError(f"bucket lengths need positive lengths, got min_length={min_length}, step={step}")
    first = min(min_length, full_length)
    multiples = range((first // step + 1) * step, full_length, step)
    return (first, *multiples, full_length) if first < full_length else (full_length,)


def choose_lengths(needed: Mapping[str, int], full: Mapping[str, int], min_length: int,
                   step: int | None = None) -> dict[str, int]:
    """Per group, the smallest of `train_bucket_lengths(full, min_length, step)` holding `needed` tokens."""
    out = {}
    for group, length in needed.items():
        if length > full[group]:
            raise ValueError(f"length bucketing: {group!r} needs {length} tokens, more than its padded "
                             f"length {full[group]}")
        out[group] = next(b for b in train_bucket_lengths(full[group], min_length, step) if b >= length)
    return out


def cut_batch(batch: Mapping[str, Mapping[str, np.ndarray]], lengths: Mapping[str, int]) -> dict:
    """Every feature cut to its group's length (contiguous copies of the kept columns)."""
    return {s: {k: np.ascontiguousarray(v[:, :lengths[_group(s, k)]]) for k, v in features.items()}
            for s, features in batch.items()}


def shape_key(batch: Mapping[str, Mapping[str, np.ndarray]]) -> tuple:
    """A hashable description of a batch's shapes and dtypes: one compiled step per key."""
    return tuple(sorted((s, k, v.shape, str(v.dtype)) for s, f in batch.items() for k, v in f.items()))


@dataclasses.dataclass
class BatchCutter:
    """Cuts each process-local batch to the bucket lengths every process agrees on, and counts what it saves.

    `step`: None for power-of-two buckets, else buckets at multiples of `step` (`train_bucket_lengths`).
    `allgather` replaces `multihost_utils.process_allgather` (tests). `padded` / `kept` accumulate this
    process's token positions (rows × length of `encoder_input_tokens` and `decoder_target_tokens`, summed
    over streams) before and after cutting.
    """
    min_length: int = 16
    step: int | None = None
    allgather: Callable | None = None
    padded: int = 0
    kept: int = 0

    def __call__(self, batch: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
        full = full_lengths(batch)
        needed = agree_lengths(needed_lengths(batch), self.allgather)
        lengths = choose_lengths(needed, full, self.min_length, self.step)
        cut = cut_batch(batch, lengths)
        self.padded += _token_positions(batch)
        self.kept += _token_positions(cut)
        return cut


def _token_positions(batch) -> int:
    keys = (schema.ENCODER_INPUT_TOKENS, schema.DECODER_TARGET_TOKENS)
    return sum(f[k].size for f in batch.values() for k in keys if k in f)
