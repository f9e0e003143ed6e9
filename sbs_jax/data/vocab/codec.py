"""Raw text <-> the encoder rows and decoded strings of one stream, shared by evaluation, `sbs infer` and
serving (numpy side), so the three encode and decode the same way.

Encoding is the training pipeline's: the stream's prefix (`schema.PREFIXES`), tokenised, cut to
`length - 1` tokens, EOS appended (seqio's `append_eos_after_trim`), padded. Decoding cuts at the first
EOS and drops padding. Both take the tokeniser as a function, so a seqio vocabulary and a bare
SentencePiece processor go through the same code.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sbs_jax.data import schema


def encode_rows(encode: Callable[[str], Sequence[int]], texts: Sequence[str], prefix: str, length: int, *,
                eos_id: int, pad_id: int = 0) -> np.ndarray:
    """[len(texts), length] int32: `prefix + text` tokenised by `encode`, cut to `length - 1` ids, EOS
    appended, padded with `pad_id`."""
    rows = np.full((len(texts), length), pad_id, np.int32)
    for i, text in enumerate(texts):
        ids = list(encode(prefix + text))[:length - 1] + [eos_id]
        rows[i, :len(ids)] = ids
    return rows


def encode_with_vocab(vocab, texts: Sequence[str], stream: str, length: int, *,
                      prefix: str | None = None) -> np.ndarray:
    """`encode_rows` with the stream's prefix (`schema.PREFIXES`, or `prefix`: the one a run trained with) and
    a seqio vocabulary's tokeniser, EOS and pad ids."""
    prefix = schema.PREFIXES[stream] if prefix is None else prefix
    return encode_rows(vocab.encode, texts, prefix, length, eos_id=vocab.eos_id, pad_id=vocab.pad_id)


def decode_row(decode: Callable[[list[int]], str], ids: Sequence[int], *, eos_id: int, pad_id: int = 0) -> str:
    """The text of one decoded row: ids up to the first EOS, padding dropped, through `decode`."""
    ids = [int(t) for t in ids]
    if eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return decode([t for t in ids if t != pad_id])
