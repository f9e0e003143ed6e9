"""`seqio.SentencePieceVocabulary` that reads the literal `</s>` as EOS, like HF's T5 tokenizer (eos_marker)."""
from __future__ import annotations

import seqio

from sbs_jax.data.vocab import eos_marker


class T5Vocabulary(seqio.SentencePieceVocabulary):
    """T5's SentencePiece vocabulary; `</s>` inside a text becomes the EOS id instead of the pieces `<`, `/s`, `>`."""

    def __eq__(self, other):
        # seqio compares state only; a plain SentencePieceVocabulary of the same file encodes `</s>` differently.
        return type(other) is type(self) and super().__eq__(other)

    __hash__ = seqio.SentencePieceVocabulary.__hash__

    def _encode(self, s):
        return eos_marker.encode(lambda parts: self.tokenizer.encode(parts), [s], eos_id=self.eos_id)[0]

    def _encode_tf(self, s):
        return eos_marker.encode_tf(self.tf_tokenizer.tokenize, s, eos_id=self.eos_id)

    def encode_batch(self, texts) -> list[list[int]]:
        """Ids of many texts in one SentencePiece call (no EOS appended)."""
        return eos_marker.encode(lambda parts: self.tokenizer.encode(parts), list(texts), eos_id=self.eos_id)
