"""`sbs train` with a decoder-only student (slow, subprocesses): models/llama_tiny.gin + runs/step_by_step.gin +
datasets/arith.gin in the rationale_first format trains, evaluates by generation with parsed labels (parse
failures counted), checkpoints, and resumes to the same parameters as an uninterrupted run."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sbs_jax.model.decoder import DecoderConfig
from sbs_jax.train import checkpointing

pytestmark = pytest.mark.slow
REPO = pathlib.Path(__file__).resolve().parents[1]


def _sbs(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBS_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = ["timeout", "-s", "KILL", "900", sys.executable, "-m", "sbs_jax.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)


def _train(model_dir, *extra):
    return _sbs("train", "--gin_file=models/llama_tiny.gin", "--gin_file=runs/step_by_step.gin",
                "--gin_file=datasets/arith.gin", f"--gin.MODEL_DIR='{model_dir}'", "--gin.BATCH_SIZE=8",
                "--gin.COMPUTE_DTYPE='float32'",
                "--gin.CAUSAL_FORMAT='rationale_first'", "--gin.SAVE_EVERY=1", "--gin.EVAL_EVERY=0",
                "--gin.TEST_SPLIT=None", "--gin.TrainConfig.tensorboard=False", "--gin.TrainConfig.log_every=1",
                # A constant rate: the schedule would otherwise depend on TRAIN_STEPS, which the resumed run changes.
                "--gin.OptimizerConfig.schedule='constant'", *extra)


def test_decoder_student_trains_evaluates_and_resumes(tmp_path):
    run = tmp_path / "run"
    _train(run, "--gin.TRAIN_STEPS=2")
    summary = json.loads((run / "summary.json").read_text())
    validation = summary["validation"]
    assert validation["num_examples"] > 0 and "parse_failures" in validation
    assert validation["label/num_tokens"] > 0 and validation["rationale/num_tokens"] > 0
    rows = [json.loads(line) for line in (run / "predictions" / "validation_step2.jsonl").read_text().splitlines()]
    assert len(rows) == validation["num_examples"]
    assert sum(not r["parsed"] for r in rows) == validation["parse_failures"]
    assert all(not r["correct"] for r in rows if not r["parsed"])

    # `sbs eval` on the same checkpoint and split gives what the trainer's evaluation gave: the same prompts,
    # generations and parsed labels, through the run's recorded causal format.
    lengths = json.loads((run / "run.json").read_text())["task_feature_lengths"]
    assert json.loads((run / "run.json").read_text())["causal_format"] == "rationale_first"
    evaluated = _sbs("eval", "--gin_file=runs/eval.gin", "--gin_file=datasets/arith.gin", f"--gin.MODEL_DIR='{run}'",
                     "--gin.EVAL_SPLIT='validation'", "--gin.CHECKPOINT_STEP=2", f"--gin.TASK_FEATURE_LENGTHS={lengths}")
    result = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert result["accuracy"] == validation["accuracy"] and result["parse_failures"] == validation["parse_failures"]
    again = [json.loads(line) for line in pathlib.Path(result["predictions"]).read_text().splitlines()]
    assert [r["generation"] for r in again] == [r["generation"] for r in rows]

    resumed = _train(run, "--gin.TRAIN_STEPS=3", "--gin.VALIDATION_SPLIT=None")
    assert "resumed from" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    _train(straight, "--gin.TRAIN_STEPS=3", "--gin.VALIDATION_SPLIT=None")
    config, a, _ = checkpointing.load_params(run, step=3)
    _, b, _ = checkpointing.load_params(straight, step=3)
    assert isinstance(config, DecoderConfig) and config.model_type == "llama"
    import jax
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
