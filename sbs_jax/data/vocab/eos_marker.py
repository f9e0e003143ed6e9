"""The literal `</s>` in a text is EOS, as HF's T5 tokenizer reads it.

The official step-by-step code joins an NLI premise and hypothesis with `tokenizer.eos_token`, so its students
see an EOS id between the two. Splitting a text at every marker, tokenising the parts with SentencePiece and
joining them with EOS gives HF's ids exactly (tests/test_eos_marker.py). Every tokenisation path of ours goes
through here (seqio tasks via `T5Vocabulary`, `sbs infer`, evaluation, the exported servers), so a served
`premise</s>hypothesis` string is encoded as the student was trained.
"""
from __future__ import annotations

from typing import Callable, Sequence

EOS_MARKER = "</s>"


def encode(encode_many: Callable[[list[str]], Sequence[Sequence[int]]], texts: Sequence[str], *,
           eos_id: int = 1) -> list[list[int]]:
    """Ids of each text (no final EOS); `encode_many` tokenises a list of marker-free strings in one call."""
    parts = [text.split(EOS_MARKER) for text in texts]
    flat = list(encode_many([p for ps in parts for p in ps]))
    out, k = [], 0
    for ps in parts:
        ids: list[int] = []
        for j in range(len(ps)):
            if j:
                ids.append(eos_id)
            ids.extend(int(i) for i in flat[k])
            k += 1
        out.append(ids)
    return out


def encode_tf(tokenize, texts, *, eos_id: int = 1):
    """In-graph `encode`: a string scalar -> [tokens] int32, or [batch] strings -> ragged [batch, (tokens)].

    `tokenize` maps a ragged [batch, (parts)] string tensor to ragged [batch, (parts), (tokens)] ids
    (tensorflow_text's SentencepieceTokenizer.tokenize does).
    """
    import tensorflow as tf

    texts = tf.convert_to_tensor(texts, tf.string)
    scalar = texts.shape.rank == 0
    if scalar:
        texts = tf.reshape(texts, [1])
    parts = tf.strings.split(texts, sep=EOS_MARKER)  # [batch, (parts)]
    ids = tf.cast(tokenize(parts), tf.int32)  # [batch, (parts), (tokens)]
    eos = tf.expand_dims(parts.with_flat_values(tf.fill(tf.shape(parts.flat_values), eos_id)), axis=2)
    # EOS after every part, then drop the one after the last part.
    ids = tf.concat([ids, eos], axis=2).merge_dims(1, 2)[:, :-1]  # [batch, (tokens)]
    return ids[0] if scalar else ids
