"""The embedded quickstart task: deterministic generation, consistent rationales, registration."""
import re

from sbs_jax.commands import data as data_cmd
from sbs_jax.data.records import arith
from sbs_jax.data.scoring import metrics
from sbs_jax.data.registry import register


def test_generator_is_deterministic_and_splits_are_disjoint():
    a = arith.generate_splits(seed=3)
    assert a == arith.generate_splits(seed=3)
    assert a["train"] != arith.generate_splits(seed=4)["train"]
    assert {k: len(v) for k, v in a.items()} == {"train": 4000, "validation": 1000, "test": 2000}
    inputs = [set(ex.input for ex in v) for v in a.values()]
    assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])


def test_rationales_spell_out_steps_that_reach_the_teacher_label():
    data = arith.generate_split_data(seed=0)["train"]
    for ex in data.examples:
        if not ex.rationale:
            assert not ex.teacher_label
            continue
        steps = re.findall(r"(-?\d+) ([-+*]) (\d+) = (-?\d+)\.", ex.rationale)
        assert len(steps) == arith.STEPS and steps[-1][3] == ex.teacher_label
        # Each step starts from the previous step's result, and the first from the asked person's count,
        # not the distractor's.
        assert all(prev[3] == cur[0] for prev, cur in zip(steps, steps[1:]))
        name = re.search(r"How many \w+ does (\w+) have now\?", ex.input).group(1)
        assert ex.input.startswith(f"{name} has {steps[0][0]} ")
        assert len(re.findall(r"\b\w+ has \d+ ", ex.input)) == 2  # the person and the distractor
    # A teacher like the paper's: mostly right, sometimes wrong, occasionally unparsable.
    assert 80.0 < data.teacher_accuracy < 95.0
    assert 0 < data.parse_failures < 0.05 * len(data.examples)
    correct = sum(metrics.label_matches("exact_match", ex.label, ex.teacher_label) for ex in data.examples)
    assert correct == data.teacher_correct


def test_register_arith_tasks(tmp_path):
    from sbs_jax import tasks
    names = tasks.register_arith_tasks(vocab_cache_dir=str(tmp_path))
    assert names == ["arith_sbs", "arith_sbs_llm", "arith_ft", "arith_distill"]
    v = register.get_vocabulary("arith_sbs")
    assert 300 <= v.vocab_size <= 800
    ex = arith.generate_splits(seed=0)["test"][0]
    # gin/datasets/arith.gin's TASK_FEATURE_LENGTHS hold every example (EOS included), so nothing is cut.
    for ex in arith.generate_splits(seed=0)["train"]:
        assert len(v.encode("predict: " + ex.input)) < 40 and len(v.encode(ex.label)) < 4
        assert len(v.encode(ex.rationale)) < 12
    assert list(tmp_path.glob("arith_*/spiece.model"))  # cached for the next run


def test_data_check_reports_the_embedded_task(capsys):
    assert data_cmd.main(["check", "--dataset", "arith"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\s+4000\s+yes\s+\d+\s+\d+\.\d\d%", out)
    assert re.search(r"test\s+2000\s+yes\s+\d+\s+\d+\.\d\d%", out)


def test_k_rationales_per_problem_keep_the_first_and_tell_the_steps_other_valid_ways():
    one = arith.generate_split_data(seed=3, sizes={"train": 300, "test": 100})
    four = arith.generate_split_data(seed=3, sizes={"train": 300, "test": 100}, rationales_per_example=4)
    for split in one:
        assert [ex.input for ex in four[split].examples] == [ex.input for ex in one[split].examples]
        for a, b in zip(one[split].examples, four[split].examples):
            cands = b.candidates()
            assert len(cands) == 4 and (cands[0].text, cands[0].teacher_label) == (a.rationale, a.teacher_label)
    examples = four["train"].examples
    parsed = [c for ex in examples for c in ex.candidates() if c.text]
    right = [c for ex in examples for c in ex.candidates() if c.teacher_label == ex.label]
    assert 0.85 < len(right) / len(parsed) < 0.95  # the teacher slips on about 10 % of its completions
    # Different tellings: most problems get 4 distinct rationales, and the variants use every style.
    assert sum(len({c.text for c in ex.candidates()}) == 4 for ex in examples) > 0.8 * len(examples)
    texts = " ".join(c.text for c in parsed)
    assert " is " in texts and any(c.text.split()[1] == "=" for c in parsed)
