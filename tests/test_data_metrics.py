"""The SVAMP equation scorer: right values on a table, and nothing executed from hostile strings."""
import builtins
import pathlib

import pytest

from sbs_jax.data.scoring import metrics

TABLE = [
    ("( 84.0 / 2.0 )", 42.0),
    ("(84 / 2)", 42.0),
    ("( 10.0 - ( 6.0 + 3.0 ) )", 1.0),
    ("( ( 4.0 * 17.0 ) * 16.0 )", 1088.0),
    ("(23 - (-2))", 25.0),
    ("-3 + +4", 1.0),
    ("2 + 3 * 4", 14.0),
    ("(2 + 3) * 4", 20.0),
    ("8 / 4 / 2", 1.0),
    ("10 - 4 - 3", 3.0),
    (".5 * 4", 2.0),
    ("( 660.0 / 15.0 )", 44.0),
]

HOSTILE = [
    "__import__('os').system('touch {marker}')",
    "(1).__class__.__bases__[0].__subclasses__()",
    "open('{marker}', 'w')",
    "lambda: 0",
    "(lambda x: x)(3)",
    "9 ** 9 ** 9 ** 9",
    "2 ** 100000000",
    "1e999999",
    "9" * 100000,
    "(" * 5000 + "1" + ")" * 5000,
    "exec('import os')",
    "eval('1+1')",
    "[x for x in range(10**10)]",
    "((29/2) and (30/2))",
    "(34 + 40) and (62 - 17)",
    "1,000 + 5",
    "x + 1",
    "1 / 0",
    "1 // 2",
    "5 % 3",
    "",
    "()",
    "(1 + 2",
]


@pytest.mark.parametrize("text,value", TABLE)
def test_equation_values(text, value):
    assert metrics.evaluate_equation(text) == pytest.approx(value)


def test_equation_accuracy_compares_values():
    targets = ["( 84.0 / 2.0 )", "( 10.0 - 3.0 )", "( 2.0 * 3.0 )", "( 1.0 + 1.0 )"]
    predictions = ["(84 / 2)", "(3 + 4)", "(7 - 1)", "(2 and 2)"]
    assert metrics.equation_accuracy(targets, predictions)["accuracy"] == pytest.approx(75.0)


def test_exact_match_accuracy_strips():
    assert metrics.accuracy(["neutral", "entailment", "a b"], [" neutral\n", "neutral", "a b"]) == {
        "accuracy": pytest.approx(200 / 3)}


def test_hostile_strings_execute_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    calls = []

    def forbidden(name):
        def fn(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called")
        return fn

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden(name))
    for text in HOSTILE:
        text = text.replace("{marker}", str(marker))
        assert metrics.try_evaluate_equation(text) is None, text
        assert not metrics.equations_equal(text, "( 15.0 )")
    monkeypatch.undo()
    assert calls == []
    assert not pathlib.Path(marker).exists()


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.accuracy(["a", "b"], ["a"])
