"""`sbs sweep`: grid planning, the fraction reaching every kind of registration, resumability, the report
recounted from prediction files, statistics against numpy/scipy, and figure data against the table."""
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

from sbs_jax.data.registry import splits as splits_lib
from sbs_jax.data.vocab import sentencepiece_vocab as vocab
from sbs_jax.data.records.data_dir import DataError, Example
from sbs_jax.commands import sweep as sweep_main, sweep_cell as cell_lib
from sbs_jax.sweep import grid, marker as marker_lib, results, runner
from test_gcs import gcs  # noqa: F401 - the local GCS emulator fixture

TINY_BINDINGS = ["TRAIN_STEPS = 4", "EVAL_EVERY = 2", "SAVE_EVERY = 2", "BATCH_SIZE = 8",
                 "LEARNING_RATE = 1e-2", "OptimizerConfig.warmup_steps = 1", "TrainConfig.log_every = 2",
                 "TrainConfig.tensorboard = False", "TrainConfig.eval_batch_size = 32",
                 "COMPUTE_DTYPE = 'float32'", "DROPOUT_RATE = 0.0", "VOCAB_SIZE = 256",
                 "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4, 'rationales': 12}"]


# ------------------------------------------------------------------------------------------ a tiny task
def _parity_examples(n: int, seed: int, odd_share: float) -> list[Example]:
    """'is N even?' with a rationale naming the last digit; the teacher is wrong on every 7th example."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(10, 99)
        k = k | 1 if rng.random() < odd_share else k & ~1
        label = "odd" if k % 2 else "even"
        teacher = ("even" if label == "odd" else "odd") if i % 7 == 0 else label
        out.append(Example(f"is {k} even?", label, f"{k} ends in {k % 10} so {label}", teacher))
    return out


@pytest.fixture(scope="module")
def parity_task(tmp_path_factory):
    """A JSON-lines task (train 64 / validation 24 / test 24) and a dataset gin file registering it with
    `register_jsonl_task`, its fraction routed through TRAIN_FRACTION: 'any registered task'."""
    root = tmp_path_factory.mktemp("parity")
    data = {"train": _parity_examples(64, 0, 0.5), "validation": _parity_examples(24, 1, 0.7),
            "test": _parity_examples(24, 2, 0.3)}
    files = {}
    for split, exs in data.items():
        files[split] = str(root / f"{split}.jsonl")
        with open(files[split], "w") as f:
            for ex in exs:
                f.write(json.dumps({"input": ex.input, "label": ex.label, "rationale": ex.rationale,
                                    "teacher_label": ex.teacher_label}) + "\n")
    spm = vocab.train_vocabulary(vocab.model_texts(data["train"]), root / "vocab", vocab_size=60,
                                 model_type="bpe")
    gin_file = root / "parity.gin"
    gin_file.write_text(f"""
DATASET = 'parity'
TRAIN_FRACTION = 1.0
TASK_REGISTRATIONS = [@parity/sbs_jax.data.register_jsonl_task()]
parity/sbs_jax.data.register_jsonl_task:
  name = 'parity'
  files = {json.dumps(files)}
  vocabulary = '{spm}'
  teacher_label_field = 'teacher_label'
  train_fraction = %TRAIN_FRACTION
""")
    return {"gin": str(gin_file), "train": len(data["train"])}


def _tiny_config(sweep_dir, parity_task, **kw) -> grid.SweepConfig:
    args = dict(sweep_dir=str(sweep_dir), dataset_gin=parity_task["gin"], methods=["finetune", "step_by_step"],
                fractions=[0.5, 1.0], seeds=[0], models=["t5_1_1_tiny"], bindings=TINY_BINDINGS)
    args.update(kw)
    return grid.SweepConfig(**args)


# ------------------------------------------------------------------------------------------ planning
def test_cells_planned_as_configured(tmp_path):
    config = grid.SweepConfig(sweep_dir=str(tmp_path), dataset_gin="datasets/cqa.gin",
                              methods=["finetune", "step_by_step_llm"], fractions=[0.125, 1.0], seeds=[3, 4],
                              models=["t5_1_1_small", "t5_1_1_base=/ckpt/base"], gin_files=["runs/paper_recipe.gin"],
                              bindings=["TRAIN_STEPS = 7"])
    cells = grid.plan_cells(config)
    assert len(cells) == 2 * 2 * 2 * 2 and len({c.key for c in cells}) == 16
    assert cells[0].key == "t5_1_1_small/finetune/f0.125/seed3"
    assert cells[-1].key == "t5_1_1_base/step_by_step_llm/f1/seed4"
    spec = runner.cell_spec(config, cells[-1], ["DATA_DIR = '/d'"])
    assert spec["gin_files"] == ["models/t5_1_1_base.gin", "runs/step_by_step.gin", "datasets/cqa.gin",
                                 "runs/paper_recipe.gin"]
    assert spec["bindings"] == ["TRAIN_STEPS = 7", "DATA_DIR = '/d'", "TASK_VARIANT = 'sbs_llm'",
                                f"MODEL_DIR = '{tmp_path}/t5_1_1_base/step_by_step_llm/f1/seed4'", "SEED = 4",
                                "TRAIN_FRACTION = 1.0", "INITIAL_CHECKPOINT_PATH = '/ckpt/base'"]
    first = runner.cell_spec(config, cells[0], [])
    assert first["gin_files"][:2] == ["models/t5_1_1_small.gin", "runs/finetune.gin"]
    assert not any(b.startswith("INITIAL_CHECKPOINT_PATH") for b in first["bindings"])


def test_variants_are_methods_with_bindings_and_the_rationale_study_plans_30_cells(tmp_path):
    study = sweep_main.parse_sweep(["sweeps/rationales.gin"], [f"SWEEP_DIR = '{tmp_path}'"])
    cells = grid.plan_cells(study)
    assert len(cells) == 5 * 2 * 3 and {c.method for c in cells} == {
        "finetune", "step_by_step", "sbs_agree", "sbs_k4", "sbs_k4_agree"}
    cell = next(c for c in cells if c.method == "sbs_k4_agree")
    spec = runner.cell_spec(study, cell, [])
    assert spec["gin_files"][1] == "runs/step_by_step.gin"
    assert spec["bindings"][:2] == ["sbs_jax.tasks.register_arith_tasks.rationales_per_example = 4",
                                    "sbs_jax.tasks.register_arith_tasks.rationale_filters = {'agree_with_gold': True}"]
    assert grid.method_order(["sbs_k4", "finetune", "distill"]) == ["finetune", "distill", "sbs_k4"]
    for bad in ({"finetune": ["step_by_step", []]}, {"x": ["nope", []]}, {"x": ["finetune", "A = 1"]}):
        with pytest.raises(ValueError, match="Sweep.variants"):
            grid.SweepConfig(sweep_dir=str(tmp_path), dataset_gin="d.gin", variants=bad)


@pytest.mark.parametrize("field,value,message", [
    ("methods", ["finetune", "sbs"], "Sweep.methods"), ("fractions", [0.0], "Sweep.fractions"),
    ("fractions", [0.5, 0.5], "no repeated"), ("seeds", [], "non-empty"), ("models", ["x="], "Sweep.models")])
def test_bad_sweep_settings_are_named(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        grid.SweepConfig(sweep_dir=str(tmp_path), dataset_gin="datasets/cqa.gin", **{field: value})


def test_paper_study_gin_files(tmp_path):
    data = sweep_main.parse_sweep(["sweeps/data_size.gin"], [f"SWEEP_DIR = '{tmp_path}'"])
    assert list(data.fractions) == [0.125, 0.25, 0.5, 1.0] and len(data.methods) == 4
    assert len(grid.plan_cells(data)) == 4 * 4 * len(data.seeds)
    size = sweep_main.parse_sweep(["sweeps/model_size.gin"], [f"SWEEP_DIR = '{tmp_path}'",
                                                              "Sweep.seeds = [0, 1, 2]"])
    assert list(size.models) == ["t5_1_1_small", "t5_1_1_base", "t5_1_1_large"] and len(grid.plan_cells(size)) == 36
    with pytest.raises(ValueError, match="Sweep.sweep_dir is not set: pass --gin.SWEEP_DIR"):
        sweep_main.parse_sweep(["sweeps/data_size.gin"], [])
    assert sweep_main.is_sweep_binding("Sweep.seeds = [1]") and not sweep_main.is_sweep_binding("DATA_DIR = 'x'")


# ------------------------------------------------------------------------------------------ the fraction
def _cell_task(config, cell):
    """Parse a cell's gin as the cell process does and register its task; (TrainConfig, TaskInfo)."""
    from sbs_jax.data.registry import register
    from sbs_jax.commands import gin_utils

    spec = runner.cell_spec(config, cell, [])
    gin_utils.parse(spec["gin_files"], spec["bindings"])
    train_config = gin_utils.build("TrainConfig", "sweep cell", strict=False)  # as a cell builds it
    cell_lib.check_fraction(train_config.mixture_or_task_name, cell.fraction, config.fraction_binding)
    return train_config, register.get_task_info(train_config.mixture_or_task_name)


def test_fraction_reaches_paper_embedded_and_user_tasks(tmp_path, datasets_dir, parity_task):
    from sbs_jax.data.records import data_dir as records

    spm = vocab.train_vocabulary(vocab.model_texts(records.read_split(datasets_dir, "svamp", "train").examples),
                                 tmp_path / "v", vocab_size=300)
    paper = grid.SweepConfig(sweep_dir=str(tmp_path), dataset_gin="datasets/svamp.gin", methods=["distill"],
                             fractions=[0.25], models=["t5_1_1_tiny"],
                             bindings=[f"DATA_DIR = '{datasets_dir}'", f"SPIECE_MODEL = '{spm}'"])
    train_config, info = _cell_task(paper, grid.plan_cells(paper)[0])
    assert train_config.mixture_or_task_name == "svamp_distill"
    # SVAMP train 800: 10% carved to validation (80), then 25% of the 720 left.
    assert len(info.split_data["validation"].examples) == 80
    assert len(info.split_data["train"].examples) == splits_lib.subset_size(0.25, 720) == 180
    embedded = grid.SweepConfig(sweep_dir=str(tmp_path), dataset_gin="datasets/arith.gin", methods=["finetune"],
                                fractions=[0.125], models=["t5_1_1_tiny"], gin_files=["runs/quickstart.gin"])
    _, info = _cell_task(embedded, grid.plan_cells(embedded)[0])
    assert info.train_fraction == 0.125 and info.name == "arith_ft"
    user = _tiny_config(tmp_path, parity_task, fractions=[0.5])
    _, info = _cell_task(user, grid.plan_cells(user)[0])
    assert len(info.split_data["train"].examples) == 32 == parity_task["train"] // 2
    # A binding that reaches no registration: one error naming the setting, not a silent full-data run.
    wrong = grid.SweepConfig(sweep_dir=str(tmp_path), dataset_gin="datasets/arith.gin", methods=["finetune"],
                             fractions=[0.5], models=["t5_1_1_tiny"], gin_files=["runs/quickstart.gin"],
                             fraction_binding="NOT_A_FRACTION")
    with pytest.raises(ValueError, match="Sweep.fraction_binding='NOT_A_FRACTION' does not reach"):
        _cell_task(wrong, grid.plan_cells(wrong)[0])


# ------------------------------------------------------------------------------------------ statistics
def _row(method, fraction, seed, acc, model="m"):
    return {"model": model, "method": method, "fraction": fraction, "seed": seed, "test_accuracy": acc,
            "validation_accuracy": acc + 1, "test_accuracy_last": acc - 1, "parameters": 10,
            "train_examples": int(fraction * 100)}


def test_mean_std_and_t_interval_against_numpy_and_scipy():
    from scipy import stats

    values = {("finetune", 1.0): [61.0, 63.5, 62.25, 60.0], ("finetune", 0.25): [50.0, 52.0, 55.5, 49.0],
              ("step_by_step", 0.25): [61.0, 64.0, 62.0, 63.0], ("step_by_step", 1.0): [66.0, 65.0, 67.5, 64.0]}
    rows = [_row(m, f, s, v) for (m, f), vs in values.items() for s, v in enumerate(vs)]
    groups = {(g["method"], g["fraction"]): g for g in results.aggregate(rows)}
    for key, vs in values.items():
        g = groups[key]
        assert g["n"] == 4 and g["test_values"] == vs
        assert math.isclose(g["test_mean"], np.mean(vs)) and math.isclose(g["test_std"], np.std(vs, ddof=1))
        lo, hi = stats.t.interval(0.95, len(vs) - 1, loc=np.mean(vs), scale=stats.sem(vs))
        assert math.isclose(g["test_ci95"], (hi - lo) / 2)
    heads = {h["method"]: h for h in results.headline(list(groups.values()))}
    assert heads["step_by_step"]["smallest_fraction"] == 0.25 and heads["finetune"]["smallest_fraction"] == 1.0
    assert math.isclose(heads["step_by_step"]["target"], np.mean(values[("finetune", 1.0)]))
    one = results.aggregate([_row("distill", 0.5, 0, 40.0)])[0]
    assert one["test_std"] is None and one["test_ci95"] is None


def test_recount_rescores_rows_with_the_task_metric(tmp_path):
    path = epath.Path(tmp_path) / "test_step5.jsonl"
    rows = [{"gold": "( 84.0 / 2.0 )", "prediction": "(84 / 2)", "correct": False},   # equal by value
            {"gold": "( 3.0 + 4.0 )", "prediction": "(3 + 5)", "correct": True},      # logged flag is wrong
            {"gold": "yes", "prediction": " yes ", "correct": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert math.isclose(results.recount_file(path, "equation"), 100 * 1 / 3)  # "yes" is no equation
    assert math.isclose(results.recount_file(path, "exact_match"), 100 * 1 / 3)
    path.write_text('{"gold": "a"}\n')
    with pytest.raises(DataError, match="test_step5.jsonl:1"):
        results.recount_file(path, "exact_match")


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, parity_task):
    """2 methods × 2 fractions × 1 seed, the cells run in this process (`--in_process`: four fresh processes
    cost ~4 × 10 s of TF/JAX start-up; the slow kill test runs them as processes)."""
    import jax

    root = tmp_path_factory.mktemp("sweep")
    config = _tiny_config(root, parity_task)
    # Cells of one method compile the same steps: a persistent cache (as `sbs sweep` cells use) compiles once.
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                 "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        counts = runner.run_sweep(config, launch=cell_lib.launch_in_process)
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
    report = results.write_report(config.sweep_dir)
    return {"config": config, "counts": counts, "report": report, "root": root}


def test_tiny_sweep_end_to_end(tiny_sweep, parity_task):
    assert tiny_sweep["counts"] == {"total": 4, "skipped": 0, "run": 4}
    root, rows = tiny_sweep["root"], tiny_sweep["report"]["rows"]
    assert [(r["method"], r["fraction"]) for r in rows] == [
        ("finetune", 0.5), ("finetune", 1.0), ("step_by_step", 0.5), ("step_by_step", 1.0)]
    assert not tiny_sweep["report"]["missing"]
    jsonl = [json.loads(x) for x in (root / "results.jsonl").read_text().splitlines()]
    assert jsonl == rows
    for r in rows:
        cell = epath.Path(r["run_dir"])
        assert r["train_examples"] == splits_lib.subset_size(r["fraction"], parity_task["train"])
        assert r["steps"] == 4 and r["parameters"] > 0 and r["wall_s"] > 0
        # The cell's own reports: summary.json (test at the validation-best step) and metrics.jsonl.
        summary = json.loads((cell / "summary.json").read_text())
        assert r["best_step"] == summary["best_step"] == summary["test"]["step"]
        assert math.isclose(r["test_accuracy"], summary["test"]["accuracy"])
        logged = {m["step"]: m["accuracy"] for m in map(json.loads, (cell / "metrics.jsonl").read_text().splitlines())
                  if m["split"] == "validation"}
        assert set(logged) == {2, 4}
        assert all(math.isclose(a, logged[s]) for s, a in r["validation_curve"])
        assert math.isclose(r["validation_accuracy"], max(logged.values()))
        marker = json.loads((cell / marker_lib.MARKER).read_text())
        assert math.isclose(r["test_accuracy_last"], marker["test_last"]["accuracy"])
        # An independent count of the last step's test file.
        preds = [json.loads(x) for x in (cell / "predictions" / "test_step4.jsonl").read_text().splitlines()]
        assert len(preds) == 24
        assert math.isclose(r["test_accuracy_last"],
                            100 * np.mean([p["gold"].strip() == p["prediction"].strip() for p in preds]))
    md = (root / "results.md").read_text()
    assert "| t5_1_1_tiny | standard finetuning | 50 % | 32 | 1 |" in md
    assert "Smallest training fraction" in md and "Teacher accuracy computed from the data (test split)" in md


def test_figure_data_equals_the_table_and_pngs_open(tiny_sweep):
    import matplotlib.image

    root, groups = tiny_sweep["root"], tiny_sweep["report"]["groups"]
    rows = tiny_sweep["report"]["rows"]
    names = sorted(p.name for p in tiny_sweep["report"]["figures"])
    assert names == ["data_size_t5_1_1_tiny.png", "model_size.png", "validation_t5_1_1_tiny.png"]
    for name in names:
        image = matplotlib.image.imread(str(root / name))
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    data = json.loads((root / "data_size_t5_1_1_tiny.json").read_text())
    for s in data["series"]:
        mine = sorted((g for g in groups if g["method"] == s["method"]), key=lambda g: g["fraction"])
        assert s["fraction_percent"] == [g["fraction"] * 100 for g in mine]
        assert s["test_mean"] == [g["test_mean"] for g in mine]
        assert s["test_per_seed"] == [g["test_values"] for g in mine]
    teacher = [r["teacher_accuracy"]["test"] for r in rows]
    assert data["teacher"] == {"accuracy": teacher[0], "split": "test"} and len(set(teacher)) == 1
    # 24 test examples, teacher wrong on every 7th (i = 0, 7, 14, 21): 20 of 24 right.
    assert math.isclose(teacher[0], 100 * 20 / 24)
    assert data["paper_table1"] is None  # not a paper dataset
    size = json.loads((root / "model_size.json").read_text())
    assert size["fraction"] == 1.0
    for s in size["series"]:
        g = next(g for g in groups if g["method"] == s["method"] and g["fraction"] == 1.0)
        assert s["test_mean"] == [g["test_mean"]] and s["parameters"] == [g["parameters"]]
    curves = json.loads((root / "validation_t5_1_1_tiny.json").read_text())["cells"]
    assert {(c["method"], c["fraction"]) for c in curves} == {(r["method"], r["fraction"]) for r in rows}
    for c in curves:
        r = next(r for r in rows if (r["method"], r["fraction"]) == (c["method"], c["fraction"]))
        assert [[s, a] for s, a in zip(c["steps"], c["validation_accuracy"])] == r["validation_curve"]


def test_rerun_skips_finished_cells_and_reruns_damaged_ones(tiny_sweep, tmp_path, parity_task):
    """Runner decisions on a copy of the finished sweep: valid cells skipped; a corrupted marker cleared and
    rerun; a cell without a marker rerun in place; neither counted until it has a valid marker again."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_sweep["root"], root)
    config = _tiny_config(root, parity_task)
    assert runner.run_sweep(config, launch=_must_not_run) == {"total": 4, "skipped": 4, "run": 0}
    corrupt, unfinished = root / "t5_1_1_tiny/finetune/f0.5/seed0", root / "t5_1_1_tiny/step_by_step/f1/seed0"
    (corrupt / marker_lib.MARKER).write_text('{"spec": ')
    (unfinished / marker_lib.MARKER).unlink()
    rows, missing = results.collect(root)
    assert len(rows) == 2 and sorted(k for k, _ in missing) == [
        "t5_1_1_tiny/finetune/f0.5/seed0", "t5_1_1_tiny/step_by_step/f1/seed0"]
    assert any("corrupted completion marker" in why for _, why in missing)
    results.write_report(root, figures=False)
    assert "## Cells not counted (2)" in (root / "results.md").read_text()
    launched = []

    def relaunch(spec, cell_dir):  # stands in for the cell process: put the original run back
        launched.append((spec["cell"], (cell_dir / "predictions").exists(), (cell_dir / "checkpoints").exists()))
        key = grid.Cell(**spec["cell"]).key
        if cell_dir.exists():
            shutil.rmtree(cell_dir)
        shutil.copytree(tiny_sweep["root"] / key, cell_dir)
        marker = json.loads((cell_dir / marker_lib.MARKER).read_text())
        marker["spec"] = spec
        (cell_dir / marker_lib.MARKER).write_text(json.dumps(marker))

    assert runner.run_sweep(config, launch=relaunch) == {"total": 4, "skipped": 2, "run": 2}
    # The corrupted cell was cleared before its rerun; the unfinished one kept its checkpoints to resume from.
    assert [(c["method"], c["fraction"], preds, ckpts) for c, preds, ckpts in launched] == [
        ("finetune", 0.5, False, False), ("step_by_step", 1.0, True, True)]
    assert len(results.collect(root)[0]) == 4
    # An unfinished cell started with other settings (its cell_spec.json) is cleared, not resumed.
    (unfinished / marker_lib.MARKER).unlink()
    started = json.loads((unfinished / runner.SPEC_FILE).read_text())
    (unfinished / runner.SPEC_FILE).write_text(json.dumps({**started, "bindings": ["TRAIN_STEPS = 99"]}))
    launched.clear()
    assert runner.run_sweep(config, launch=relaunch)["run"] == 1
    assert [(c["method"], preds, ckpts) for c, preds, ckpts in launched] == [("step_by_step", False, False)]
    # A launch that leaves no valid marker is an error, not a counted cell.
    (unfinished / marker_lib.MARKER).unlink()
    with pytest.raises(runner.CellFailed, match="without a valid completion marker"):
        runner.run_sweep(config, launch=lambda spec, cell_dir: None)


def _must_not_run(spec, cell_dir):
    raise AssertionError(f"finished cell {spec['cell']} was run again")


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_finished_cells(tmp_path, parity_task):
    """SIGKILL the `sbs sweep` process group after its first cell finishes; rerun: the finished cell is not
    redone, the killed one is rerun, and the report counts all four."""
    root = tmp_path / "sweep"
    config = _tiny_config(root, parity_task)
    gin_file = tmp_path / "tiny_sweep.gin"
    gin_file.write_text(
        f"Sweep.sweep_dir = '{root}'\nSweep.dataset_gin = '{parity_task['gin']}'\n"
        f"Sweep.methods = {list(config.methods)}\nSweep.fractions = {list(config.fractions)}\n"
        f"Sweep.seeds = [0]\nSweep.models = ['t5_1_1_tiny']\nSweep.bindings = {json.dumps(TINY_BINDINGS)}\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    cmd = [sys.executable, "-m", "sbs_jax.commands.sweep", f"--gin_file={gin_file}", "--no_report"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    first = root / grid.plan_cells(config)[0].key / marker_lib.MARKER
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists(), proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "timeout"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the cell it is running
    proc.wait()
    stamp = first.stat().st_mtime_ns
    second = root / grid.plan_cells(config)[1].key
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 cells" in out.stdout and "1 finished, 3 to run" in out.stdout
    assert "[4/4 cells done]" in out.stdout and "ETA" in out.stdout
    assert first.stat().st_mtime_ns == stamp  # not redone
    assert marker_lib.read(second)[0] is not None
    rows, missing = results.collect(root)
    assert len(rows) == 4 and not missing


def test_finished_sweep_on_gcs_is_skipped_and_reported(tiny_sweep, gcs, parity_task):
    """A sweep dir on gs:// (the local emulator of test_gcs.py): finished cells are recognised and skipped,
    a corrupted marker is cleared, and the report and figures are written there."""
    from test_gcs import BUCKET

    local = tiny_sweep["root"]
    for path in local.rglob("*"):
        if path.is_file() and "checkpoints" not in path.parts:
            gcs.put_file(str(path), f"{BUCKET}/sweep/{path.relative_to(local)}")
    root = f"gs://{BUCKET}/sweep"
    config = _tiny_config(root, parity_task)
    assert runner.run_sweep(config, launch=_must_not_run) == {"total": 4, "skipped": 4, "run": 0}
    out = results.write_report(root)
    mine = [{k: v for k, v in r.items() if k != "run_dir"} for r in out["rows"]]
    assert mine == [{k: v for k, v in r.items() if k != "run_dir"} for r in tiny_sweep["report"]["rows"]]
    assert out["rows"][0]["run_dir"].startswith(root)
    assert gcs.exists(f"{BUCKET}/sweep/results.md") and gcs.exists(f"{BUCKET}/sweep/data_size_t5_1_1_tiny.json")
    assert not os.path.exists("gs:")
    bad = f"{BUCKET}/sweep/t5_1_1_tiny/finetune/f1/seed0"
    gcs.pipe(f"{bad}/{marker_lib.MARKER}", b"not json")
    launched = []

    def relaunch(spec, cell_dir):
        launched.append((str(cell_dir), (cell_dir / "predictions").exists()))  # leave no marker
    with pytest.raises(runner.CellFailed, match="without a valid completion marker"):
        runner.run_sweep(config, launch=relaunch)
    assert launched == [(f"gs://{bad}", False)] and not gcs.exists(f"{bad}/{marker_lib.MARKER}")


def test_paper_dataset_figures_show_table1_and_the_teachers_data_accuracy(tmp_path):
    """On a paper dataset the figures and results.md carry the paper's Table 1 numbers (labelled, from
    paper_results) and the teacher accuracy recorded from the data; drawn from rows as the report has them."""
    import matplotlib.image

    from sbs_jax.sweep import figures, paper_results

    rows = []
    for method, base in (("finetune", 50.0), ("step_by_step", 55.0)):
        for fraction in (0.5, 1.0):
            for seed in (0, 1):
                acc = base + 10 * fraction + seed
                rows.append({**_row(method, fraction, seed, acc, model="t5_1_1_base"), "dataset": "svamp",
                             "best_step": 4, "validation_curve": [[2, acc - 3], [4, acc + 1]], "run_dir": "x",
                             "teacher_accuracy": {"train": 73.25, "test": 74.0}})
    groups = results.aggregate(rows)
    made = figures.draw_all(epath.Path(tmp_path), rows, groups)
    assert all(matplotlib.image.imread(str(p)).ndim == 3 for p in made)
    data = json.loads((tmp_path / "data_size_t5_1_1_base.json").read_text())
    assert data["paper_table1"]["test"] == paper_results.TABLE1["svamp"] == {"finetune": 62.63, "step_by_step": 65.5}
    assert data["paper_table1"]["citation"].startswith("Hsieh et al. 2023")
    assert data["teacher"] == {"accuracy": 74.0, "split": "test"}
    assert [s["test_mean"] for s in data["series"]] == [[55.5, 60.5], [60.5, 65.5]]
    size = json.loads((tmp_path / "model_size.json").read_text())
    assert size["teacher"]["accuracy"] == 74.0 and size["paper_table1"]["parameters"] == 220_000_000
    md = results.markdown(rows, groups, [], "t")
    assert "Paper (Hsieh et al. 2023" in md and "standard finetuning 62.63 %" in md
    assert "Teacher accuracy computed from the data (test split): 74.00 %" in md
    assert "- t5_1_1_base, step-by-step (gold labels): 50 % (target 60.50 %)" in md


def test_teacher_line_is_drawn_in_range_and_noted_when_far_above_the_students():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sbs_jax.sweep import figures

    _, near = plt.subplots()
    figures._teacher_line(near, 70.0, "test", [55.0, 61.0, 63.5])
    assert [line.get_ydata()[0] for line in near.get_lines()] == [70.0] and not near.texts
    _, far = plt.subplots()
    figures._teacher_line(far, 89.3, "test", [16.4, 20.0, 28.7])
    low, high = far.get_ylim()
    assert not far.get_lines() and low < 16.4 and 28.7 < high < 89.3
    assert [t.get_text() for t in far.texts] == ["teacher, computed from data (test): 89.3 % (above this axis)"]
    plt.close("all")
