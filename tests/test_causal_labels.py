"""Parsing the label out of a decoder-only generation per format; a missing label counts wrong and is counted."""
import pytest

from sbs_jax.data.scoring import causal_labels


def test_rationale_first_missing_label_is_wrong_and_counted():
    golds = ["7", "7", "7", "12"]
    generations = ["3 plus 4 is 7. So the answer is 7",       # parsed, right
                   "3 plus 4 is 7.",                           # no marker: no label
                   "so the answer is 7 So the answer is",      # marker, nothing after it: no label
                   "a So the answer is b So the answer is 13"]  # last marker wins: 13, wrong
    result, rows = causal_labels.score_generations("exact_match", golds, generations, "rationale_first")
    assert result == {"accuracy": 25.0, "parse_failures": 2.0, "num_examples": 4.0}
    assert [r["parsed"] for r in rows] == [True, False, False, True]
    assert [r["prediction"] for r in rows] == ["7", "", "", "13"]
    assert rows[0]["rationale"] == "3 plus 4 is 7."


def test_label_first_and_multitask():
    result, rows = causal_labels.score_generations(
        "equation", ["3 + 4", "2 * 5", "1"], ["4 + 3 Explanation: add them", "10", " Explanation: x"],
        "label_first")
    assert [r["prediction"] for r in rows] == ["4 + 3", "10", ""]
    assert result["parse_failures"] == 1.0 and result["accuracy"] == pytest.approx(200 / 3)
    result, _ = causal_labels.score_generations("exact_match", ["yes"], [" yes "], "multitask")
    assert result == {"accuracy": 100.0, "parse_failures": 0.0, "num_examples": 1.0}
    with pytest.raises(ValueError, match="expected one of"):
        causal_labels.parse_generation("x", "cot")
