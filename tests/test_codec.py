"""The shared text path of evaluation, `sbs infer` and serving: prefix, cut, EOS from the vocabulary, padding;
decoding up to the first EOS."""
import numpy as np

from sbs_jax.data.vocab import codec
from sbs_jax.data import schema


class _Vocab:
    """Characters -> ids 10.. with non-T5 special ids, so nothing may assume EOS 1 or pad 0."""
    pad_id, eos_id = 3, 7

    def encode(self, text):
        return [10 + (ord(c) % 50) for c in text]

    def decode(self, ids):
        return "".join(chr(i - 10 + 32) for i in ids)


def test_encode_rows_prefix_cut_eos_pad():
    rows = codec.encode_rows(lambda t: [ord(c) for c in t], ["ab", "abcdef", ""], "x", 5, eos_id=1, pad_id=0)
    assert rows.dtype == np.int32 and rows.shape == (3, 5)
    assert rows.tolist() == [[120, 97, 98, 1, 0],          # prefix, text, EOS, padding
                             [120, 97, 98, 99, 1],         # cut to length - 1, then EOS
                             [120, 1, 0, 0, 0]]            # empty text: prefix and EOS


def test_encode_with_vocab_uses_the_stream_prefix_and_the_vocabulary_ids():
    vocab = _Vocab()
    label = codec.encode_with_vocab(vocab, ["ab"], schema.LABEL, 16)[0].tolist()
    rationale = codec.encode_with_vocab(vocab, ["ab"], schema.RATIONALE, 16)[0].tolist()
    n = len(schema.PREDICT_PREFIX) + 2
    assert label[:n] == vocab.encode(schema.PREDICT_PREFIX + "ab") and label[n] == 7 and set(label[n + 1:]) == {3}
    m = len(schema.EXPLAIN_PREFIX) + 2
    assert rationale[:m] == vocab.encode(schema.EXPLAIN_PREFIX + "ab") and rationale[m] == 7
    assert set(rationale[m + 1:]) == {3}


def test_decode_row_stops_at_the_first_eos_and_drops_padding():
    seen = []

    def decode(ids):
        seen.append(ids)
        return "|".join(map(str, ids))

    assert codec.decode_row(decode, np.array([5, 0, 6, 1, 8, 1, 0]), eos_id=1, pad_id=0) == "5|6"
    assert codec.decode_row(decode, [4, 4, 7, 9], eos_id=7, pad_id=3) == "4|4"
    assert codec.decode_row(decode, [3, 3], eos_id=7, pad_id=3) == "" and seen[-1] == []
