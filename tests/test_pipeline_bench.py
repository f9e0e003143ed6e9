"""bench/pipeline_bench.py: its consumption rate follows the FLOP count, and its output format."""
import json

import pytest

from bench import flops, pipeline_bench, shapes
from sbs_jax.model import get_config


def test_paper_consumption_is_computed_from_flops():
    shape = shapes.get_shape("paper")
    step_flops = flops.paired_step_flops(get_config(shape.model), shape.batch, shape.inputs, shape.targets,
                                         shape.rationales)
    c = pipeline_bench.paper_consumption(mfu=0.35, peak_tflops=989.0)
    assert c["examples_per_s"] == pytest.approx(shape.batch * 0.35 * 989e12 / step_flops)
    assert 2000 < c["examples_per_s"] < 3500  # the issue's ~2,700/s
    assert pipeline_bench.paper_consumption(mfu=0.7)["examples_per_s"] == pytest.approx(2 * c["examples_per_s"])


def test_markdown_table_and_ratios():
    env = {"date_utc": "2026-12-02 06:00", "commit": "abc1234", "cpu": "CPU X", "cpus": 2, "python": "3.11"}
    consumption = pipeline_bench.paper_consumption()
    results = [{"variant": "unpacked", "cores": c, "epoch1": 900.0 * c, "epoch2": 1000.0 * c, "batches": 300,
                "startup_s": 3.5, "epoch_examples": 9000, "workers": c - 1} for c in (1, 2)]
    results[1]["main_cpu_ms_per_batch"] = 0.0456  # results of older runs lack it
    results[1].update(epoch2_min=1800.0, epoch2_max=2200.0, rounds=3)
    rows = pipeline_bench.input_rows("cqa", results, consumption["examples_per_s"])
    loop = {"devices": 1, "steps": 100, "step_alone_ms": 2.0, "trainer_in_memory_ms": 2.5,
            "loop_overhead_ms": 0.5, "trainer_e2e_ms": 2.2, "e2e_vs_step": 2.0 / 2.2, "step_alone_cpu_ms": 3.0,
            "trainer_in_memory_cpu_ms": 3.25, "loop_overhead_cpu_ms": 0.25}
    scaling = [{"variant": "unpacked", "cores": 2, "workers_1": 0, "workers_n": 1, "ratio": 2.0,
                "per_round": [1.9, 2.1]}]
    text = pipeline_bench.markdown(env, consumption, rows, loop, scaling)
    lines = text.splitlines()
    header = "| " + " | ".join(pipeline_bench.INPUT_COLUMNS) + " |"
    assert header in lines
    body = lines[lines.index(header) + 2:lines.index(header) + 4]
    assert body[0].startswith("| cqa | auto | unpacked | 1 | 0 | 900 | 1,000 | ")
    ratio = float(body[1].split("|")[8])
    assert body[1].startswith("| cqa | auto | unpacked | 2 | 1 | 1,800 | 2,000 | ")
    assert ratio == pytest.approx(2000 / consumption["examples_per_s"], abs=0.01)
    assert body[0].endswith("| 300 | 3.5 | - | 1,000-1,000 (1) |")
    assert body[1].endswith("| 300 | 3.5 | 0.046 | 1,800-2,200 (3) |")
    assert "2 cores (1 workers) / 1 core (0 workers) = **2.00x** (ratio of medians; per round: 1.90, 2.10)" in text and "loop overhead 0.50 ms/step** wall, 0.25 ms/step process CPU" in text and "91% of the step" in text
    assert "`abc1234`" in text and "paired examples/s per accelerator" in text


def test_repeated_rounds_give_medians_and_per_round_core_scaling():
    def m(variant, cores, workers, round_, epoch2):
        return {"variant": variant, "cores": cores, "workers": workers, "round": round_, "epoch1": epoch2 / 2,
                "epoch2": epoch2, "startup_s": 1.0, "main_cpu_ms_per_batch": 0.1, "batches": 10}

    measured = [m("unpacked", 1, 0, 0, 100.0), m("unpacked", 2, 2, 0, 180.0),
                m("unpacked", 1, 0, 1, 50.0), m("unpacked", 2, 2, 1, 100.0),
                m("unpacked", 1, 0, 2, 90.0), m("unpacked", 2, 2, 2, 200.0),
                m("packed", 1, 0, 0, 10.0), m("packed", 2, 0, 0, 12.0), m("packed", 2, 2, 0, 20.0)]
    rows = {(r["variant"], r["cores"], r["workers"]): r for r in pipeline_bench.medians(measured)}
    one, two = rows[("unpacked", 1, 0)], rows[("unpacked", 2, 2)]
    assert (one["epoch2"], one["epoch2_min"], one["epoch2_max"], one["rounds"]) == (90.0, 50.0, 100.0, 3)
    assert (two["epoch2"], two["epoch1"]) == (180.0, 90.0) and "round" not in two
    scaling = {(s["variant"], s["workers_n"]): s for s in pipeline_bench.core_scaling(measured)}
    assert sorted(scaling) == [("packed", 0), ("packed", 2), ("unpacked", 2)]
    assert scaling[("unpacked", 2)]["ratio"] == pytest.approx(2.0)
    assert scaling[("unpacked", 2)]["per_round"] == pytest.approx([1.8, 2.0, 200 / 90])
    assert scaling[("packed", 2)]["ratio"] == pytest.approx(2.0) and scaling[("packed", 0)]["per_round"] == [1.2]
    assert pipeline_bench.core_configs("1,2", "0,2") == [(1, 0), (2, 2)]
    assert pipeline_bench.core_configs("1,2", "1") == [(1, 1), (2, 1)]
    with pytest.raises(ValueError, match="one per core count"):
        pipeline_bench.core_configs("1,2", "0,1,2")


def test_batch_examples_counts_rows_and_label_segments():
    import numpy as np

    assert pipeline_bench.batch_examples({"label": {"x": np.zeros((5, 3))}}) == 5
    packed = {"packed": {"decoder_positions": np.array([[0, 1, 0, 0, 1]]),
                         "decoder_stream_ids": np.array([[1, 1, 2, 1, 1]])}}
    assert pipeline_bench.batch_examples(packed) == 2


def test_measure_input_times_epoch_one_and_later_epochs_apart(monkeypatch):
    import itertools

    import numpy as np

    # 10 examples per batch, 100 per epoch: epoch 1 is 10 batches, 8 of them timed after a warmup of 2, so
    # later_epochs=3 times 24 more batches.
    monkeypatch.setattr(pipeline_bench, "input_batches",
                        lambda *a, **k: itertools.repeat({"label": {"x": np.zeros((10, 1))}}))
    monkeypatch.setattr(pipeline_bench, "_train_examples", lambda task: 100)
    r = pipeline_bench.measure_input("t", "unpacked", {}, batch_size=10, warmup=2, max_batches=1000, later_epochs=3)
    assert r["batches"] == 10 + 24 and r["epoch_examples"] == 100
    assert r["epoch1"] > 0 and r["epoch2"] > 0 and r["main_cpu_ms_per_batch"] >= 0
    r = pipeline_bench.measure_input("t", "unpacked", {}, batch_size=10, warmup=2, max_batches=5, later_epochs=3)
    assert r["batches"] == 10 + 5


@pytest.mark.slow  # a child process tokenizes the embedded task (~30 s on 2 shared cores)
def test_writes_its_table_for_a_short_run(tmp_path):
    assert pipeline_bench.main(["--task", "arith", "--variants", "unpacked", "--cores", "1", "--warmup", "2",
                                "--batches", "5", "--cache_dir", str(tmp_path / "vocab"),
                                "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "pipeline.json").read_text())
    (row,) = payload["inputs"]
    assert row["variant"] == "unpacked" and row["cores"] == 1 and row["epoch2"] > 0 and row["epoch1"] > 0
    assert "| arith | auto | unpacked | 1 | 0 |" in (tmp_path / "pipeline.md").read_text()


def test_loop_overhead_line_names_medians_pairs_and_load():
    from bench import loop_overhead

    r = {"steps": 300, "repeats": 3, "batch_size": 8, "lengths": loop_overhead.LENGTHS, "load_average": (2.0, 1.5, 1.0),
         "step_alone_ms": 1.5, "trainer_ms": 1.8, "step_alone_cpu_ms": 1.6, "trainer_cpu_ms": 2.1,
         "overhead_ms": 0.3, "overhead_cpu_ms": 0.5, "overhead_ms_pairs": [0.25, 0.3, 0.4],
         "overhead_cpu_ms_pairs": [0.5, 0.4, 0.6], "loop_python_ms": 0.02, "loop_python_cpu_ms": 0.019}
    text = loop_overhead.markdown(r, "abc1234", "2026-12-02 10:00")
    assert "commit `abc1234`" in text and "load average 2.0, 1.5, 1.0" in text and "lengths 16/4/8" in text
    assert "**loop overhead 0.300 ms/step wall, 0.500 ms/step process CPU**" in text
    assert "per-repeat wall 0.25, 0.30, 0.40; CPU 0.50, 0.40, 0.60" in text
    assert "own Python alone (a step that does nothing): 0.0200 ms/step wall, 0.0190 ms CPU" in text
