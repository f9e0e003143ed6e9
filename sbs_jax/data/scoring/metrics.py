"""Task metrics: exact-match label accuracy, and equation accuracy by numeric value (SVAMP).

`equation` compares values within a relative 1e-6 (float rounding of `/`); `equation_exact` compares them with
`==`, as the official code does after `eval()`-ing both (its scoring; `OFFICIAL_METRICS`).

Model output never reaches `eval`/`exec`/`compile`/`ast`: equations go through a small tokenizer and a
recursive-descent parser that knows numbers, `+ - * /`, unary signs and parentheses, and nothing else. On
that grammar the values are those of Python's `eval` (same IEEE operations in the same order); numbers are
digits with an optional decimal point: Python's other literal forms (`1e3`, `0x10`, `1_000`) count as wrong.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Mapping, Sequence

# Bounds that keep hostile or runaway strings cheap: a model can emit any text.
MAX_EQUATION_CHARS = 512
MAX_NESTING = 64
MAX_NUMBER_CHARS = 32
EQUATION_REL_TOL = 1e-6  # numeric equality of two equations' values (float rounding of `/`)

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(.))")


class EquationError(ValueError):
    """An equation that is not plain arithmetic over numbers (or is too large to evaluate)."""


def _tokenize(text: str) -> list[str]:
    tokens = []
    for number, symbol in _TOKEN.findall(text):
        if number:
            if len(number) > MAX_NUMBER_CHARS:
                raise EquationError(f"number longer than {MAX_NUMBER_CHARS} characters")
            if "." not in number and number[0] == "0" and number.strip("0"):
                # Python rejects `007` (its eval scores it wrong in the official code); so do we.
                raise EquationError(f"integer with leading zeros {number!r}")
            tokens.append(number)
        elif symbol.strip():
            if symbol not in "+-*/()":
                raise EquationError(f"unexpected character {symbol!r}; expected digits, + - * / ( )")
            tokens.append(symbol)
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*; factor := ('+'|'-') factor |
    number | '(' expr ')'. `**`, names, calls, attributes and everything else are syntax errors."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise EquationError("unexpected end of equation")
        self.pos += 1
        return token

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.factor()
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise EquationError("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self) -> float:
        token = self.take()
        if token in ("+", "-"):
            self._enter()
            value = self.factor()
            self.depth -= 1
            return value if token == "+" else -value
        if token == "(":
            self._enter()
            value = self.expr()
            if self.take() != ")":
                raise EquationError("expected ')'")
            self.depth -= 1
            return value
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        raise EquationError(f"unexpected {token!r}")

    def _enter(self):
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise EquationError(f"nesting deeper than {MAX_NESTING}")


def evaluate_equation(text: str) -> float:
    """Numeric value of an arithmetic equation such as `( 84.0 / 2.0 )`; raises `EquationError`."""
    if len(text) > MAX_EQUATION_CHARS:
        raise EquationError(f"equation longer than {MAX_EQUATION_CHARS} characters")
    parser = _Parser(_tokenize(text))
    if not parser.tokens:
        raise EquationError("empty equation")
    value = parser.expr()
    if parser.peek() is not None:
        raise EquationError(f"unexpected {parser.peek()!r} after a complete equation")
    if not math.isfinite(value):
        raise EquationError("value is not finite")
    return value


def try_evaluate_equation(text: str) -> float | None:
    """`evaluate_equation`, or None for anything that is not plain arithmetic."""
    try:
        return evaluate_equation(text)
    except EquationError:
        return None


def equations_equal(a: str, b: str, *, exact: bool = False) -> bool:
    """Both are arithmetic and their values agree (`exact`: bit-equal floats, as Python's `==` after eval)."""
    va, vb = try_evaluate_equation(a), try_evaluate_equation(b)
    if va is None or vb is None:
        return False
    return va == vb if exact else math.isclose(va, vb, rel_tol=EQUATION_REL_TOL, abs_tol=1e-9)


def postprocess(text: str, example=None, is_target: bool = False) -> str:
    """The tasks' postprocess_fn (seqio signature): strip surrounding whitespace."""
    del example, is_target
    return text.decode("utf-8").strip() if isinstance(text, bytes) else str(text).strip()


def _check(targets: Sequence[str], predictions: Sequence[str]):
    if len(targets) != len(predictions):
        raise ValueError(f"got {len(targets)} targets but {len(predictions)} predictions")


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """Exact-match accuracy in percent (after stripping), seqio metric_fn signature."""
    _check(targets, predictions)
    hits = sum(postprocess(t) == postprocess(p) for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def equation_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """Accuracy by numeric value of the equations (an unparsable prediction is wrong), in percent."""
    _check(targets, predictions)
    hits = sum(equations_equal(t, p) for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def equation_exact_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """Accuracy by exactly equal equation values (the official code's `eval(a) == eval(b)`), in percent."""
    _check(targets, predictions)
    hits = sum(equations_equal(t, p, exact=True) for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / max(len(targets), 1)}


METRICS: Mapping[str, Callable[[Sequence[str], Sequence[str]], dict]] = {
    "exact_match": accuracy, "equation": equation_accuracy, "equation_exact": equation_exact_accuracy}
# The official code's scoring of each metric (`scoring="official"` in tasks.register_paper_tasks).
OFFICIAL_METRICS: Mapping[str, str] = {"exact_match": "exact_match", "equation": "equation_exact",
                                       "equation_exact": "equation_exact"}


def label_matches(metric: str, target: str, prediction: str) -> bool:
    """Whether one prediction counts as correct under a task's metric name."""
    if metric in ("equation", "equation_exact"):
        return equations_equal(target, prediction, exact=metric == "equation_exact")
    return postprocess(target) == postprocess(prediction)


def score(task_name: str, targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """Score decoded label predictions with the metric functions attached to the registered task."""
    import seqio  # lazy: keeps this module importable without TF for the scorer itself

    task = seqio.get_mixture_or_task(task_name)
    tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]
    targets = [postprocess(t, is_target=True) for t in targets]
    predictions = [postprocess(p) for p in predictions]
    results = {}
    for fn in tasks[0].metric_fns:
        results.update(fn(targets, predictions))
    return results
