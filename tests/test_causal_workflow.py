"""A decoder-only student through the same commands as a T5: `sbs infer` (label parsed per format, rationale on
request), `sbs eval` (parsed-label accuracy, parse failures) and `sbs export --format hf`, whose directory
`AutoModelForCausalLM` + `AutoTokenizer` load and whose greedy `generate` gives `sbs infer`'s predictions.

The student is a tiny Llama with random weights saved as a training run with the trainer's checkpointer (as
tests/export_fixtures.py does for T5); random weights give a different generation per input, so equal
predictions mean equal prompts, decoding and detokenisation.
"""
import json

import numpy as np
import pytest

import export_fixtures as fx
from sbs_jax.data.scoring import causal_labels

INPUT_LENGTH, LABEL_LENGTH, RATIONALE_LENGTH = 48, 12, 20


def _student(root, causal_format):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import sentencepiece as spm

    from sbs_jax.model.decoder import DecoderLM, presets

    vocab = fx.train_vocab(root / "vocab")
    pieces = spm.SentencePieceProcessor(model_file=str(vocab)).GetPieceSize()
    # The embedded task's ids: EOS 1, and id 2 (<unk>, which no text encodes to here) as BOS.
    config = presets.get_config("llama_tiny", vocab_size=pieces + 56, eos_ids=(1,), bos_id=2, pad_id=0,
                                dtype="float32")
    variables = DecoderLM(config).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))
    # Larger weights than the init's: greedy continuations then differ from prompt to prompt.
    params = jax.tree.map(lambda p: np.asarray(p, np.float32) * 4.0, nn.unbox(variables["params"]))
    run = fx.write_run_dir(root / "run", config, params, vocab)
    (run / "run.json").write_text(json.dumps({
        "causal_format": causal_format,
        "task_feature_lengths": {"inputs": INPUT_LENGTH, "targets": LABEL_LENGTH, "rationales": RATIONALE_LENGTH}}))
    return {"root": root, "vocab": vocab, "config": config, "run_dir": run, "format": causal_format}


def _infer(student, rationale_length=0) -> list[dict]:
    from sbs_jax import cli as sbs_cli

    root = student["root"]
    (root / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in fx.sample_inputs()))
    out = root / f"predictions_{rationale_length}.jsonl"
    rc = sbs_cli.main([
        "infer", "--gin_file=runs/infer.gin", f"--gin.MODEL_DIR='{student['run_dir']}'",
        f"--gin.INFER_INPUT='{root / 'inputs.jsonl'}'", f"--gin.INFER_OUTPUT='{out}'",
        f"--gin.INPUT_LENGTH={INPUT_LENGTH}", f"--gin.TARGET_LENGTH={LABEL_LENGTH}",
        f"--gin.RATIONALE_LENGTH={rationale_length}"])
    assert rc == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module", params=["multitask", pytest.param("rationale_first", marks=pytest.mark.slow),
                                        pytest.param("label_first", marks=pytest.mark.slow)])
def student(request, tmp_path_factory):
    return _student(tmp_path_factory.mktemp(request.param), request.param)


def test_infer_parses_per_format_and_export_hf_generates_the_same(student, tmp_path):
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sbs_jax.commands import export as export_cli

    rows = _infer(student)
    texts = fx.sample_inputs()
    assert [r["input"] for r in rows] == texts
    assert all("rationale" not in r for r in rows)  # only on request
    predictions = [r["prediction"] for r in rows]
    if student["format"] == "multitask":
        # Random weights: predictions must differ between inputs, or equality below would prove little.
        assert len(set(predictions)) >= 6, predictions

    out = tmp_path / "hf"
    assert export_cli.main([f"--checkpoint={student['run_dir']}", "--format=hf", f"--output={out}"]) == 0
    spec = json.loads((out / "sbs_serving.json").read_text())
    assert spec["causal_format"] == student["format"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(student["vocab"]))
    prompts = [spec["serving"]["label_prefix"] + t for t in texts]
    batch = tokenizer(prompts, max_length=INPUT_LENGTH, truncation=True, padding=True, return_tensors="pt")
    # The tokenizer writes the prompt training used: BOS, then prefix + input, no EOS (cut as sbs infer cuts).
    for row, mask, prompt in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), prompts):
        kept = [t for t, m in zip(row, mask) if m]
        assert kept == [2] + sp.EncodeAsIds(prompt)[: INPUT_LENGTH - 1]
    with torch.no_grad():
        generated = model.generate(**batch)  # greedy, max_new_tokens from generation_config.json
    new = generated[:, batch["input_ids"].shape[1]:].tolist()
    got = []
    for ids in new:
        ids = ids[: ids.index(1)] if 1 in ids else ids
        text = sp.DecodeIds([i if i < sp.GetPieceSize() else sp.unk_id() for i in ids if i > 1])
        got.append(causal_labels.parse_generation(text, student["format"]).label)
    assert got == predictions


def test_infer_gives_rationales_on_request(student):
    rows = _infer(student, rationale_length=RATIONALE_LENGTH)
    assert all(isinstance(r["rationale"], str) for r in rows)
    if student["format"] == "multitask":  # generated from the explain prompt: a different text than the label's
        assert sum(r["rationale"] != r["prediction"] for r in rows) >= 6
    else:  # the same generation as the label (label_first without a rationale stops after the label)
        plain = {r["input"]: r["prediction"] for r in _infer(student)}
        assert all(plain[r["input"]] == r["prediction"] for r in rows)


def test_export_refuses_other_formats_for_decoder_students(student, tmp_path, capsys):
    from sbs_jax.commands import export as export_cli

    rc = export_cli.main([f"--checkpoint={student['run_dir']}", "--format=saved_model", f"--output={tmp_path}"])
    assert rc == 2
    assert "decoder-only students (llama) export as --format hf" in capsys.readouterr().err


def test_a_run_without_its_causal_format_is_one_clear_error(student, tmp_path, capsys):
    import shutil

    from sbs_jax import cli as sbs_cli

    run = tmp_path / "run"
    shutil.copytree(student["run_dir"], run)
    (run / "run.json").write_text(json.dumps({"task_feature_lengths": {"inputs": INPUT_LENGTH}}))
    (tmp_path / "in.txt").write_text("1 + 1\n")
    rc = sbs_cli.main(["infer", "--gin_file=runs/infer.gin", f"--gin.MODEL_DIR='{run}'",
                       f"--gin.INFER_INPUT='{tmp_path / 'in.txt'}'", f"--gin.INFER_OUTPUT='{tmp_path / 'o.jsonl'}'"])
    assert rc == 2
    assert "run.json: causal_format is None" in capsys.readouterr().err


def test_a_causal_format_with_a_t5_student_is_refused():
    """CAUSAL_FORMAT only shapes decoder-only rows; with a T5 it would be silently ignored, so it is refused."""
    from sbs_jax.model import get_config
    from sbs_jax.train.trainer import TrainConfig

    fields = dict(model_dir="/unused", mixture_or_task_name="unused", train_steps=1, batch_size=8,
                  task_feature_lengths={"inputs": 8, "targets": 4})
    with pytest.raises(ValueError, match="applies to decoder-only students"):
        TrainConfig(model=get_config("t5_1_1_tiny"), causal_format="rationale_first", **fields)
    from sbs_jax.model.decoder import presets

    TrainConfig(model=presets.get_config("llama_tiny"), causal_format="rationale_first", **fields)
