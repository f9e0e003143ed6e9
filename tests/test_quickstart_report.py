"""The quickstart's printout: per-seed cells, the comparison and the verdict, from given accuracies."""
import json
import pathlib

from sbs_jax import seed_comparison
from sbs_jax.commands import quickstart


def _cells(ft, sbs):
    return {mode: {seed: {"test": acc, "valid": acc + 1.0, "step": 300, "test_examples": 2000}
                   for seed, acc in enumerate(accs)}
            for mode, accs in (("finetune", ft), ("step_by_step", sbs))}


def _report(ft, sbs):
    c = seed_comparison.compare(ft, sbs, test_examples=2000)
    return quickstart.format_report(_cells(ft, sbs), c, sizes={"train": 250, "train_total": 4000}, steps=300,
                                    elapsed_s=150.0, cpu_s=270.0, majority=12.45)


def test_report_lists_every_seed_and_how_sure_it_is():
    out = _report([14.0, 15.5, 13.0], [17.0, 16.25, 18.0])
    assert "on 250 of the 4,000 generated train problems (6.25 %" in out
    for line, ft, sbs in (("0 ", "14.0 %", "17.0 %"), ("1 ", "15.5 %", "16.2 %"), ("2 ", "13.0 %", "18.0 %")):
        row = next(x for x in out.splitlines() if x.startswith(line))
        assert ft in row and sbs in row and "@300" in row
    assert "Step-by-step minus finetuning: +2.9 points, 95 % interval [" in out
    assert "scores higher: 9 of 9." in out
    assert "Test set: 2,000 examples" in out and "most frequent test label scores 12.4 %" in out
    assert "Verdict: every step-by-step seed beats every finetuning seed" in out
    assert "Wall time 2.5 min (4.5 min of CPU time) for 6 runs." in out


def test_report_says_so_when_seeds_overlap_or_reverse():
    assert "Verdict: none; one seed per method" in _report([14.0], [17.0])
    assert "the methods' seeds overlap" in _report([14.0, 17.5], [15.0, 16.0])
    assert "contradicts" in _report([18.0, 19.0], [15.0, 16.0])
    # Below the majority-label floor nothing was learned, whatever the order.
    assert "neither method beats always answering the most frequent label" in _report([11.0, 12.0], [9.0, 10.0])


def test_bad_seed_lists_are_rejected(capsys):
    import pytest
    for bad in ("0,x", "1,1", ""):
        # One usage error through the boundary (exit 2, the flag named), before anything is written.
        assert quickstart.main(["--seeds", bad, "--workdir", "/nonexistent/never"]) == 2
        assert "--seeds" in capsys.readouterr().err
    assert not pathlib.Path("/nonexistent/never").exists()


def test_majority_accuracy_counts_the_most_frequent_gold(tmp_path):
    rows = [{"gold": g, "prediction": "1"} for g in ("1", "6", "6", "2")]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert quickstart.majority_accuracy(tmp_path / "p.jsonl") == 50.0


def test_validation_accuracy_is_read_at_the_chosen_step(tmp_path):
    rows = [{"step": 100, "split": "validation", "accuracy": 12.0}, {"step": 200, "split": "train", "loss": 1.0},
            {"step": 200, "split": "validation", "accuracy": 15.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert quickstart.validation_accuracy_at(tmp_path, 200) == 15.5
    assert quickstart.validation_accuracy_at(tmp_path, 300) is None
