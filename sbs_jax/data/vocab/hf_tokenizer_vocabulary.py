"""A `seqio.Vocabulary` over a Hugging Face `tokenizer.json` (Llama 3, Qwen2, Gemma students), encoding and
decoding as `transformers.AutoTokenizer` does on the same directory.

- Special ids by name: `tokenizer_config.json`'s `bos_token`/`eos_token`/`pad_token`/`unk_token` (what
  AutoTokenizer uses), mapped to ids through `tokenizer.json`; `config.json`'s `bos_token_id`/`eos_token_id`/
  `pad_token_id` fill what it lacks (the first id where a list is given). EOS is required.
- No pad token (Llama 3): `pad_id` is EOS, as HF's recipes set `pad_token = eos_token`. Our batches mark
  padding with explicit masks, never by comparing ids to `pad_id`, so the choice only fills unused positions.
- Encoding adds no BOS or EOS (`add_special_tokens=False`): the pipeline appends EOS itself
  (`append_eos_after_trim`), and the causal-LM objective adds the family's BOS (`bos_id`) where it needs one.
  A special token's literal text in the input (e.g. `<|end_of_text|>`) encodes as that token, as in HF.
- Decoding drops every special token (`skip_special_tokens=True`) after seqio's cut at the first EOS, and
  applies `clean_up_tokenization_spaces` only where transformers does (not for BPE models).
- Equality and hash: the content of `tokenizer.json` and the resolved special ids.
- The TF ops (`encode_tf`/`decode_tf`) call the Rust tokenizer through `tf.numpy_function`: they run in
  seqio's tf.data pipeline, but cannot be saved into a SavedModel graph.
"""
from __future__ import annotations

import hashlib
import json

import seqio
from etils import epath

TOKENIZER_FILENAME = "tokenizer.json"
TOKENIZER_CONFIG_FILENAME = "tokenizer_config.json"
MODEL_CONFIG_FILENAME = "config.json"
# The files a run directory keeps of such a vocabulary (`copy_vocabulary`), in the order they are read.
VOCABULARY_FILES = (TOKENIZER_FILENAME, TOKENIZER_CONFIG_FILENAME, MODEL_CONFIG_FILENAME)


def is_tokenizer_json(path) -> bool:
    """Whether `path` names an HF tokenizer: a `*.json` file, or a directory holding `tokenizer.json`."""
    path = epath.Path(path)
    return path.name.endswith(".json") or (path.is_dir() and (path / TOKENIZER_FILENAME).is_file())


def _read_json(path: epath.Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_name(value):
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


class HfTokenizerVocabulary(seqio.Vocabulary):
    """`tokenizer.json` (path to the file or its directory) with the special ids of the files beside it."""

    def __init__(self, path):
        from tokenizers import Tokenizer

        path = epath.Path(path).expanduser()
        if path.is_dir():
            path = path / TOKENIZER_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found (expected a Hugging Face tokenizer.json)")
        self._path = path
        self._content = path.read_bytes()
        try:
            self._tokenizer = Tokenizer.from_str(self._content.decode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"{path}: not a Hugging Face tokenizer.json ({e})") from None
        folder = path.parent
        tok_config = folder / TOKENIZER_CONFIG_FILENAME
        model_config = folder / MODEL_CONFIG_FILENAME
        tok = _read_json(tok_config) if tok_config.is_file() else {}
        model = _read_json(model_config) if model_config.is_file() else {}

        def special(name: str):
            token = _token_name(tok.get(f"{name}_token"))
            if token is not None:
                token_id = self._tokenizer.token_to_id(token)
                if token_id is None:
                    raise ValueError(f"{tok_config}: {name}_token {token!r} is not a token of {path}")
                return token_id
            token_id = model.get(f"{name}_token_id")
            if isinstance(token_id, list):
                token_id = token_id[0] if token_id else None
            if token_id is not None and not 0 <= int(token_id) < self._tokenizer.get_vocab_size(True):
                raise ValueError(f"{model_config}: {name}_token_id {token_id} is outside the vocabulary of {path}")
            return None if token_id is None else int(token_id)

        self._bos_id, self._eos_id, pad_id = special("bos"), special("eos"), special("pad")
        if self._eos_id is None:
            raise ValueError(f"{path}: no EOS token: expected eos_token in {tok_config} or eos_token_id in "
                             f"{model_config}")
        self._pad_id = self._eos_id if pad_id is None else pad_id
        unk = _token_name(tok.get("unk_token")) or getattr(self._tokenizer.model, "unk_token", None)
        self._unk_id = None if unk is None else self._tokenizer.token_to_id(unk)
        is_bpe = type(self._tokenizer.model).__name__ == "BPE"
        self._clean_up = bool(tok.get("clean_up_tokenization_spaces", False)) and (
            not is_bpe or bool(tok.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))
        super().__init__(extra_ids=0)

    @property
    def path(self) -> epath.Path:
        """The `tokenizer.json` file."""
        return self._path

    @property
    def tokenizer(self):
        """The `tokenizers.Tokenizer`."""
        return self._tokenizer

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> list[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def encode_batch(self, texts) -> list[list[int]]:
        """Ids of many texts in one (parallel) tokenizer call, no special tokens added."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _decode(self, ids) -> str:
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
        return _clean_up_tokenization(text) if self._clean_up else text

    def _encode_tf(self, s):
        import tensorflow as tf

        s = tf.convert_to_tensor(s, tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(lambda b: _int32(self._encode(b.decode("utf-8"))), [s], tf.int32,
                                    stateful=False)
            ids.set_shape([None])
            return ids

        def batch(texts):
            rows = self.encode_batch([t.decode("utf-8") for t in texts.reshape(-1)])
            return _int32([i for r in rows for i in r]), _int32([len(r) for r in rows])

        flat, lengths = tf.numpy_function(batch, [s], [tf.int32, tf.int32], stateful=False)
        flat.set_shape([None])
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(flat, tf.cast(lengths, tf.int64))

    def _decode_tf(self, ids):
        import numpy as np
        import tensorflow as tf

        ids = tf.convert_to_tensor(ids, tf.int32)
        shape = tf.shape(ids)[:-1]

        def decode(rows):
            texts = [self._decode(r) for r in rows.reshape(-1, rows.shape[-1])]
            return np.array([t.encode("utf-8") for t in texts], dtype=object)

        texts = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        return tf.reshape(texts, shape)

    def _key(self):
        return (hashlib.sha256(self._content).hexdigest(), self._bos_id, self._eos_id, self._pad_id,
                self._unk_id, self._clean_up)

    def __eq__(self, other):
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"HfTokenizerVocabulary({str(self._path)!r}, eos={self._eos_id}, pad={self._pad_id})"


def _int32(values):
    import numpy as np

    return np.asarray(values, dtype=np.int32)


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (spaces before punctuation and English contractions)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
