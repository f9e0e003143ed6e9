"""launch/: the dry runs print the exact commands for a given configuration, the scripts are shellcheck-clean,
and local.sh runs real multi-process jobs (the distributed start-up contract with `sbs train`)."""
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = [LAUNCH / "tpu_pod.sh", LAUNCH / "gpu_slurm.sbatch", LAUNCH / "local.sh"]
TRAIN_ARGS = ["--gin_file=models/t5_1_1_base.gin", "--gin_file=runs/step_by_step.gin",
              "--gin_file=datasets/cqa.gin", "--gin.TRAIN_STEPS=100"]


def _run(script, *args, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBS_"))}
    full_env.update(env or {})
    # Own process group, so that a run past its timeout is stopped with every process it started.
    proc = subprocess.Popen(["bash", str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _commands(stdout: str) -> list[list[str]]:
    """The `+ cmd` lines of a dry run, split as the shell would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_scripts_are_shellcheck_clean():
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:  # CI installs it; without it the syntax check above still runs
        result = subprocess.run([shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def _fake_sbs(tmp_path, exit_code: int) -> pathlib.Path:
    """A stand-in for the local `sbs` of the preflight: records its arguments, exits with `exit_code`."""
    fake = tmp_path / "fake_sbs"
    fake.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > {shlex.quote(str(tmp_path / 'args'))}\n"
                    f"exit {exit_code}\n")
    fake.chmod(0o755)
    return fake


def test_tpu_pod_dry_run_prints_create_install_and_train_on_all_workers(tmp_path):
    fake = _fake_sbs(tmp_path, 0)
    result = _run(LAUNCH / "tpu_pod.sh", "--dry_run", "--tpu=sbs-v4", "--zone=us-central2-b",
                  "--project=my-proj", "--accelerator_type=v4-32", "--spot", "--model_dir=gs://bucket/runs/cqa",
                  "--env=LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true", f"--sbs={fake}", "--",
                  *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    loc = ["--zone=us-central2-b", "--project=my-proj"]
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    archive = "/tmp/sbs-jax-sbs-v4.tar.gz"
    commands = _commands(result.stdout)
    # The preflight compile comes first, for the slice type, with the run's own arguments (and it ran).
    preflight = [str(fake), "compile", "--topology=v4-32", *TRAIN_ARGS]
    assert commands[0] == preflight
    assert (tmp_path / "args").read_text().splitlines() == preflight[1:]
    commands = commands[1:]
    assert commands[:4] == [
        tpu_vm + ["describe", "sbs-v4", *loc, "--format=value(state)"],
        tpu_vm + ["create", "sbs-v4", *loc, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"],
        ["git", "-C", str(REPO), "archive", "--format=tar.gz", "--prefix=sbs-jax/", "-o", archive, "HEAD"],
        tpu_vm + ["scp", archive, "sbs-v4:sbs-jax.tar.gz", "--worker=all", *loc],
    ]
    install, train = commands[4], commands[5]
    assert install[:7] == tpu_vm + ["ssh", "sbs-v4", "--worker=all"] and install[7:9] == loc
    assert "~/sbs-venv/bin/pip install -q 'jax[tpu]' ./sbs-jax.tar.gz" in install[9]
    assert train[:9] == install[:9] and train[9].startswith("--command=cd ~ && ")
    remote = shlex.split(train[9][len("--command=cd ~ && "):])
    assert remote == ["env", "SBS_COORDINATOR_ADDRESS=auto",
                      "LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true",
                      "./sbs-venv/bin/sbs", "train", *TRAIN_ARGS, "--gin.MODEL_DIR='gs://bucket/runs/cqa'"]


def test_tpu_pod_preflight_refuses_a_plan_that_does_not_fit(tmp_path):
    fake = _fake_sbs(tmp_path, 2)  # `sbs compile`'s exit for a plan that does not fit or divide
    for dry in (["--dry_run"], []):
        result = _run(LAUNCH / "tpu_pod.sh", *dry, "--tpu=t", "--zone=z", "--model_dir=gs://b/r",
                      "--accelerator_type=v5litepod-16", f"--sbs={fake}", "--", *TRAIN_ARGS)
        assert result.returncode == 2
        assert "preflight: the run does not fit or does not divide on v5litepod-16" in result.stderr
        assert [c[1] for c in _commands(result.stdout)] == ["compile"]  # no gcloud command, not even describe
    result = _run(LAUNCH / "tpu_pod.sh", "--dry_run", "--tpu=t", "--zone=z", "--model_dir=gs://b/r", "--", "x")
    assert result.returncode == 2 and "--accelerator_type is required for the preflight" in result.stderr
    result = _run(LAUNCH / "tpu_pod.sh", "--dry_run", "--tpu=t", "--zone=z", "--model_dir=gs://b/r",
                  "--accelerator_type=v4-8", f"--sbs={fake}", "--skip_compile", "--", "x")
    assert result.returncode == 0 and _commands(result.stdout)[0][4] == "describe"


def test_tpu_pod_usage_example_names_gin_files_that_load():
    """The script's usage example: its gin files exist and make a TrainConfig (as the preflight reads them)."""
    from sbs_jax.commands import compile as compile_cmd

    header = (LAUNCH / "tpu_pod.sh").read_text().split("set -euo pipefail")[0]
    example = " ".join(line.lstrip("#").strip().rstrip("\\") for line in header.splitlines()
                       if line.lstrip("#").strip().startswith(("launch/tpu_pod.sh", "--")))
    args = shlex.split(example)
    train = args[args.index("--") + 1:]
    gin_files = [a.split("=", 1)[1] for a in train if a.startswith("--gin_file=")]
    bindings = [f"{a[6:].split('=', 1)[0]} = {a.split('=', 1)[1]}" for a in train if a.startswith("--gin.")]
    assert gin_files == ["models/t5_1_1_base.gin", "runs/step_by_step.gin", "datasets/cqa.gin"]
    config = compile_cmd.load_train_config(gin_files, bindings)
    assert config.model.num_layers == 12 and config.batch_size == 64


def test_tpu_pod_rejects_a_local_model_dir_and_missing_flags():
    result = _run(LAUNCH / "tpu_pod.sh", "--dry_run", "--tpu=t", "--zone=z", "--model_dir=/tmp/run")
    assert result.returncode == 2 and "must be a gs:// path" in result.stderr
    result = _run(LAUNCH / "tpu_pod.sh", "--dry_run", "--zone=z", "--model_dir=gs://b/r")
    assert result.returncode == 2 and "--tpu is required" in result.stderr
    # A pip requirement instead of this checkout: nothing is archived or copied.
    result = _run(LAUNCH / "tpu_pod.sh", "--dry_run", "--tpu=t", "--zone=z", "--model_dir=gs://b/r",
                  "--skip_compile", "--package=git+https://github.com/org/sbs-jax@v0.1.0")
    commands = _commands(result.stdout)
    assert [c[4] for c in commands] == ["describe", "create", "ssh", "ssh"]
    assert "'jax[tpu]' git+https://github.com/org/sbs-jax@v0.1.0" in commands[2][-1]


@pytest.mark.parametrize("per_gpu", [False, True])
def test_gpu_slurm_dry_run_takes_coordinator_and_ids_from_slurm(per_gpu):
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu07,gpu08", "SLURM_NTASKS": "16" if per_gpu else "2"}
    args = ["--dry_run"] + (["--per_gpu"] if per_gpu else []) + ["--", *TRAIN_ARGS]
    result = _run(LAUNCH / "gpu_slurm.sbatch", *args, env=env)
    assert result.returncode == 0, result.stderr
    port = 4242 % 4096 + 61440
    task = "export SBS_PROCESS_ID=$SLURM_PROCID" + (" CUDA_VISIBLE_DEVICES=$SLURM_LOCALID" if per_gpu else "")
    assert _commands(result.stdout) == [[
        "srun", "--kill-on-bad-exit=1", "--distribution=block",
        f"--export=ALL,SBS_COORDINATOR_ADDRESS=gpu07:{port},SBS_NUM_PROCESSES={env['SLURM_NTASKS']}",
        "bash", "-c", task + '; exec "$@"', "sbs-task", "sbs", "train", *TRAIN_ARGS]]


def test_gpu_slurm_task_script_sets_the_process_id_per_task(tmp_path):
    """Run the per-task part of the srun line as SLURM would, for task 3 on its node's GPU 1."""
    result = _run(LAUNCH / "gpu_slurm.sbatch", "--dry_run", "--per_gpu", "--", "x",
                  env={"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_NTASKS": "4"})
    srun = _commands(result.stdout)[0]
    bash_c = srun[srun.index("bash"):srun.index("sbs-task") + 1]
    probe = [sys.executable, "-c", "import os; print(os.environ['SBS_PROCESS_ID'], "
             "os.environ['CUDA_VISIBLE_DEVICES'])"]
    out = subprocess.run(bash_c + probe, capture_output=True, text=True, check=True,
                         env={**os.environ, "SLURM_PROCID": "3", "SLURM_LOCALID": "1"})
    assert out.stdout.split() == ["3", "1"]


def test_gpu_slurm_refuses_to_run_outside_an_allocation():
    result = _run(LAUNCH / "gpu_slurm.sbatch", "--", *TRAIN_ARGS)
    assert result.returncode == 2 and "not inside a SLURM job" in result.stderr


def test_local_dry_run_prints_one_command_per_process():
    result = _run(LAUNCH / "local.sh", "--dry_run", "--num_processes=2", "--port=23456", "--log_dir=/tmp/l",
                  "--", *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    common = ["SBS_COORDINATOR_ADDRESS=127.0.0.1:23456", "SBS_NUM_PROCESSES=2"]
    assert _commands(result.stdout) == [["mkdir", "-p", "/tmp/l"]] + [
        ["env", "JAX_PLATFORMS=cpu", "JAX_NUM_CPU_DEVICES=1", "CUDA_VISIBLE_DEVICES=", *common,
         f"SBS_PROCESS_ID={i}", "sbs", "train", *TRAIN_ARGS] for i in range(2)]
    result = _run(LAUNCH / "local.sh", "--dry_run", "--num_processes=2", "--platform=gpu",
                  "--devices_per_process=2", "--", "x")
    assert [c[2] for c in _commands(result.stdout)[1:]] == ["CUDA_VISIBLE_DEVICES=0,1", "CUDA_VISIBLE_DEVICES=2,3"]


# A stand-in for `sbs`: starts the JAX distributed runtime exactly as `sbs train` does (from the environment
# the script sets) and checks that the processes see each other through a cross-process all-gather.
_DISTRIBUTED_PROBE = textwrap.dedent("""\
    import sys
    from sbs_jax.train import distributed
    assert distributed.maybe_initialize()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    ids = multihost_utils.process_allgather(np.array([jax.process_index()]))
    print("process", jax.process_index(), "of", jax.process_count(), "sees", sorted(ids.ravel().tolist()),
          "devices", jax.device_count(), "argv", sys.argv[1:])
""")


def _probe_command(tmp_path, body: str) -> pathlib.Path:
    script = tmp_path / "probe.py"
    script.write_text(body)
    wrapper = tmp_path / "fake_sbs"
    wrapper.write_text(f"#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_local_runs_two_processes_that_form_one_jax_job(tmp_path):
    fake = _probe_command(tmp_path, _DISTRIBUTED_PROBE)
    logs = tmp_path / "logs"
    result = _run(LAUNCH / "local.sh", "--num_processes=2", "--port=23471", f"--log_dir={logs}", f"--sbs={fake}",
                  "--", "--gin.X=1", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    for i in range(2):
        assert (f"process {i} of 2 sees [0, 1] devices 2 argv ['train', '--gin.X=1']"
                in (logs / f"process_{i}.log").read_text())


def test_local_stops_everything_when_one_process_fails(tmp_path):
    # Process 1 fails; process 0 would wait forever for it (as in a collective): local.sh must not hang.
    fake = _probe_command(tmp_path, "import os, sys, time\n"
                                    "if os.environ['SBS_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(600)\n")
    result = _run(LAUNCH / "local.sh", "--num_processes=2", f"--log_dir={tmp_path / 'logs'}", f"--sbs={fake}",
                  timeout=120)
    assert result.returncode == 3
    assert "process 1 failed (exit 3)" in result.stderr


@pytest.mark.slow
def test_local_two_process_training_writes_a_checkpoint_that_loads_and_exports(tmp_path):
    import numpy as np

    from sbs_jax.commands import export as export_cli
    from sbs_jax.train.checkpointing import load_params

    sbs = pathlib.Path(sys.executable).parent / "sbs"
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    result = _run(LAUNCH / "local.sh", "--num_processes=2", "--port=23487", f"--log_dir={logs}", f"--sbs={sbs}",
                  "--", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/step_by_step.gin",
                  "--gin_file=datasets/arith.gin", f"--gin.MODEL_DIR='{run_dir}'", "--gin.TRAIN_STEPS=4",
                  "--gin.BATCH_SIZE=8", "--gin.SAVE_EVERY=4", "--gin.TEST_SPLIT=None",
                  env={"XLA_FLAGS": ""}, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr + (logs / "process_0.log").read_text()[-3000:]
    for i in range(2):  # both processes joined the same 2-device job
        assert "Rank %d is connected to 1 peer ranks" % i in (logs / f"process_{i}.log").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
    config, params, vocab = load_params(run_dir)
    assert config.num_layers == 2 and vocab is not None and vocab.is_file()
    embedding = params["token_embedder"]["embedding"]
    assert embedding.shape == (config.vocab_size, config.d_model) and np.isfinite(embedding).all()
    assert export_cli.main([f"--checkpoint={run_dir}", "--format=hf", f"--output={tmp_path / 'hf'}"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_tpu_pod_preflight_compiles_for_real_and_refuses_an_oversized_batch():
    sbs = pathlib.Path(sys.executable).parent / "sbs"
    result = _run(LAUNCH / "tpu_pod.sh", "--dry_run", "--tpu=t", "--zone=z", "--model_dir=gs://b/r",
                  "--accelerator_type=v5litepod-4", f"--sbs={sbs}", "--",
                  "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/step_by_step.gin",
                  "--gin_file=datasets/arith.gin", "--gin.BATCH_SIZE=131072",
                  '--gin.TASK_FEATURE_LENGTHS={"inputs": 1024, "targets": 256, "rationales": 256}', timeout=900)
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "DOES NOT FIT in 16.00 GiB per chip" in result.stdout
    assert not [c for c in _commands(result.stdout) if c[0] == "gcloud"]
