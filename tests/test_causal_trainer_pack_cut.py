"""The real trainer with a decoder-only student (models/llama_tiny.gin + runs/step_by_step.gin + datasets/arith.gin)
on packed rows and on length-bucketed batches (slow: Trainer runs with train-step compilations).

- Bucketed: every step's loss, metrics and gradient norm, and the final parameters, equal an unbucketed run's.
- Packed: the first step's batch is packed rows; its loss and metrics, as the trainer logs them, equal the loss of
  the unpacked rows of exactly the examples it holds at the initial parameters; a run resumed from step 1 ends
  with the parameters of the uninterrupted run.
"""
import shutil
import dataclasses
import json
import pathlib
import re

import jax
import numpy as np
import pytest

from sbs_jax.commands import gin_utils
from sbs_jax.data import schema
from sbs_jax.train import causal_objective, checkpointing, inputs, trainer

pytestmark = pytest.mark.slow
GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
GIN = [str(GIN_DIR / f) for f in ("models/llama_tiny.gin", "runs/step_by_step.gin", "datasets/arith.gin")]
# Longer than arith needs (35 / 2 / 11 tokens), so unpacked rows carry padding to cut.
LENGTHS = {"inputs": 48, "targets": 8, "rationales": 24}


def _config(tmp_path, name, *bindings):
    gin_utils.parse(GIN, [f"MODEL_DIR = '{tmp_path / name}'", "BATCH_SIZE = 8", "COMPUTE_DTYPE = 'float32'",
                          f"TASK_FEATURE_LENGTHS = {LENGTHS}", "TRAIN_STEPS = 3", "SAVE_EVERY = 3",
                          "EVAL_EVERY = 0", "VALIDATION_SPLIT = None", "TEST_SPLIT = None",
                          "TrainConfig.tensorboard = False", "TrainConfig.log_every = 1",
                          "decoder_config.num_hidden_layers = 1", *bindings], search_paths=[str(GIN_DIR)])
    return gin_utils.build("TrainConfig")


def _train_metrics(model_dir):
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["split"] == "train"]


def test_bucketed_decoder_run_trains_like_full_padding(tmp_path, capsys):
    full_config = _config(tmp_path, "full", "CAUSAL_FORMAT = 'multitask'")
    trainer.train(full_config)
    capsys.readouterr()
    cut_config = _config(tmp_path, "cut", "CAUSAL_FORMAT = 'multitask'", "LENGTH_BUCKETS = True",
                         "TrainConfig.min_bucket_length = 4", "TrainConfig.bucket_step = 4")
    assert cut_config.cut_batches
    trainer.train(cut_config)
    out = capsys.readouterr().out
    compiled = re.findall(r"train step compiled for lengths label (\d+), rationale (\d+)", out)
    full_rows = (48 + 8 - 1 + 1, 48 + 24 - 1 + 1)  # CausalLayout.row_lengths with llama_tiny's BOS
    assert compiled and all(int(a) < full_rows[0] and int(b) < full_rows[1] for a, b in compiled)
    kept = float(re.search(r"batches kept ([\d.]+) % of the padded token positions", out).group(1))
    assert 0 < kept < 80
    full, cut = _train_metrics(tmp_path / "full"), _train_metrics(tmp_path / "cut")
    assert [x["step"] for x in cut] == [x["step"] for x in full] == [1, 2, 3]
    for a, b in zip(cut, full):
        for k in ("loss", "label/loss", "rationale/loss", "label/num_tokens", "rationale/num_tokens", "grad_norm",
                  "num_examples"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5, err_msg=f"step {a['step']} {k}")
    _, params_cut, _ = checkpointing.load_params(tmp_path / "cut", step=3)
    _, params_full, _ = checkpointing.load_params(tmp_path / "full", step=3)
    for x, y in zip(jax.tree.leaves(params_cut), jax.tree.leaves(params_full), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_packed_decoder_run_steps_on_packed_rows_with_the_unpacked_loss_and_resumes(tmp_path):
    # One sequence per example, so the examples of the first batch are whole: the first `n` of the data order.
    config = _config(tmp_path, "packed", "CAUSAL_FORMAT = 'rationale_first'", "PACK = True",
                     "PACKED_LENGTHS = {'decoder': 160}", "SAVE_EVERY = 1",
                     # A constant rate, so that a resumed run follows the same schedule.
                     "OptimizerConfig.schedule = 'constant'")
    assert config.pack and config.packed_lengths == {"decoder": 160}
    run = trainer.Trainer(config)
    params = run.initial_state()[0].params
    first = next(run.train_batches(0))
    rows = first[schema.PACKED]
    assert rows[schema.DECODER_TOKENS].shape == (8, 160)
    n = int(np.sum((rows[schema.DECODER_POSITIONS] == 0) & (rows[schema.DECODER_SEGMENT_IDS] > 0)))
    assert n > 8  # rows hold more than one example
    unpacked = next(inputs.train_batches(config.mixture_or_task_name, task_feature_lengths=LENGTHS, batch_size=n,
                                         seed=config.seed, streams=config.objective.streams, layout=run.layout))
    expected_loss, expected = jax.jit(lambda p, b: causal_objective.loss_fn(run.model, p, b, None, config.objective))(
        jax.device_get(params), unpacked)
    summary = run.run()
    assert summary["final_step"] == 3
    train = _train_metrics(tmp_path / "packed")
    assert [x["step"] for x in train] == [1, 2, 3]
    assert train[0]["num_examples"] == n == expected["num_examples"]
    assert all(x["num_examples"] > 8 for x in train)
    np.testing.assert_allclose(train[0]["loss"], float(expected_loss), rtol=2e-5)
    for k in ("label/loss", "rationale/loss", "label/num_tokens", "rationale/num_tokens"):
        np.testing.assert_allclose(train[0][k], float(expected[k]), rtol=2e-5, err_msg=k)
    # Resume: drop the checkpoints after step 1; the run restarts from it at data position 1.
    _, straight, _ = checkpointing.load_params(tmp_path / "packed", step=3)
    for step in ("2", "3"):
        shutil.rmtree(tmp_path / "packed" / "checkpoints" / step)
    resumed_run = trainer.Trainer(config)
    assert resumed_run.initial_state()[1] == 1
    resumed_run.run()
    _, resumed, _ = checkpointing.load_params(tmp_path / "packed", step=3)
    for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_packed_lengths_too_short_refuses_the_run_before_writing(tmp_path):
    config = _config(tmp_path, "short", "PACK = True", "PACKED_LENGTHS = {'decoder': 30}")
    with pytest.raises(ValueError, match=r"packed_lengths\['decoder'\] = 30 is shorter"):
        trainer.Trainer(config)
    assert not (tmp_path / "short").exists()
    bad_keys = dataclasses.replace(config, packed_lengths={"inputs": 96, "targets": 24})
    with pytest.raises(ValueError, match=r"decoder-only rows have one length"):
        trainer.Trainer(bad_keys)
