"""Slow end-to-end checks of the trainer, each in subprocesses run under `timeout -s KILL`:
exact resume after SIGKILL (also through a corrupted checkpoint), two processes equal to one (also with length
bucketing, whose cut lengths the processes agree on), and a
few-hundred-step run on the embedded task that learns well above chance."""
import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sbs_jax.train import checkpointing

pytestmark = pytest.mark.slow
REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBS_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    return env


def _train_cmd(model_dir, *extra, timeout_s=900):
    return ["timeout", "-s", "KILL", str(timeout_s), sys.executable, "-m", "sbs_jax.cli", "train",
            "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/step_by_step.gin", "--gin_file=datasets/arith.gin",
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.BATCH_SIZE=8", "--gin.COMPUTE_DTYPE='float32'",
            "--gin.DROPOUT_RATE=0.1", "--gin.model_config.d_model=32", "--gin.model_config.num_layers=1",
            "--gin.VALIDATION_SPLIT=None", "--gin.TEST_SPLIT=None", "--gin.TrainConfig.tensorboard=False", *extra]


def _params(model_dir, step):
    _, params, _ = checkpointing.load_params(model_dir, step=step)
    return params


def _assert_identical(a, b):
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_resume_is_bit_identical(tmp_path):
    steps = ["--gin.TRAIN_STEPS=12", "--gin.SAVE_EVERY=2", "--gin.TrainConfig.log_every=1"]
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref, *steps), cwd=REPO, env=_env(2), check=True, capture_output=True)

    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(run, *steps), cwd=REPO, env=_env(2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (run / "checkpoints" / "6").is_dir():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its `timeout` wrapper: their own process group
    proc.wait()
    assert (run / "checkpoints").is_dir(), "no checkpoint within 600 s: the machine is too slow for this test"
    done = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert done and done[-1] < 12, f"the run was not interrupted: {done}"

    # Damage the newest complete checkpoint: the restart must fall back, say so, and still end identical.
    newest = run / "checkpoints" / str(done[-1])
    for f in (newest / "state").rglob("d/*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out = subprocess.run(_train_cmd(run, *steps), cwd=REPO, env=_env(2), check=True, capture_output=True,
                         text=True)
    assert "falling back" in out.stdout and "resumed from" in out.stdout
    _assert_identical(_params(ref, 12), _params(run, 12))


def _single_and_two_processes(tmp_path, *flags):
    """Final params of a one-process run with 2 input shards and of the same run on 2 processes."""
    single = tmp_path / "single"
    subprocess.run(_train_cmd(single, *flags), cwd=REPO, env=_env(2), check=True, capture_output=True)

    multi = tmp_path / "multi"
    port = 23000 + os.getpid() % 2000
    procs = []
    for pid in range(2):
        # One CPU device per process: with several, cross-process steps can deadlock (stack notes, §4).
        env = _env(1, SBS_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", SBS_NUM_PROCESSES="2",
                   SBS_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(_train_cmd(multi, *flags, timeout_s=600), cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return outputs[0], _params(single, 3), _params(multi, 3)


def _assert_close(a, b):
    """Same tree (structure and shapes), not empty, values equal up to float summation order."""
    import jax

    assert jax.tree.structure(a) == jax.tree.structure(b)
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) > 0 and sum(np.size(x) for x in la) > 1000  # a whole model, not an empty tree
    for x, y in zip(la, lb):
        assert np.shape(x) == np.shape(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_two_processes_equal_one(tmp_path):
    flags = ["--gin.TRAIN_STEPS=3", "--gin.SAVE_EVERY=3", "--gin.TrainConfig.num_input_shards=2"]
    _, a, b = _single_and_two_processes(tmp_path, *flags)
    _assert_close(a, b)


def test_two_processes_agree_on_bucket_lengths(tmp_path):
    # Each process holds 4 of the 8 rows, so their own longest rows differ; with a bucket at every length
    # both must cut to the global max (different shapes would fail to form global arrays) and train what one
    # process trains.
    flags = ["--gin.TRAIN_STEPS=3", "--gin.SAVE_EVERY=3", "--gin.TrainConfig.num_input_shards=2",
             "--gin.LENGTH_BUCKETS=True", "--gin.TrainConfig.min_bucket_length=1", "--gin.TrainConfig.bucket_step=1",
             "--gin.SEED=2",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 8, 'rationales': 32}"]
    out, a, b = _single_and_two_processes(tmp_path, *flags)
    assert "train step compiled for lengths encoder" in out and "encoder 96" not in out
    # Step 1's inputs need 33 tokens in process 0's rows and 34 in process 1's (seed 2): process 0 cuts to 34.
    assert "compiled for lengths encoder 34, label 2, rationale 11" in out
    _assert_close(a, b)


def test_quickstart_compares_both_methods_over_three_seeds(tmp_path):
    out = subprocess.run(["timeout", "-s", "KILL", "1500", sys.executable, "-m", "sbs_jax.cli", "quickstart",
                          "--workdir", str(tmp_path)], cwd=REPO, env=_env(1), check=True, capture_output=True,
                         text=True)
    print(out.stdout[-3000:])
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["pairs"] == 9 and report["test_examples"] == 2000 and report["train_examples"] == 250
    for mode in ("finetune", "step_by_step"):
        assert sorted(report["cells"][mode]) == ["0", "1", "2"]
        for seed, cell in report["cells"][mode].items():
            summary = json.loads((tmp_path / f"{mode}_seed{seed}" / "summary.json").read_text())
            rows = [json.loads(x) for x in pathlib.Path(cell["predictions"]).read_text().splitlines()]
            # The printed accuracy is the run's own, recounted from its predictions, at the validation-chosen step.
            recounted = 100.0 * sum(r["correct"] for r in rows) / len(rows)
            assert cell["test"] == summary["test"]["accuracy"] == pytest.approx(recounted) and len(rows) == 2000
            assert cell["step"] == summary["best_step"]
            # Chance: always answering the most frequent test label.
            majority = 100.0 * collections.Counter(r["gold"] for r in rows).most_common(1)[0][1] / len(rows)
            assert cell["test"] > majority, (mode, seed, cell, majority)
    assert "Seed pairs (finetuning seed, step-by-step seed) where step-by-step scores higher" in out.stdout