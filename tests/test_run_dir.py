"""sbs_jax.run_dir without training: atomic writes, run.json, and what the compatibility check compares."""
import json

import pytest

from sbs_jax import errors, run_dir
from sbs_jax.model import get_config
from sbs_jax.model.t5.config import preset_name


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "model_config.json"
    run_dir.atomic_write_text(target, "old")
    run_dir.atomic_write_text(target, "new contents")
    assert target.read_text() == "new contents"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model_config.json"]
    run_dir.atomic_copy(target, tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == b"new contents"


def _stored_run(tmp_path, config, task="svamp_ft", seed=0, step=False):
    rd = run_dir.RunDir(tmp_path / "run")
    run_dir.atomic_write_text(rd.model_config_json, json.dumps(config.to_dict()))
    info = run_dir.run_info(task=task, task_feature_lengths={"inputs": 8}, mode="finetune", seed=seed,
                            train_fraction=None, model_config=config, preset=preset_name(config))
    run_dir.write_run_info(rd.root, info)
    if step:
        (rd.checkpoints_dir / "3" / "state").mkdir(parents=True)
    return rd


def test_runtime_fields_may_change_architecture_task_and_seed_may_not(tmp_path):
    config = get_config("t5_1_1_tiny", vocab_size=128)
    rd = _stored_run(tmp_path, config, step=True)
    run_dir.check_compatible(rd.root, config.replace(dtype="float32", dropout_rate=0.3, remat_policy="full"),
                             task="svamp_ft", seed=0)
    with pytest.raises(errors.UsageError, match=r"model_config.d_ff: 128 in the run, 256 now"):
        run_dir.check_compatible(rd.root, config.replace(d_ff=256), task="svamp_ft", seed=0)
    with pytest.raises(errors.UsageError, match=r"scan_layers: False in the run, True now"):
        run_dir.check_compatible(rd.root, config.replace(scan_layers=True), task="svamp_ft", seed=0)
    with pytest.raises(errors.UsageError, match=r"task: 'svamp_ft' in the run, 'cqa_ft' now"):
        run_dir.check_compatible(rd.root, config, task="cqa_ft", seed=0)
    with pytest.raises(errors.UsageError, match=r"seed: 0 in the run, 1 now"):
        run_dir.check_compatible(rd.root, config, task="svamp_ft", seed=1)


def test_before_any_checkpoint_scan_and_seed_are_free(tmp_path):
    config = get_config("t5_1_1_tiny", vocab_size=128)
    rd = _stored_run(tmp_path, config, step=False)
    run_dir.check_compatible(rd.root, config.replace(scan_layers=True), task="svamp_ft", seed=5)
    run_dir.check_compatible(tmp_path / "fresh", config, task="x", seed=0)  # no run there: nothing to compare


def test_run_info_round_trip_and_old_runs(tmp_path):
    config = get_config("t5_1_0_small", vocab_size=32128)
    rd = _stored_run(tmp_path, config)
    info = run_dir.read_run_info(rd.root)
    assert info["task"] == "svamp_ft" and info["model"]["preset"] == "t5_1_0_small"
    assert info["model"]["d_ff"] == 2048 and "dtype" not in info["model"]
    assert info["sbs_jax_version"] and info["versions"]["jax"]
    assert run_dir.read_run_info(tmp_path / "older_run") is None


def test_export_falls_back_to_the_gin_config_of_runs_without_run_json(tmp_path):
    from sbs_jax.commands import export as export_cli

    (tmp_path / "config.gin").write_text("TASK_FEATURE_LENGTHS = \\\n    {'inputs': 40, 'targets': 6}\n")
    assert export_cli.run_feature_lengths(tmp_path) == {"inputs": 40, "targets": 6}
    run_dir.write_run_info(tmp_path, {"task_feature_lengths": {"inputs": 48, "targets": 4}})
    assert export_cli.run_feature_lengths(tmp_path) == {"inputs": 48, "targets": 4}


def test_preset_names():
    assert preset_name(get_config("t5_1_1_base", vocab_size=500, dtype="float32")) == "t5_1_1_base"
    assert preset_name(get_config("t5_1_0_tiny")) == "t5_1_0_tiny"
    assert preset_name(get_config("t5_1_1_tiny", d_model=16)) is None
