"""bench/run_gpu.sh is safe on first try: few files in $OUT, a preflight that stops a run without a GPU, and
(slow) every stage runs in a CPU simulation of the GPU image."""
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "run_gpu.sh"
MAX_FILES = 8  # what comes back from the GPU machine


def _run(tmp_path, timeout, **env):
    out = tmp_path / "out"
    full = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    full.update(OUT=str(out), WORK=str(tmp_path / "work"), BENCH_COMMIT="test", **env)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=timeout)
    return proc, out


def _kept_a_variant(summary: str, title: str) -> bool:
    if title not in summary:
        return False
    section = summary.split(title, 1)[1][:3000]
    return any(row in section for row in ("| ours |", "| reference |", "#### ours"))


def test_script_calls_python_through_py():
    text = SCRIPT.read_text()
    assert "PY=${PY:-python3}" in text
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any(" python " in f" {line} " or line.strip().startswith("python ") for line in commands)


def test_preflight_stops_a_run_without_gpu(tmp_path):
    proc, out = _run(tmp_path, timeout=60, PY=sys.executable, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= MAX_FILES and "stages.txt" in files and "SUMMARY.md" in files
    stages = (out / "stages.txt").read_text()
    assert "PREFLIGHT FAILED" in stages and "== step_paper" not in stages


@pytest.mark.slow  # every stage on CPU with the tiny shape: several minutes on 2 shared cores
def test_every_stage_runs_in_a_cpu_simulation_of_the_gpu_image(tmp_path):
    # SBS_SIM_PY: a Python 3.12 without seqio/TensorFlow, like the GPU image (default: this interpreter).
    py = os.environ.get("SBS_SIM_PY", sys.executable)
    proc, out = _run(tmp_path, timeout=3000, PY=py, SIMULATE_CPU="1",
                     LIMIT_SCALE=os.environ.get("SBS_SIM_LIMIT_SCALE", "4"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_simulation_output(out)


def check_simulation_output(out: pathlib.Path) -> None:
    """What a simulated run must leave in $OUT (also usable on a kept run's folder)."""
    files = sorted(p.name for p in out.iterdir())
    assert files == ["SUMMARY.md", "details.tar.gz", "env.txt", "stages.txt"], files
    stages = (out / "stages.txt").read_text()
    summary = (out / "SUMMARY.md").read_text()
    tables = {"step_paper": "Training step, shape `cpu_tiny`\n", "infer_paper": "Label-only inference",
              "step_large": "(large)", "step_paper_fp32": "(fp32)", "profile_paper": "Profile, shape",
              "step_paper_compile": "(compile)"}
    for name, title in tables.items():
        # On a busy CPU a stage may hit its limit: it must then have kept the variants that finished.
        assert f"   {name}: exit 0" in stages or (f"   {name}: exit 137 (killed at its limit)" in stages
                                                   and _kept_a_variant(summary, title)), stages
    for title in ("Training step, shape `cpu_tiny`", "(large)", "(fp32)", "(compile)", "Label-only inference",
                  "Profile, shape"):
        assert title in summary, title
    # Ours before the reference in a table; torch.compile in its own, last stage.
    step_table = summary[summary.index("Training step, shape `cpu_tiny`"):]
    assert step_table.index("| ours |") < step_table.index("| reference |")
    assert stages.index("step_paper_compile") > stages.index("profile_paper")
    with tarfile.open(out / "details.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("step_paper.log") for n in names) and any(n.endswith(".json") for n in names)
