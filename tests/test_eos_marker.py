"""`</s>` in a text encodes as EOS everywhere, exactly as HF's T5 tokenizer reads it (official NLI inputs)."""
import json

import numpy as np
import pytest
import sentencepiece as spm

from sbs_jax import tasks
from sbs_jax.data.records import arith
from sbs_jax.data.vocab import eos_marker
from sbs_jax.data.records import data_dir as records
from sbs_jax.data.vocab import sentencepiece_vocab as vocab
from sbs_jax.export import serving

TEXTS = ["predict: 3 apples</s>2 more", "a </s> b", "a</s>", "</s>b", "no marker at all", "x</s></s>y",
         "predict: Tom has 4 pens.</s>Tom has more than 2 pens.", ""]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    texts = vocab.model_texts(arith.generate_splits(seed=0, sizes={"train": 300})["train"])
    return str(vocab.train_vocabulary(texts, tmp_path_factory.mktemp("vocab"), vocab_size=200))  # unigram, as T5


def _by_parts(sp, text):
    """The rule spelled out: parts tokenised alone, EOS between them."""
    out = []
    for j, part in enumerate(text.split("</s>")):
        out += ([1] if j else []) + sp.EncodeAsIds(part)
    return out


def test_equals_hf_t5_tokenizer(spiece, tmp_path):
    from transformers import AutoTokenizer

    (tmp_path / "spiece.model").write_bytes(open(spiece, "rb").read())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    v = vocab.load_vocabulary(spiece)
    sp = spm.SentencePieceProcessor(model_file=spiece)
    for text in TEXTS:
        expected = hf(text).input_ids  # ends with EOS
        assert list(v.encode(text)) + [1] == expected, text
        assert _by_parts(sp, text) + [1] == expected, text
    assert 1 in hf(TEXTS[0]).input_ids[:-1]  # the marker really is an inner EOS, not pieces


def test_every_path_agrees(spiece):
    import tensorflow as tf
    import tensorflow_text as tf_text

    v = vocab.load_vocabulary(spiece)
    sp = spm.SentencePieceProcessor(model_file=spiece)
    expected = [_by_parts(sp, t) for t in TEXTS]
    assert v.encode_batch(TEXTS) == expected
    assert [v.encode_tf(tf.constant(t)).numpy().tolist() for t in TEXTS] == expected  # scalar (seqio)
    tokenizer = tf_text.SentencepieceTokenizer(model=open(spiece, "rb").read(), out_type=tf.int32)
    batched = eos_marker.encode_tf(tokenizer.tokenize, tf.constant(TEXTS)).to_list()  # SavedModel path
    assert batched == expected
    rows = serving.encode_inputs(sp, TEXTS, "", 16)  # numpy serving path: cut, EOS, pad
    for row, ids in zip(rows, expected):
        ids = ids[:15] + [1]
        assert row.tolist() == ids + [0] * (16 - len(ids))


def test_plain_seqio_vocabulary_is_upgraded_and_not_equal(spiece):
    import seqio

    plain = seqio.SentencePieceVocabulary(spiece)
    ours = vocab.load_vocabulary(plain)
    assert type(ours).__name__ == "T5Vocabulary" and ours.vocab_size == plain.vocab_size
    assert ours != plain and ours == vocab.load_vocabulary(spiece)
    assert 1 not in plain.encode("a</s>b") and 1 in ours.encode("a</s>b")


def test_nli_task_inputs_have_eos_between_premise_and_hypothesis(datasets_dir, spiece):
    import seqio

    names = tasks.register_paper_tasks(str(datasets_dir), datasets=["esnli"], vocabulary=spiece,
                                       variants=("sbs",))
    raw = [json.loads(line) for line in open(datasets_dir / "esnli" / "esnli_valid.json")][:5]
    assert records.read_split(datasets_dir, "esnli", "valid").examples[0].input == (
        raw[0]["premise"] + "</s>" + raw[0]["hypothesis"])
    sp = spm.SentencePieceProcessor(model_file=spiece)
    ds = seqio.get_mixture_or_task(names[0]).get_dataset(
        sequence_length={"inputs": 512, "targets": 8, "rationale_inputs": 512, "rationales": 256},
        split="valid", shuffle=False, num_epochs=1)
    for ex, r in zip(ds.as_numpy_iterator(), raw):
        premise, hypothesis = sp.EncodeAsIds("predict: " + r["premise"]), sp.EncodeAsIds(r["hypothesis"])
        np.testing.assert_array_equal(ex["inputs"], premise + [1] + hypothesis + [1])
        explain = sp.EncodeAsIds("explain: " + r["premise"]) + [1] + hypothesis + [1]
        np.testing.assert_array_equal(ex["rationale_inputs"], explain)
