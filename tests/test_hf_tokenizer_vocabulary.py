"""`HfTokenizerVocabulary` encodes and decodes as `transformers.AutoTokenizer` on the same directory, for every
text of the shared datasets, in Python and in seqio's TF pipeline.

No real Llama/Qwen/Gemma tokenizer is reachable offline, so the test trains a byte-level BPE `tokenizer.json`
on the shared datasets' text with the `tokenizers` library, in two layouts: Llama 3 (special tokens after the
BPE vocabulary, no pad token, BOS/EOS named in tokenizer_config.json and numbered in config.json, cleanup flag
set as Llama 3 ships it) and Gemma (`<pad>`, `<eos>`, `<bos>`, `<unk>` at ids 0-3, a BOS-adding post-processor).
"""
import json

import numpy as np
import pytest

from sbs_jax.data.records import datasets
from sbs_jax.data.vocab import hf_tokenizer_vocabulary as hf_vocab
from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

DATASETS = ("cqa", "svamp", "esnli", "anli1")


@pytest.fixture(scope="module")
def dataset_texts(datasets_dir):
    """Every text a model sees of every split: prefixed inputs, labels, rationales, teacher labels."""
    texts = []
    for name in DATASETS:
        for data in datasets.load_splits(name, str(datasets_dir)).values():
            texts += vocab_lib.model_texts(data.examples)
    return texts


def _train(texts, special_first):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=special_first, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts[::8], trainer)  # a sample is enough for a real vocabulary
    return tokenizer


@pytest.fixture(scope="module")
def llama_dir(dataset_texts, tmp_path_factory):
    from tokenizers import AddedToken, processors

    tokenizer = _train(dataset_texts, [])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", tokenizer.token_to_id("<|begin_of_text|>"))])
    folder = tmp_path_factory.mktemp("llama_tok")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072}))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "bos_token_id": tokenizer.token_to_id("<|begin_of_text|>"),
        "eos_token_id": tokenizer.token_to_id("<|end_of_text|>")}))
    return folder


@pytest.fixture(scope="module")
def gemma_dir(dataset_texts, tmp_path_factory):
    from tokenizers import processors

    tokenizer = _train(dataset_texts, ["<pad>", "<eos>", "<bos>", "<unk>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                             special_tokens=[("<bos>", 2)])
    folder = tmp_path_factory.mktemp("gemma_tok")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "<eos>",
        "bos_token": "<bos>", "unk_token": "<unk>", "add_bos_token": True}))
    return folder


def _reference(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# The default suite compares every 16th text (6.7k texts of all four datasets); the slow variant every one
# of the 108k (about 80 s on a contended 2-core machine).
@pytest.mark.parametrize("layout,stride", [("llama", 16), ("gemma", 16),
                                           pytest.param("llama", 1, marks=pytest.mark.slow),
                                           pytest.param("gemma", 1, marks=pytest.mark.slow)])
def test_matches_auto_tokenizer_on_every_dataset_text(layout, stride, llama_dir, gemma_dir, dataset_texts):
    folder = {"llama": llama_dir, "gemma": gemma_dir}[layout]
    dataset_texts = dataset_texts[::stride]
    hf = _reference(folder)
    v = vocab_lib.load_vocabulary(str(folder))  # a directory holding tokenizer.json
    assert isinstance(v, hf_vocab.HfTokenizerVocabulary)
    assert (v.bos_id, v.eos_id, v.pad_id, v.unk_id, v.vocab_size) == (
        hf.bos_token_id, hf.eos_token_id, hf.eos_token_id if hf.pad_token_id is None else hf.pad_token_id,
        hf.unk_token_id, len(hf))
    if layout == "llama":
        assert hf.pad_token_id is None and v.pad_id == v.eos_id and v.bos_id == 800
    else:
        assert (v.pad_id, v.eos_id, v.bos_id, v.unk_id) == (0, 1, 2, 3)
    assert hf("a b").input_ids[0] == v.bos_id  # AutoTokenizer adds BOS by default; we encode without it

    expected = hf(dataset_texts, add_special_tokens=False).input_ids
    ours = v.encode_batch(dataset_texts)
    assert len(ours) == len(dataset_texts) > 100_000 // stride
    mismatched = [t for t, a, b in zip(dataset_texts, ours, expected) if a != b]
    assert not mismatched, mismatched[:3]
    assert [list(v.encode(t)) for t in dataset_texts[:200]] == expected[:200]

    # Decoding: BOS in front, EOS and junk behind, a special token inside; seqio cuts at the first EOS.
    rows = [[v.bos_id] + ids[:len(ids) // 2] + [v.bos_id] + ids[len(ids) // 2:] + [v.eos_id, 5, 6]
            for ids in expected]
    cut = [r[:r.index(v.eos_id)] for r in rows]
    reference = hf.batch_decode(cut, skip_special_tokens=True)
    assert [v.decode(r) for r in rows] == reference
    assert reference[:50] == [t for t in dataset_texts[:50]]  # byte-level BPE round-trips the text
    padded = np.zeros((4, max(len(r) for r in rows[:4])), np.int32)
    for i, r in enumerate(rows[:4]):
        padded[i, :len(r)] = r
    assert [t.decode() for t in v.decode_tf(padded).numpy()] == reference[:4]


def test_special_token_text_and_cleanup_follow_transformers(llama_dir):
    hf = _reference(llama_dir)
    v = vocab_lib.load_vocabulary(str(llama_dir / "tokenizer.json"))  # the file itself
    text = "So the answer is (c) yes .<|end_of_text|>Q: isn't it ?"
    ids = list(v.encode(text))
    assert ids == hf(text, add_special_tokens=False).input_ids and v.eos_id in ids
    # Llama 3 ships clean_up_tokenization_spaces=true; transformers ignores it for BPE models, so do we.
    assert v.decode(ids[:ids.index(v.eos_id)]) == hf.decode(ids[:ids.index(v.eos_id)],
                                                             skip_special_tokens=True) == "So the answer is (c) yes ."


def test_seqio_task_pipeline_yields_the_same_ids(gemma_dir, datasets_dir):
    import seqio

    from sbs_jax.data.registry import register

    hf = _reference(gemma_dir)
    examples = datasets.load_splits("svamp", str(datasets_dir))["test"].examples
    register.register_examples_task("hftok", {"test": examples}, vocabulary=str(gemma_dir), variants=("sbs",))
    task = seqio.get_mixture_or_task("hftok_sbs")
    assert task.output_features["inputs"].vocabulary == hf_vocab.HfTokenizerVocabulary(gemma_dir / "tokenizer.json")
    lengths = {"inputs": 64, "targets": 16, "rationale_inputs": 64, "rationales": 96}
    rows = list(task.get_dataset(lengths, split="test", shuffle=False, use_cached=False).as_numpy_iterator())
    assert len(rows) == len(examples)
    for ex, row in zip(examples, rows):
        for feature, text in (("inputs", "predict: " + ex.input), ("targets", ex.label),
                              ("rationale_inputs", "explain: " + ex.input), ("rationales", ex.rationale)):
            ids = hf(text, add_special_tokens=False).input_ids[:lengths[feature] - 1] + [hf.eos_token_id]
            assert row[feature].tolist() == ids, (feature, text)


def test_run_directory_copy_and_equality(llama_dir, gemma_dir, tmp_path):
    from sbs_jax import run_dir

    run = tmp_path / "run"
    copied = vocab_lib.copy_vocabulary(str(llama_dir), run / "vocab")
    assert sorted(p.name for p in (run / "vocab").iterdir()) == ["config.json", "tokenizer.json",
                                                                   "tokenizer_config.json"]
    assert run_dir.vocab_file(run) == copied
    again = vocab_lib.load_vocabulary(str(copied))
    original = vocab_lib.load_vocabulary(str(llama_dir))
    assert again == original and hash(again) == hash(original)
    assert again != vocab_lib.load_vocabulary(str(gemma_dir))


def test_bad_files_get_one_error_naming_them(tmp_path, gemma_dir):
    not_tokenizer = tmp_path / "a" / "tokenizer.json"
    not_tokenizer.parent.mkdir()
    not_tokenizer.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ValueError, match=f"{not_tokenizer}: not a Hugging Face tokenizer.json"):
        vocab_lib.load_vocabulary(str(not_tokenizer.parent))
    bad_eos = tmp_path / "b"
    bad_eos.mkdir()
    (bad_eos / "tokenizer.json").write_bytes((gemma_dir / "tokenizer.json").read_bytes())
    (bad_eos / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|im_end\|>' is not a token"):
        vocab_lib.load_vocabulary(str(bad_eos))
    (bad_eos / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no EOS token: expected eos_token in .*tokenizer_config.json"):
        vocab_lib.load_vocabulary(str(bad_eos))
    (bad_eos / "config.json").write_text(json.dumps({"eos_token_id": [1, 7]}))  # list: the first is EOS
    v = vocab_lib.load_vocabulary(str(bad_eos))
    assert (v.eos_id, v.pad_id, v.bos_id) == (1, 1, None)


def test_sbs_data_check_counts_tokens_with_a_tokenizer_json(gemma_dir, datasets_dir, capsys):
    from sbs_jax.commands import data

    assert data.main(["check", "--data_dir", str(datasets_dir), "--dataset", "svamp", "--spiece_model",
                      str(gemma_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["svamp"]["test"]["tokens"]
    hf = _reference(gemma_dir)
    examples = datasets.load_splits("svamp", str(datasets_dir))["test"].examples
    longest = max(len(hf(ex.label, add_special_tokens=False).input_ids) + 1 for ex in examples)  # + EOS
    assert report["labels"]["max"] == longest
