"""`sbs compile`: slice names, the abstract path on compile-only TPU devices (libtpu, no TPU), the plan's
divisibility checks, per chip shares, the batch shapes the run feeds, and the same program as `sbs train`.

libtpu is in the test extra: these tests fail (not skip) without it. The TPU compiles themselves take tens of
seconds on a loaded 2-core machine, so they are marked slow.
"""
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from sbs_jax import partitioning
from sbs_jax.commands import compile as compile_cmd
from sbs_jax.data import schema
from sbs_jax.model import Transformer, get_config
from sbs_jax.tpu import analysis, report, topologies
from sbs_jax.train import aot, batch_cutting, objective, state as state_lib, trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = get_config("t5_1_1_tiny", vocab_size=128, num_layers=1, dtype="bfloat16", dropout_rate=0.0)
TINY_GIN = ["models/t5_1_1_tiny.gin", "runs/step_by_step.gin", "datasets/arith.gin"]


def _config(**overrides):
    fields = dict(model_dir="/unused", mixture_or_task_name="unused", train_steps=10, batch_size=16, model=TINY,
                  task_feature_lengths={"inputs": 32, "targets": 16, "rationales": 16},
                  objective=objective.ObjectiveConfig(mode="step_by_step"), eval_batch_size=8)
    fields.update(overrides)
    return trainer.TrainConfig(**fields)


@pytest.mark.parametrize("name,topology,chips,hosts,cloud", [
    ("v5litepod-16", "v5e:4x4", 16, 4, "v5litepod-16"),
    ("v5e-8", "v5e:2x4", 8, 1, "v5litepod-8"),
    ("v4-32", "v4:2x2x4", 16, 4, "v4-32"),    # v4 names count TensorCores: 32 cores = 16 chips
    ("v4-8", "v4:2x2x1", 4, 1, "v4-8"),
    ("v5p-32", "v5p:2x2x4", 16, 4, "v5p-32"),
    ("v6e-8", "v6e:2x4", 8, 1, "v6e-8"),
    ("v5p:4x4x4", "v5p:4x4x4", 64, 16, "v5p-128"),
    ("v5e:2x2", "v5e:2x2", 4, 1, "v5litepod-4"),
])
def test_slice_names(name, topology, chips, hosts, cloud):
    s = topologies.parse(name)
    assert (s.topology, s.num_chips, s.num_hosts, s.cloud_name) == (topology, chips, hosts, cloud)


@pytest.mark.parametrize("name,message", [("v4-7", "not a whole number of chips"), ("v5e:4x4x4", "2D"),
                                          ("v7:2x2", "unknown chip"), ("tpu-16", "unknown TPU slice"),
                                          ("v5litepod-12", "no 2D slice of 12 chips")])
def test_bad_slice_names(name, message):
    with pytest.raises(ValueError, match=message):
        topologies.parse(name)


def test_libtpu_gives_the_slices_devices():
    # One device per chip (v4 runs megacore), the hosts the slice has, the chip's device kind.
    for name, kind in (("v5e:4x4", "TPU v5 lite"), ("v4:2x2x1", "TPU v4"), ("v5e-8", "TPU v5 lite")):
        s = topologies.parse(name)
        devices = topologies.devices(s)
        assert len(devices) == s.num_chips and {d.device_kind for d in devices} == {kind}
        assert len({d.process_index for d in devices}) == s.num_hosts
    two = topologies.devices(topologies.parse("v5e:2x2", num_slices=2))
    assert len(two) == 8 and {d.slice_index for d in two} == {0, 1}


def test_abstract_path_never_runs_on_compile_only_devices():
    """The regression of issue #20: an eager key under the mesh ran on the TPU devices and failed."""
    devices = topologies.devices(topologies.parse("v5e:2x2"))
    mesh = partitioning.make_mesh(data=-1, model=1, devices=devices)
    abstract, shardings = partitioning.param_shardings(Transformer(TINY), mesh, partitioning.get_rules("fsdp"),
                                                       **state_lib.dummy_inputs())
    assert jax.tree.structure(abstract) == jax.tree.structure(shardings)
    plan = aot.plan_run(_config(partitioning="fsdp"), TINY, devices)
    assert plan.setup.mesh.devices.ravel().tolist() == list(np.asarray(mesh.devices).ravel())


def _expected_param_share(params, preset: str, data: int, model: int) -> int:
    """Per chip bytes of T5's params from their shapes and names alone: data_parallel replicates every
    parameter; model_parallel splits all but the norm scales over `model` (kernels by mlp/heads/vocab,
    relpos by heads); fsdp also splits every parameter with an embed dim over `data` (all but relpos)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        nbytes = math.prod(leaf.shape) * leaf.dtype.itemsize
        if preset != "data_parallel" and "norm" not in name:
            nbytes //= model
        if preset == "fsdp" and "relpos" not in name:
            nbytes //= data
        total += nbytes
    return total


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
@pytest.mark.parametrize("preset,mesh_model", [("data_parallel", 1), ("fsdp", 1), ("fsdp", 2),
                                               ("model_parallel", 4)])
def test_per_chip_parameter_share(topology, preset, mesh_model):
    devices = topologies.devices(topologies.parse(topology))
    plan = aot.plan_run(_config(partitioning=preset, mesh_model=mesh_model, batch_size=8), TINY, devices)
    data = len(devices) // mesh_model
    params = plan.setup.abstract_state.params
    share = aot.state_bytes_per_chip(plan)
    assert share["params"] == _expected_param_share(params, preset, data, mesh_model)
    # AdamW: two float32 moments shaped like the params, sharded like them, plus replicated step counts.
    counts = sum(4 for leaf in jax.tree.leaves(plan.setup.abstract_state.opt_state) if leaf.ndim == 0)
    assert counts > 0 and share["optimizer_state"] == 2 * share["params"] + counts


def test_plan_refuses_what_does_not_divide():
    v5e8 = topologies.devices(topologies.parse("v5e-8"))
    with pytest.raises(aot.PlanError, match=r"BATCH_SIZE=12 is not divisible by the data axis \(8"):
        aot.plan_run(_config(batch_size=12), TINY, v5e8)
    # Tiny T5 has 4 heads: 8-way model parallelism cannot split them.
    with pytest.raises(aot.PlanError, match=r"does not divide over the mesh .*'model': 8"):
        aot.plan_run(_config(partitioning="model_parallel", mesh_model=8), TINY, v5e8)
    v5e16 = topologies.devices(topologies.parse("v5e:4x4"))
    with pytest.raises(aot.PlanError, match="num_input_shards=2 is not a multiple of the slice's 4 hosts"):
        aot.plan_run(_config(num_input_shards=2), TINY, v5e16, num_hosts=4)
    plan = aot.plan_run(_config(batch_size=32), TINY, v5e16, num_hosts=4)
    assert (plan.rows_per_host, plan.num_input_shards) == (8, 4)
    # Two slices: the trainer's mesh (jax.make_mesh) does not span slices, and the plan says so.
    two_slices = topologies.devices(topologies.parse("v5e:2x2", num_slices=2))
    with pytest.raises(aot.PlanError, match="does not support multi-slice"):
        aot.plan_run(_config(), TINY, two_slices, num_hosts=2)


def test_sbs_compile_gives_one_clear_line_when_the_plan_does_not_divide(capsys):
    code = compile_cmd.main(["--topology=v5e-8", *[f"--gin_file={f}" for f in TINY_GIN], "--gin.BATCH_SIZE=12"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["sbs compile: error: v5e-8: BATCH_SIZE=12 is not divisible by the data "
                                        "axis (8 = 8 chips / MESH_MODEL 1); use a multiple of 8"]


def test_bucket_shapes_cover_every_batch_the_cutter_makes():
    cfg = _config(cut_batches=True, task_feature_lengths={"inputs": 64, "targets": 16, "rationales": 40})
    shapes, count = aot.train_shapes(cfg)
    assert count == len(shapes) == 3 * 1 * 3  # encoder 16/32/64, label 16, rationale 16/32/40
    keys = {batch_cutting.shape_key({s: {k: np.zeros(shape, np.int32) for k, shape in f.items()}
                                      for s, f in sh.items()}) for sh in shapes}
    rng = np.random.default_rng(0)
    cutter = batch_cutting.BatchCutter(cfg.min_bucket_length)
    for _ in range(200):
        batch = {}
        for stream, (enc, dec) in {"label": (64, 16), "rationale": (64, 40)}.items():
            fill = lambda n, size: (np.arange(n)[None, :] < rng.integers(1, size + 1, (16, 1))).astype(np.int32)  # noqa: E731
            batch[stream] = {schema.ENCODER_INPUT_TOKENS: fill(enc, rng.integers(1, 65)),
                             schema.DECODER_INPUT_TOKENS: fill(dec, dec),
                             schema.DECODER_TARGET_TOKENS: fill(dec, rng.integers(1, dec + 1)),
                             schema.DECODER_LOSS_WEIGHTS: fill(dec, dec)}
        assert batch_cutting.shape_key(cutter(batch)) in keys
    assert aot.train_shapes(_config())[1] == 1


@pytest.mark.slow  # builds the arith pipeline twice (seqio + TF)
def test_compile_shapes_are_the_batches_the_run_feeds(tmp_path):
    """The packed and the unpacked batches of a real (embedded arith) run have the shapes compiled."""
    from sbs_jax.commands import gin_utils
    from sbs_jax.train import inputs

    for pack in (False, True):
        gin_utils.parse(TINY_GIN, [f"MODEL_DIR = '{tmp_path}'", f"PACK = {pack}", "BATCH_SIZE = 8"])
        config = gin_utils.build("TrainConfig")
        batch = next(inputs.train_batches(config.mixture_or_task_name,
                                          task_feature_lengths=config.task_feature_lengths,
                                          batch_size=config.batch_size, seed=0, streams=config.objective.streams,
                                          pack=config.pack))
        fed = jax.tree.map(lambda x: (x.shape, str(x.dtype)), batch)
        shapes, _ = aot.train_shapes(config)
        assert fed == jax.tree.map(lambda s: (s, "int32"), shapes[0], is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.slow  # two CPU compiles and a Trainer: ~40 s on a quiet 2-core machine
def test_sbs_train_and_sbs_compile_compile_the_same_step(tmp_path):
    """On this host's CPU devices: the Trainer's compiled step and the plan's are the same program (same
    optimized HLO, source locations aside), so the report cannot drift from training."""
    from sbs_jax.commands import gin_utils

    bindings = ["BATCH_SIZE = 8", "PARTITIONING = 'fsdp'", "MESH_MODEL = 2", "model_config.num_layers = 1"]
    gin_utils.parse(TINY_GIN, [f"MODEL_DIR = '{tmp_path}'"] + bindings)
    run = trainer.Trainer(gin_utils.build("TrainConfig"))
    config = compile_cmd.load_train_config(TINY_GIN, bindings)
    plan = aot.plan_run(config, config.model)
    local = jax.tree.map(lambda shape: np.zeros(shape, np.int32), plan.train_shapes[0],
                         is_leaf=lambda x: isinstance(x, tuple))
    theirs = run.compile_step(local).as_text()
    ours = aot.compile_run(plan, eval_programs=False)[0].compiled.as_text()
    assert "reduce-scatter" in ours or "all-gather" in ours  # a sharded program, not an empty text
    assert analysis.program_fingerprint(theirs) == analysis.program_fingerprint(ours)


HLO = """\
HloModule jit_train_step

%all-reduce-scatter.3 (input_0: f32[64,128]) -> f32[16,128] {
  %input_0 = f32[64,128]{1,0} parameter(0)
  %all-reduce.9 = f32[64,128]{1,0} all-reduce(%input_0), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %slice = f32[16,128]{1,0} dynamic-slice(%all-reduce.9, %c, %c), dynamic_slice_sizes={16,128}
}

ENTRY %main.1 (p0: bf16[16,64], p1: f32[8]) -> f32[] {
  %all-gather-start.1 = (bf16[16,64]{1,0}, bf16[64,64]{1,0}) all-gather-start(%p0), dimensions={0}
  %all-gather-done.1 = bf16[64,64]{1,0} all-gather-done(%all-gather-start.1)
  %fusion.7 = f32[16,128]{1,0:T(8,128)} fusion(%x), kind=kCustom, calls=%all-reduce-scatter.3
  %all-reduce.2 = (f32[8]{0}, f32[]) all-reduce(%p1, %y), replica_groups={}, to_apply=%add
  %cp = f32[8]{0} collective-permute(%p1), source_target_pairs={{0,1}}
  ROOT %r = f32[] constant(0)
}
"""


def test_collectives_are_read_from_the_hlo_text():
    found = analysis.collectives(HLO)
    assert found == {"all-gather": {"count": 1, "bytes": 64 * 64 * 2},
                     "reduce-scatter": {"count": 1, "bytes": 16 * 128 * 4},
                     "all-reduce": {"count": 1, "bytes": 8 * 4 + 4},
                     "all-to-all": {"count": 0, "bytes": 0},
                     "collective-permute": {"count": 1, "bytes": 32}}


# ------------------------------------------------------------------------------------- TPU compiles (slow)
@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
def test_tiny_t5_compiles_for_tpu_slices_under_each_preset(topology):
    devices = topologies.devices(topologies.parse(topology))
    model = TINY.replace(scan_layers=True)
    arguments = {}
    for preset, mesh_model in (("data_parallel", 1), ("fsdp", 1), ("model_parallel", 2)):
        plan = aot.plan_run(_config(partitioning=preset, mesh_model=mesh_model, batch_size=8, model=model), model,
                            devices)
        (program,) = aot.compile_run(plan, eval_programs=False)
        share = aot.state_bytes_per_chip(plan)
        batch = analysis.per_chip_bytes(aot.abstract_batch(plan.train_shapes[0], plan.setup.mesh))
        # XLA's argument bytes hold our per chip state and batch shares (+ step and key), plus TPU tile padding.
        ours = share["params"] + share["optimizer_state"] + batch + 4 + 8
        arguments[preset] = analysis.memory(program.compiled)["arguments"]
        assert ours <= arguments[preset] <= 8 * ours, (preset, ours, arguments[preset])
        found = analysis.collectives(program.compiled.as_text())
        if preset == "data_parallel":   # gradients averaged over data: all-reduces only
            assert found["all-reduce"]["count"] > 0
            assert all(found[op]["count"] == 0 for op in analysis.COLLECTIVES if op != "all-reduce")
        if preset == "fsdp":
            # Parameters are gathered for use. Gradients are reduced to each chip's shard: a reduce-scatter where
            # the compiler picks one (v5e here), an all-reduce followed by a slice on v4 with this libtpu.
            assert found["all-gather"]["count"] > 0
            assert found["reduce-scatter"]["count"] + found["all-reduce"]["count"] > 0
    # Sharded state takes less of each chip than replicated state, in XLA's own accounting.
    assert arguments["fsdp"] < arguments["data_parallel"] and arguments["model_parallel"] < arguments["data_parallel"]


@pytest.mark.slow
def test_sbs_compile_reports_and_refuses_a_plan_that_does_not_fit(tmp_path):
    def sbs_compile(*extra):
        return subprocess.run([sys.executable, "-m", "sbs_jax.cli", "compile", "--topology=v5e:2x2",
                               *[f"--gin_file={f}" for f in TINY_GIN], *extra], capture_output=True, text=True,
                              timeout=900, cwd=REPO)

    ok = sbs_compile("--gin.BATCH_SIZE=8", f"--output_dir={tmp_path}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "FITS: the largest program needs" in ok.stdout
    result = json.loads((tmp_path / "compile_report.json").read_text())
    assert [p["name"] for p in result["programs"]] == ["train_step", "eval_step", "decode"]
    assert result["fits"] and result["slice"]["hbm_per_chip_bytes"] == 16 * 2**30
    assert "| train_step |" in (tmp_path / "compile_report.md").read_text()
    # 2^17 rows of 1,024 tokens: the compiler refuses the step for v5e's 16 GiB; the command exits 2.
    big = sbs_compile("--train_only", "--gin.BATCH_SIZE=131072",
                      '--gin.TASK_FEATURE_LENGTHS={"inputs": 1024, "targets": 256, "rationales": 256}')
    assert big.returncode == 2, big.stdout + big.stderr[-3000:]
    assert "DOES NOT FIT" in big.stdout
    assert big.stderr.strip().splitlines()[-1].startswith("sbs compile: error: v5e:2x2: DOES NOT FIT in 16.00 GiB")


def test_report_renders_a_refused_program():
    chip = topologies.CHIPS["v5e"]
    entry = report.program_entry(aot.Program("train_step", {"label": {"encoder_input_tokens": (8, 4),
                                                                       "decoder_target_tokens": (8, 2)}},
                                             None, 1.0, error="RESOURCE_EXHAUSTED: CompileTimeHbmOom"), chip)
    assert entry["fits"] is False
    fake = {"slice": {"hbm_per_chip_bytes": chip.hbm_bytes}, "programs": [entry], "fits": False}
    assert report.verdict(fake) == "DOES NOT FIT in 16.00 GiB per chip: train_step (refused by the compiler)"


def test_capacity_gin_files_load_after_their_model_and_run_files():
    """gin/topologies/*.gin (written by bench/tpu_capacity.py) set the plan the capacity table found to fit."""
    files = sorted((REPO / "gin" / "topologies").glob("t5_1_1_*.gin"))
    assert files, "bench/tpu_capacity.py render writes gin/topologies/"
    for path in files:
        text = path.read_text()
        size = path.stem
        config = compile_cmd.load_train_config([f"models/{size}.gin", "runs/step_by_step.gin",
                                                "runs/paper_recipe.gin", "datasets/cqa.gin",
                                                f"topologies/{path.name}"], [])
        assert f"PARTITIONING = '{config.partitioning}'" in text and f"MESH_MODEL = {config.mesh_model}" in text
        assert config.model.scan_layers and f"remat_policy = '{config.model.remat_policy}'" in text
        assert config.batch_size == 64 and config.cut_batches


def test_capacity_sweep_derives_only_what_memory_order_implies():
    """bench/tpu_capacity.py skips a compile only where the answer follows: no remat fits -> full fits; full does
    not fit -> no remat does not; a fit on a smaller slice of the chip -> a fit on a larger one."""
    from bench import tpu_capacity as cap

    key = cap.cell_key
    compiled_no = {"how": "compiled", "fits": False}
    cells = {key("base", "fsdp", "none", "v5e-8"): {"how": "compiled", "fits": True},
             key("base", "fsdp", "full", "v5e-16"): compiled_no}
    assert cap._next_cell(cells, "base", "fsdp", "full", "v5e-8", {})["how"] == "remat none fits"
    assert cap._next_cell(cells, "base", "fsdp", "none", "v5e-16", {})["how"] == "full does not fit"
    assert cap._next_cell(cells, "base", "fsdp", "none", "v5e-64", {"none": "v5e-8"})["how"] == "implied by v5e-8"
    # Nothing implies these: they must be compiled.
    assert cap._next_cell(cells, "base", "fsdp", "full", "v5e-64", {}) is None
    assert cap._next_cell({key("base", "fsdp", "full", "v4-8"): {"how": "compiled", "fits": True}},
                          "base", "fsdp", "none", "v4-8", {}) is None


@pytest.mark.slow
def test_sbs_compile_plans_a_decoder_only_student(tmp_path):
    """A decoder-only student compiles for a slice with its causal rows: train step, eval step and generation
    (prompt [BOS] + inputs, label + marker + rationale new tokens for rationale_first); the one-sequence format's
    marker length needs the task's vocabulary, which `--register_tasks` provides (one clear error without)."""
    gin = ["models/llama_tiny.gin", "runs/step_by_step.gin", "datasets/arith.gin"]

    def sbs_compile(*extra):
        return subprocess.run([sys.executable, "-m", "sbs_jax.cli", "compile", "--topology=v5e:2x2",
                               *[f"--gin_file={f}" for f in gin], "--gin.BATCH_SIZE=8",
                               "--gin.CAUSAL_FORMAT='rationale_first'", *extra],
                              capture_output=True, text=True, timeout=900, cwd=REPO)

    refused = sbs_compile()
    assert refused.returncode == 2 and "--register_tasks" in refused.stderr, refused.stderr[-2000:]
    ok = sbs_compile("--register_tasks", f"--output_dir={tmp_path}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    result = json.loads((tmp_path / "compile_report.json").read_text())
    programs = {p["name"]: p for p in result["programs"]}
    assert list(programs) == ["train_step", "eval_step", "decode"] and result["fits"]
    assert set(programs["train_step"]["shapes"]) == {"sequence"}  # one sequence per example
    lengths = {"inputs": 40, "targets": 4, "rationales": 12}  # datasets/arith.gin
    assert programs["decode"]["shapes"]["prompt_tokens"][1] == 1 + lengths["inputs"] - 1
    assert programs["decode"]["shapes"]["decode_length"] > lengths["targets"] + lengths["rationales"]
