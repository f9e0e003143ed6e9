"""`sbs data check`: counts, teacher statistics and token-length percentiles, and its errors."""
import json

import numpy as np
import sentencepiece as spm

from sbs_jax.commands import data as data_cmd
from sbs_jax.data.records import data_dir as records
from sbs_jax.data.vocab import sentencepiece_vocab as vocab


def test_json_report_on_svamp(datasets_dir, tmp_path, capsys):
    texts = vocab.model_texts(records.read_split(datasets_dir, "svamp", "train").examples)
    model = vocab.train_vocabulary(texts, tmp_path, vocab_size=500)
    assert data_cmd.main(["check", "--data_dir", str(datasets_dir), "--dataset", "svamp", "--spiece_model",
                        str(model), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["svamp"]
    assert out["train"]["examples"] == 800 and out["test"]["examples"] == 200
    assert (out["train"]["parse_failures"], out["train"]["teacher_accuracy"]) == (13, 73.25)
    assert (out["test"]["parse_failures"], out["test"]["teacher_accuracy"]) == (2, 74.0)
    # Percentiles recomputed here straight from SentencePiece (EOS adds one token).
    sp = spm.SentencePieceProcessor(model_file=str(model))
    lines = [json.loads(x) for x in (datasets_dir / "svamp" / "svamp_test.json").read_text().splitlines()]
    lengths = [len(sp.encode("predict: " + r["input"])) + 1 for r in lines]
    assert out["test"]["tokens"]["inputs"]["max"] == max(lengths)
    assert out["test"]["tokens"]["inputs"]["p50"] == int(np.percentile(lengths, 50, method="higher"))
    labels = [len(sp.encode(r["label"])) + 1 for r in lines]
    assert out["test"]["tokens"]["labels"]["p90"] == int(np.percentile(labels, 90, method="higher"))


def test_errors_exit_2_with_one_message(datasets_dir, tmp_path, capsys):
    assert data_cmd.main(["check", "--data_dir", str(tmp_path / "none")]) == 2
    assert f"data dir {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    assert data_cmd.main(["check", "--data_dir", str(datasets_dir), "--dataset", "gsm8k"]) == 2
    assert "unknown dataset 'gsm8k'" in capsys.readouterr().err
    assert data_cmd.main(["check", "--data_dir", str(datasets_dir), "--dataset", "svamp", "--spiece_model",
                        str(tmp_path / "spiece.model")]) == 2
    assert "SentencePiece model not found" in capsys.readouterr().err


def test_generated_dataset_goes_through_the_same_registry_as_the_paper_formats(datasets_dir, tmp_path, capsys):
    from sbs_jax.data.records import arith
    from sbs_jax.data.records import datasets

    assert datasets.names() == sorted(["cqa", "esnli", "anli1", "svamp"]) + ["arith"]
    generated = datasets.load_splits("arith", seed=3)
    assert {s: len(d.examples) for s, d in generated.items()} == dict(arith.DEFAULT_SIZES)
    assert [e.input for e in generated["test"].examples] == [
        e.input for e in arith.generate_split_data(seed=3)["test"].examples]
    files = datasets.load_splits("svamp", str(datasets_dir))
    assert sorted(files) == ["test", "train"] and len(files["train"].examples) == 800
    # The embedded task needs no data dir; a paper dataset does, and the command says which flag to pass.
    assert data_cmd.main(["check", "--dataset", "arith", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["arith"]
    assert {s: r["examples"] for s, r in report.items()} == dict(arith.DEFAULT_SIZES)
    assert data_cmd.main(["check", "--dataset", "svamp"]) == 2
    assert "--data_dir is required for dataset 'svamp'" in capsys.readouterr().err
    assert data_cmd.main(["check"]) == 2
    assert "--dataset arith" in capsys.readouterr().err
