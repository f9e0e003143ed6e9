"""`tokenizer.json` that encodes exactly like our training tokenisation, for unigram and BPE SentencePiece models.

Training tokenises with SentencePiece itself (`T5Vocabulary`): the model's own normaliser, its dummy prefix,
unigram Viterbi or score-ranked BPE merges, and the literal `</s>` read as EOS (`sbs_jax/data/vocab/eos_marker.py`),
with EOS appended. A `T5Tokenizer` built from `spiece.model` is always a Unigram tokenizer, so a BPE vocabulary
(the embedded `arith` task's) tokenises differently there; this builds the `tokenizers` pipeline from the
SentencePiece model proto instead, mirroring each setting:

- normaliser: the model's precompiled charsmap, then SentencePiece's whitespace rules (strip leading/trailing
  spaces and collapse runs when `remove_extra_whitespaces`), the dummy prefix, spaces escaped as `▁`;
- pre-tokeniser: split before each `▁` (only when trained with `split_by_whitespace`, so no piece crosses one);
- model: Unigram with the piece scores, or BPE whose merges are ranked by the merged piece's score (SentencePiece
  BPE merges the adjacent pair whose union scores highest); byte fallback as trained; runs of unknown characters
  fuse into one `<unk>` as in SentencePiece;
- `</s>` is a special token (so a literal `</s>` in a text is EOS and each side is encoded on its own, as
  `eos_marker.encode` does), and the post-processor appends `</s>` like training.
"""
from __future__ import annotations

import json

from etils import epath

EOS_PIECE = "</s>"
# SentencePiece piece types (sentencepiece_model.proto): NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, BYTE=6.
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4
_UNIGRAM, _BPE = 1, 2


def _load_proto(spm_model):
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2.ModelProto.FromString(epath.Path(spm_model).read_bytes())


def _bpe_merges(proto) -> list[tuple[str, str]]:
    """Every (left, right) split of a normal piece into two pieces, best merged score first."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type in (_NORMAL, _USER_DEFINED)}
    ranked = []
    for piece, (score, index) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def build_tokenizer(spm_model, *, causal_bos_id: int | None = None, causal: bool = False):
    """A `tokenizers.Tokenizer` equivalent to our SentencePiece tokenisation of `spm_model` (path). `causal`:
    the prompt of a decoder-only student instead (`[BOS] text`, BOS only with `causal_bos_id`, no EOS: the
    model continues the text)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE, Unigram

    proto = _load_proto(spm_model)
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    byte_fallback = bool(trainer.byte_fallback)
    if trainer.model_type == _UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=trainer.unk_id,
                        byte_fallback=byte_fallback)
    elif trainer.model_type == _BPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        model = BPE(vocab, _bpe_merges(proto), unk_token=proto.pieces[trainer.unk_id].piece, fuse_unk=True,
                    byte_fallback=byte_fallback)
    else:
        raise ValueError(f"{spm_model}: SentencePiece model type {trainer.model_type} is not unigram (1) or "
                         "BPE (2); only those can be exported as a tokenizer.json")
    tokenizer = Tokenizer(model)

    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        # SentencePiece's rule touches spaces only (after the charsmap has mapped other whitespace to spaces).
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))  # not applied to an empty text, as in SentencePiece
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    if trainer.split_by_whitespace and spec.escape_whitespaces:
        # prepend_scheme="never": the normaliser already added the dummy prefix.
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)

    decode = [decoders.Replace("▁", " ")] if spec.escape_whitespaces else []
    if byte_fallback:
        decode.append(decoders.ByteFallback())
    decode.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        decode.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(decode)

    eos_id = tokenizer.token_to_id(EOS_PIECE)
    if eos_id is None:
        raise ValueError(f"{spm_model}: no {EOS_PIECE} piece; train the vocabulary with eos_id=1")
    # Only EOS is matched in raw text: our training reads `<pad>`/`<unk>` in a text as characters.
    tokenizer.add_special_tokens([AddedToken(EOS_PIECE, special=True, normalized=False)])
    if causal:
        bos = [] if causal_bos_id is None else [proto.pieces[causal_bos_id].piece]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=[*bos, "$A"], pair=[*bos, "$A", "$B"],
            special_tokens=[(bos[0], causal_bos_id)] if bos else [])
        return tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", EOS_PIECE], pair=["$A", EOS_PIECE, "$B", EOS_PIECE], special_tokens=[(EOS_PIECE, eos_id)])
    return tokenizer


def write_tokenizer_files(output_dir, spm_model, *, model_max_length: int, causal: bool = False,
                          causal_bos_id: int | None = None) -> None:
    """`tokenizer.json` + `tokenizer_config.json` + `special_tokens_map.json` for `AutoTokenizer`; `causal`:
    a decoder-only student's prompt tokenizer (`build_tokenizer`), padded on the left for batched generation."""
    output_dir = epath.Path(output_dir)
    proto = _load_proto(spm_model)
    tokenizer = build_tokenizer(spm_model, causal=causal, causal_bos_id=causal_bos_id)
    (output_dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True))
    pieces = proto.pieces
    special = {"eos_token": EOS_PIECE, "unk_token": pieces[proto.trainer_spec.unk_id].piece,
               "pad_token": pieces[proto.trainer_spec.pad_id].piece}
    if causal and causal_bos_id is not None:
        special["bos_token"] = pieces[causal_bos_id].piece
    config = {
        # The generic class: it loads tokenizer.json as it is (`T5Tokenizer` would rebuild a Unigram model).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "padding_side": "left" if causal else "right",
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (output_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
