"""SentencePiece vocabularies with T5's ids (pad 0, eos 1, unk 2); `sbs vocab train`
(`sbs_jax.commands.vocab`) trains one from the command line.

No pretrained vocabulary is reachable offline, so from-scratch students and tests train one from a task's
text. Training is single-threaded on the text in its given order, which makes the model file byte-identical
for the same text, size and seed.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from typing import Iterable, Sequence

from etils import epath

from sbs_jax.errors import InputError


# T5 checkpoints reserve 100 sentinel ids for span corruption; distillation never emits them, so vocabularies
# here default to none (decoding maps any id past the vocabulary to unk). Pass extra_ids=100 for T5's 32100.
DEFAULT_EXTRA_IDS = 0
SPIECE_FILENAME = "spiece.model"


def load_vocabulary(vocabulary, *, extra_ids: int = DEFAULT_EXTRA_IDS):
    """A seqio vocabulary from a vocabulary object or a path (checked): a spiece.model (or a directory holding
    one) gives a `T5Vocabulary`; a Hugging Face `tokenizer.json` (or a directory holding one and no
    spiece.model) gives an `HfTokenizerVocabulary` (sbs_jax/data/vocab/hf_tokenizer_vocabulary.py)."""
    import seqio

    from sbs_jax.data.vocab import hf_tokenizer_vocabulary as hf_vocab
    from sbs_jax.data.vocab.t5_vocabulary import T5Vocabulary

    if type(vocabulary) is seqio.SentencePieceVocabulary:  # noqa: E721 - subclasses keep their own encoding
        # Same model, but `</s>` in a text encodes as EOS like HF's T5 tokenizer (sbs_jax/data/vocab/eos_marker.py).
        vocabulary = T5Vocabulary(vocabulary.sentencepiece_model_file, extra_ids=vocabulary.extra_ids)
    if isinstance(vocabulary, seqio.Vocabulary):
        return vocabulary
    if vocabulary is None or vocabulary == "":
        raise ValueError("no vocabulary given: pass a SentencePiece model path (e.g. T5's spiece.model, or set "
                         "SPIECE_MODEL) or a Hugging Face tokenizer.json, or train one with `sbs vocab train`")
    path = epath.Path(vocabulary).expanduser()  # a local path or gs:// (read via tf.io.gfile)
    if path.is_dir() and not (path / SPIECE_FILENAME).is_file() and hf_vocab.is_tokenizer_json(path):
        return hf_vocab.HfTokenizerVocabulary(path)
    if path.is_dir():
        path = path / SPIECE_FILENAME
    if hf_vocab.is_tokenizer_json(path):
        return hf_vocab.HfTokenizerVocabulary(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SentencePiece model not found (expected a spiece.model file, or a "
                                "Hugging Face tokenizer.json)")
    vocab = T5Vocabulary(str(path), extra_ids=extra_ids)
    try:
        ids = (vocab.pad_id, vocab.eos_id, vocab.unk_id)  # the first read parses the model file
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, SentencePiece's RuntimeError, ...
        raise InputError(f"{path}: not a SentencePiece model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         "); expected a spiece.model file (train one with `sbs vocab train`)") from None
    if ids != (0, 1, 2):
        raise ValueError(f"{path}: pad/eos/unk ids are {ids}, expected T5's (0, 1, 2); train with "
                         "pad_id=0, eos_id=1, unk_id=2, bos_id=-1 (as `sbs vocab train` does)")
    return vocab


def train_vocabulary(texts: Iterable[str], output_dir, *, vocab_size: int, seed: int = 0,
                     model_type: str = "unigram", character_coverage: float = 1.0) -> pathlib.Path:
    """Train `<output_dir>/spiece.model` from texts; returns its path. Same inputs -> same file."""
    import sentencepiece as spm

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [t.replace("\n", " ").strip() for t in texts]
    lines = [t for t in lines if t]
    if not lines:
        raise ValueError("no text to train a vocabulary on")
    with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
        corpus = pathlib.Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(pathlib.Path(tmp) / "spiece"), vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, pad_id=0, eos_id=1, unk_id=2,
            bos_id=-1, num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
            hard_vocab_limit=False, minloglevel=2)
        _strip_paths(pathlib.Path(tmp) / "spiece.model")
        target = output_dir / SPIECE_FILENAME
        os.replace(pathlib.Path(tmp) / "spiece.model", target)  # atomic: concurrent hosts see whole files
    return target


def model_texts(examples) -> list[str]:
    """The text a model sees of each example: both prefixed inputs, the label and the rationale."""
    from sbs_jax.data.schema import EXPLAIN_PREFIX, PREDICT_PREFIX

    return [t for ex in examples for t in (PREDICT_PREFIX + ex.input, EXPLAIN_PREFIX + ex.input, ex.label,
                                           ex.rationale, ex.teacher_label) if t]


def _strip_paths(path: pathlib.Path) -> None:
    """Drop the temporary corpus/prefix paths SentencePiece records, so the file depends on content only."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(path.read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = "spiece"
    path.write_bytes(proto.SerializeToString())


def cached_vocabulary(texts: Sequence[str], *, vocab_size: int, seed: int = 0, cache_dir=None,
                      tag: str = "vocab", model_type: str = "unigram") -> pathlib.Path:
    """Train once per (texts, size, seed, type) and reuse from `cache_dir` (default `~/.cache/sbs_jax`)."""
    digest = hashlib.sha256("\n".join(texts).encode("utf-8"))
    digest.update(f"{vocab_size}/{seed}/{model_type}".encode())
    root = pathlib.Path(cache_dir or os.environ.get("SBS_CACHE_DIR", "~/.cache/sbs_jax")).expanduser()
    folder = root / f"{tag}_{vocab_size}_{digest.hexdigest()[:12]}"
    path = folder / SPIECE_FILENAME
    if not path.is_file():
        train_vocabulary(texts, folder, vocab_size=vocab_size, seed=seed, model_type=model_type)
    return path


def copy_vocabulary(vocabulary, output_dir) -> epath.Path:
    """Copy a vocabulary's SentencePiece model, or its tokenizer.json with the tokenizer_config.json and
    config.json beside it (they hold the special tokens), into `output_dir` (e.g. MODEL_DIR/vocab); returns
    the path `load_vocabulary` reads back."""
    vocab = load_vocabulary(vocabulary)
    from sbs_jax import run_dir
    from sbs_jax.data.vocab import hf_tokenizer_vocabulary as hf_vocab

    if isinstance(vocab, hf_vocab.HfTokenizerVocabulary):
        for name in reversed(hf_vocab.VOCABULARY_FILES):  # tokenizer.json last: it marks a complete copy
            source = vocab.path if name == hf_vocab.TOKENIZER_FILENAME else vocab.path.parent / name
            if source.is_file():
                run_dir.atomic_copy(source, epath.Path(output_dir) / name)
        return epath.Path(output_dir) / hf_vocab.TOKENIZER_FILENAME
    # Atomic: a run directory never holds half a vocabulary, even if the copy is interrupted.
    return run_dir.atomic_copy(vocab.sentencepiece_model_file, epath.Path(output_dir) / SPIECE_FILENAME)
