"""A decoder-only student on a Hugging Face `tokenizer.json` (as the real Llama/Qwen/Gemma sizes train): a
Llama-3-style byte-level BPE tokenizer whose special tokens sit after the ordinary ones (BOS/EOS at the end,
id 0 an ordinary token) trains through `sbs train` on the embedded task, `sbs infer` answers, and the
`sbs export --format hf` directory (the run's own tokenizer files) makes HF `generate` give the same labels.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from sbs_jax.data.records import arith
from sbs_jax.data.scoring import causal_labels

pytestmark = pytest.mark.slow
REPO = pathlib.Path(__file__).resolve().parents[1]
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def _tokenizer(directory: pathlib.Path) -> tuple[int, int, int]:
    """(vocab size, BOS id, EOS id) of a byte-level BPE tokenizer trained on the task's text, written with a
    tokenizer_config.json naming its BOS and EOS; like Llama 3's, it adds BOS itself when asked for special
    tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    splits = arith.generate_splits(seed=0)
    texts = [t for ex in splits["train"][:800] for t in (ex.input, ex.rationale, ex.label)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([BOS, EOS])
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "padding_side": "left"}))
    return tok.get_vocab_size(), bos, eos


def _sbs(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBS_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run(["timeout", "-s", "KILL", "900", sys.executable, "-m", "sbs_jax.cli", *args], cwd=REPO,
                          env=env, check=True, capture_output=True, text=True)


def test_decoder_student_on_a_tokenizer_json_trains_infers_and_exports(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    size, bos, eos = _tokenizer(tmp_path / "tok")
    assert bos > 0 and eos > 0  # id 0 is an ordinary token, as in Llama 3
    run = tmp_path / "run"
    _sbs("train", "--gin_file=models/llama_tiny.gin", "--gin_file=runs/step_by_step.gin",
         "--gin_file=datasets/arith.gin", f"--gin.MODEL_DIR='{run}'", "--gin.TRAIN_STEPS=60", "--gin.BATCH_SIZE=16",
         # Trained enough that greedy choices are not near-ties (an untrained model's logits are nearly flat, and
         # two exact implementations may then pick different argmaxes for rounding noise alone).
         "--gin.LEARNING_RATE=1e-2",
         "--gin.COMPUTE_DTYPE='float32'", "--gin.EVAL_EVERY=0", "--gin.TEST_SPLIT=None",
         "--gin.TrainConfig.tensorboard=False",
         f"--gin.sbs_jax.tasks.register_arith_tasks.vocabulary='{tmp_path / 'tok' / 'tokenizer.json'}'",
         f"--gin.VOCAB_SIZE={size}", f"--gin.decoder_config.eos_ids=({eos},)", f"--gin.decoder_config.bos_id={bos}",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8, 'rationales': 40}")
    assert (run / "vocab" / "tokenizer.json").is_file()

    inputs = [ex.input for ex in arith.generate_splits(seed=0)["test"][:8]]
    (tmp_path / "in.txt").write_text("\n".join(inputs) + "\n")
    _sbs("infer", "--gin_file=runs/infer.gin", f"--gin.MODEL_DIR='{run}'", f"--gin.INFER_INPUT='{tmp_path / 'in.txt'}'",
         f"--gin.INFER_OUTPUT='{tmp_path / 'out.jsonl'}'", "--gin.INPUT_LENGTH=64", "--gin.TARGET_LENGTH=8")
    predictions = [json.loads(x)["prediction"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(predictions) == len(inputs)

    out = tmp_path / "hf"
    _sbs("export", f"--checkpoint={run}", "--format=hf", f"--output={out}", "--max_label_length=8")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["predict: " + t for t in inputs], padding=True, return_tensors="pt")
    for row, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        kept = [t for t, m in zip(row, mask) if m]
        assert kept[0] == bos and bos not in kept[1:] and eos not in kept
    with torch.no_grad():
        generated = model.generate(**batch)
    texts = [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True)
             for row in generated.tolist()]
    assert [causal_labels.parse_generation(t, "multitask").label for t in texts] == predictions
