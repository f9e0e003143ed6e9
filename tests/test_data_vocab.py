"""SentencePiece vocabularies: T5 ids, reproducible training, and `sbs vocab train`."""
import pytest

from sbs_jax.commands import vocab as vocab_cmd
from sbs_jax.data.records import arith
from sbs_jax.data.vocab import sentencepiece_vocab as vocab


def test_training_is_reproducible_with_t5_ids(tmp_path):
    texts = vocab.model_texts(arith.generate_splits(seed=0, sizes={"train": 300})["train"])
    a = vocab.train_vocabulary(texts, tmp_path / "a", vocab_size=200, seed=0, model_type="bpe")
    b = vocab.train_vocabulary(texts, tmp_path / "b", vocab_size=200, seed=0, model_type="bpe")
    assert a.read_bytes() == b.read_bytes()
    v = vocab.load_vocabulary(a)
    assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
    assert v.decode(v.encode("predict: Tom has 3 apples.")) == "predict: Tom has 3 apples."


def test_cli_trains_from_a_dataset(tmp_path, datasets_dir, capsys):
    assert vocab_cmd.main(["train", "--dataset", "svamp", "--data_dir", str(datasets_dir), "--output_dir",
                       str(tmp_path), "--vocab_size", "500"]) == 0
    assert "500 pieces" in capsys.readouterr().out
    assert vocab.load_vocabulary(tmp_path).vocab_size == 500


def test_missing_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        vocab.load_vocabulary(tmp_path / "nothing" / "spiece.model")
    with pytest.raises(ValueError, match="no vocabulary given"):
        vocab.load_vocabulary(None)
