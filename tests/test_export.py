"""`sbs export`: every format serves the same predictions as `sbs infer` on the same training checkpoint.

The student is a tiny T5 v1.1 with random weights, saved as a training run (params + AdamW state) with the
trainer's checkpointer; random weights give a different output for every input, so equal predictions mean
equal tokenisation, decoding and detokenisation, not just equal defaults.
"""
import json

import numpy as np
import pytest

import export_fixtures as fx
from sbs_jax.commands import export as cli

# The run's operative config records these lengths; export must pick them up (sbs infer gets them as flags).
INPUT_LENGTH, LABEL_LENGTH, RATIONALE_LENGTH = 48, 12, 20


def _make_student(root, model_type: str = "unigram"):
    vocab = fx.train_vocab(root / "vocab", model_type)
    config, params = fx.random_student(vocab)
    run_dir = fx.write_run_dir(root / "run", config, params, vocab)
    return {"root": root, "vocab": vocab, "config": config, "params": params, "run_dir": run_dir}


def _infer(student) -> dict:
    """What `sbs infer` writes for the sample inputs: {"label": [...], "rationale": [...]}."""
    from sbs_jax import cli as sbs_cli

    texts = fx.sample_inputs()
    root = student["root"]
    (root / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in texts))
    rc = sbs_cli.main([
        "infer", "--gin_file=runs/infer.gin", f"--gin.MODEL_DIR='{student['run_dir']}'",
        f"--gin.INFER_INPUT='{root / 'inputs.jsonl'}'", f"--gin.INFER_OUTPUT='{root / 'predictions.jsonl'}'",
        f"--gin.INPUT_LENGTH={INPUT_LENGTH}", f"--gin.TARGET_LENGTH={LABEL_LENGTH}",
        f"--gin.RATIONALE_LENGTH={RATIONALE_LENGTH}"])
    assert rc == 0
    rows = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == texts
    predictions = {"label": [r["prediction"] for r in rows], "rationale": [r["rationale"] for r in rows]}
    # Random weights: the predictions must not collapse to one string, or equality would prove little.
    assert len(set(predictions["label"])) >= 8 and len(set(predictions["rationale"])) >= 8
    return predictions


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return _make_student(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def infer_predictions(student):
    return _infer(student)


# The BPE round trip costs ~40 s (another run dir and `sbs infer`): slow suite; the default suite checks BPE ids
# in test_hf_tokenizer_encodes_like_training_on_every_arith_test_input.
@pytest.fixture(scope="module", params=["unigram", pytest.param("bpe", marks=pytest.mark.slow)])
def hf_student(request, tmp_path_factory):
    """The unigram student above, and one with a BPE vocabulary (the embedded arith task's type)."""
    if request.param == "unigram":
        # The default suite checks the label stream only (the rationale decode doubles the test's time).
        return request.getfixturevalue("student"), request.getfixturevalue("infer_predictions"), ("label",)
    student = _make_student(tmp_path_factory.mktemp("bpe_student"), "bpe")
    return student, _infer(student), ("label", "rationale")


def _export(student, fmt, output, *extra):
    return cli.main([f"--checkpoint={student['run_dir']}", f"--format={fmt}", f"--output={output}", *extra])


def test_hf_export_loads_in_transformers_and_matches_sbs_infer(hf_student, tmp_path):
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    student, infer_predictions, streams = hf_student
    out = tmp_path / "hf"
    assert _export(student, "hf", out) == 0
    assert {"config.json", "model.safetensors", "generation_config.json", "spiece.model",
            "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    model = T5ForConditionalGeneration.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)  # as docs/export_and_launch.md shows
    sp = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    texts = fx.sample_inputs()
    # Each stream as a server would prompt it: "predict: " for labels, "explain: " for rationales.
    prompts = {"label": ("predict: ", LABEL_LENGTH), "rationale": ("explain: ", RATIONALE_LENGTH)}
    for stream in streams:
        prefix, length = prompts[stream]
        batch = tokenizer([prefix + t for t in texts], max_length=INPUT_LENGTH, truncation=True,
                          padding="max_length", return_tensors="pt")
        # HF's tokenizer gives the ids our pipeline feeds the model (truncated with EOS kept, then padded).
        for row, text in zip(batch["input_ids"].tolist(), texts):
            ids = sp.EncodeAsIds(prefix + text)[: INPUT_LENGTH - 1] + [1]
            assert row == ids + [0] * (INPUT_LENGTH - len(ids))
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=length)  # greedy (generation_config.json)
        # Drop the decoder start token; ids past the SentencePiece model decode as unk, as in `sbs infer`.
        got = [sp.DecodeIds([i if i < sp.GetPieceSize() else sp.unk_id() for i in row[1:] if i > 1])
               for row in generated.tolist()]
        assert got == infer_predictions[stream], stream
    assert model.generation_config.max_new_tokens == LABEL_LENGTH
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_hf_tokenizer_encodes_like_training_on_every_arith_test_input(model_type, tmp_path):
    """AutoTokenizer ids == our training tokenisation (SentencePiece via T5Vocabulary, EOS appended)."""
    from transformers import AutoTokenizer

    from sbs_jax.data.records import arith
    from sbs_jax.data.registry.preprocessors import EXPLAIN_PREFIX, PREDICT_PREFIX
    from sbs_jax.data.vocab.sentencepiece_vocab import load_vocabulary
    from sbs_jax.export.hf_tokenizer import write_tokenizer_files

    vocab = fx.train_vocab(tmp_path / "vocab", model_type)
    write_tokenizer_files(tmp_path, vocab, model_max_length=INPUT_LENGTH)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    training = load_vocabulary(str(vocab))
    examples = arith.generate_splits(seed=0)["test"]
    texts = [t for ex in examples for t in (PREDICT_PREFIX + ex.input, EXPLAIN_PREFIX + ex.input, ex.label,
                                            ex.rationale)]
    # Edges of SentencePiece's normaliser and of the EOS marker: empty, runs of spaces, tabs and newlines,
    # NFKC-folded and unknown characters, a literal `</s>` (EOS, each side encoded alone), a literal `▁`.
    texts += ["", "   ", "  12  +   3 ", "a\tb\nc", "ＡＢＣ ½ x²", "é 😀 ~~ 😀😀", "premise</s>hypothesis",
              "</s>", "1 + 2</s>", "▁7", "explain: " + "9 + 9 " * 40]
    want = [ids + [1] for ids in training.encode_batch(texts)]
    got = tokenizer(texts)["input_ids"]
    mismatches = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]}"
    # Decoding (unknown-free, marker-free texts) gives SentencePiece's text back.
    plain = [ids[:-1] for t, ids in zip(texts, want) if "</s>" not in t and training.unk_id not in ids]
    assert len(plain) > 1000
    assert tokenizer.batch_decode(plain, skip_special_tokens=True) == [training.decode(ids) for ids in plain]


def test_hf_export_bfloat16_halves_the_weights(student, tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file

    out = tmp_path / "hf_bf16"
    assert _export(student, "hf", out, "--dtype=bfloat16") == 0
    tensors = load_file(str(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(t.dtype == ml_dtypes.bfloat16 for t in tensors.values())
    embedding = student["params"]["token_embedder"]["embedding"]
    np.testing.assert_array_equal(tensors["shared.weight"], embedding.astype(ml_dtypes.bfloat16))


@pytest.mark.slow
def test_saved_model_strings_in_strings_out_matches_sbs_infer(student, infer_predictions, tmp_path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops of the serving graph)

    out = tmp_path / "saved_model"
    assert _export(student, "saved_model", out, "--outputs=label,rationale") == 0
    loaded = tf.saved_model.load(str(out))
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1]["inputs"].shape.as_list() == [None]
    assert serve.structured_input_signature[1]["inputs"].dtype == tf.string
    texts = fx.sample_inputs()
    outputs = serve(inputs=tf.constant(texts))
    got = {k: [s.decode("utf-8") for s in v.numpy().tolist()] for k, v in outputs.items()}
    assert got == infer_predictions
    # Batch-polymorphic: another batch size gives the same per-example answers.
    few = serve(inputs=tf.constant(texts[:3]))
    assert [s.decode("utf-8") for s in few["label"].numpy().tolist()] == infer_predictions["label"][:3]
    spec = json.loads((out / "assets.extra" / "sbs_serving.json").read_text())
    assert spec["serving"]["max_input_length"] == INPUT_LENGTH


def test_stablehlo_export_matches_sbs_infer(student, infer_predictions, tmp_path):
    from sbs_jax.export.stablehlo import StableHLOStudent

    out = tmp_path / "stablehlo"
    assert _export(student, "stablehlo", out, "--outputs=label,rationale") == 0
    served = StableHLOStudent(out)
    assert (served.spec.max_input_length, served.spec.max_label_length, served.spec.max_rationale_length) == (
        INPUT_LENGTH, LABEL_LENGTH, RATIONALE_LENGTH)
    assert served.predict(fx.sample_inputs()) == infer_predictions


@pytest.mark.slow
def test_stablehlo_bfloat16_stores_bfloat16(student, tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file

    from sbs_jax.export.stablehlo import StableHLOStudent

    out = tmp_path / "stablehlo_bf16"
    assert _export(student, "stablehlo", out, "--dtype=bfloat16") == 0
    assert {t.dtype for t in load_file(str(out / "params.safetensors")).values()} == {np.dtype(ml_dtypes.bfloat16)}
    texts = fx.sample_inputs()
    labels = StableHLOStudent(out).predict(texts)["label"]
    # The artifact decodes what greedy decoding of the bfloat16-rounded weights (widened to float32, computed
    # in the checkpoint's dtype) decodes, input by input.
    import jax
    import sentencepiece as spm

    from sbs_jax.export import serving
    from sbs_jax.model.t5 import Transformer, decoding

    rounded = jax.tree.map(lambda p: np.asarray(p, np.float32),
                           serving.cast_params(student["params"], "bfloat16"))
    sp = spm.SentencePieceProcessor(model_file=str(student["vocab"]))
    tokens = serving.encode_inputs(sp, texts, "predict: ", INPUT_LENGTH)
    model = Transformer(student["config"].replace(dropout_rate=0.0))
    expected = serving.decode_outputs(sp, np.asarray(decoding.greedy_decode(model, rounded, tokens,
                                                                              max_decode_length=LABEL_LENGTH)))
    assert labels == expected and len(set(labels)) >= 5


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2  # a user mistake (sbs_jax.errors contract)
    err = capsys.readouterr().err
    assert err.startswith("sbs export: error: ") and "Traceback" not in err
    return err


def test_missing_checkpoint_is_one_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    err = _error(capsys, [f"--checkpoint={missing}", "--format=hf", f"--output={tmp_path / 'o'}"])
    assert str(missing) in err and "no such file or directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, [f"--checkpoint={empty}", "--format=hf", f"--output={tmp_path / 'o'}"])
    assert "unrecognised checkpoint layout" in err


def test_incompatible_checkpoint_is_one_clear_error(student, datasets_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(student["run_dir"], run)
    # The recorded config no longer matches the saved weights (d_ff 128 -> 96).
    config = json.loads((run / "model_config.json").read_text())
    (run / "model_config.json").write_text(json.dumps({**config, "d_ff": 96}))
    err = _error(capsys, [f"--checkpoint={run}", "--format=hf", f"--output={tmp_path / 'o'}"])
    assert "encoder/layers_0/mlp/wo/kernel has shape (128, 64), expected (96, 64)" in err
    # Truncated array files (a copy cut short): orbax cannot read them back.
    (run / "model_config.json").write_text(json.dumps(config))
    for blob in (run / "checkpoints" / "7" / "state").rglob("d/*"):
        blob.write_bytes(blob.read_bytes()[:100])
    err = _error(capsys, [f"--checkpoint={run}", "--format=hf", f"--output={tmp_path / 'o'}"])
    assert str(run) in err
    # A step that does not exist, and a vocabulary too large for the model.
    err = _error(capsys, [f"--checkpoint={student['run_dir']}", "--step=99", "--format=hf",
                          f"--output={tmp_path / 'o'}"])
    assert "99" in err and "no such checkpoint" in err
    from sbs_jax.data.vocab.sentencepiece_vocab import train_vocabulary

    svamp = [json.loads(line)["input"] for line in (datasets_dir / "svamp" / "svamp_train.json").open()]
    big_vocab = train_vocabulary(svamp, tmp_path / "big", vocab_size=400)
    err = _error(capsys, [f"--checkpoint={student['run_dir']}", "--format=saved_model", f"--vocab={big_vocab}",
                          f"--output={tmp_path / 'o'}"])
    assert str(big_vocab) in err and f"more than the model's vocab_size {student['config'].vocab_size}" in err


def test_unusable_vocab_and_output_are_clear_errors(student, tmp_path, capsys):
    not_spm = tmp_path / "vocab.model"
    not_spm.write_text("not a sentencepiece model")
    err = _error(capsys, [f"--checkpoint={student['run_dir']}", "--format=stablehlo", f"--vocab={not_spm}",
                          f"--output={tmp_path / 'o'}"])
    assert str(not_spm) in err and "not a SentencePiece model" in err
    hf_tokenizer = tmp_path / "tokenizer.json"
    hf_tokenizer.write_text("{}")
    err = _error(capsys, [f"--checkpoint={student['run_dir']}", "--format=hf", f"--vocab={hf_tokenizer}",
                          f"--output={tmp_path / 'o'}"])
    assert str(hf_tokenizer) in err and "a Hugging Face tokenizer.json" in err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    err = _error(capsys, [f"--checkpoint={student['run_dir']}", "--format=hf", f"--output={taken}"])
    assert "not an empty directory" in err
    err = _error(capsys, [f"--checkpoint={student['run_dir']}", "--format=hf", "--outputs=label,answer",
                          f"--output={tmp_path / 'o'}"])
    assert "--outputs" in err


def test_serving_prefixes_are_the_training_prefixes():
    from sbs_jax.data.registry.preprocessors import EXPLAIN_PREFIX, PREDICT_PREFIX
    from sbs_jax.export.serving import ServingSpec

    assert (ServingSpec().label_prefix, ServingSpec().rationale_prefix) == (PREDICT_PREFIX, EXPLAIN_PREFIX)
