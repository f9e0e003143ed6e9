"""Teacher-output parsing, gold comparison and self-consistency voting, driven by a template's parse spec.

The built-in specs reproduce the rules of /work/shared/datasets/README.md (and so the official code's
counts): e.g. CQA train has 3 unparseable outputs and 74.26% teacher accuracy, SVAMP train 13 and 73.25%.
"""
import ast
import collections
import dataclasses
import math
import operator
import re

_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclasses.dataclass(frozen=True)
class ParseSpec:
    """How to split a raw completion into (rationale, label).

    cut_at: strings; the completion is cut at the earliest occurrence of any (the teacher runs on into
      invented exemplars). marker: the text between rationale and label (its first occurrence).
      label_stop: the label ends at the first of these. label_regex: the label is this regex's group 1 (or
      the whole match) in the text after the marker; no match is a parse failure. strip_period: drop one
      trailing period from the label. An empty rationale or label is a parse failure.
    """
    marker: str
    cut_at: tuple[str, ...] = ()
    label_stop: tuple[str, ...] = ()
    label_regex: str | None = None
    strip_period: bool = True


@dataclasses.dataclass(frozen=True)
class GoldSpec:
    """Where the gold label lives in an example and how a teacher label is compared with it.

    field: the example's key; names: maps an integer gold label to its name (e-SNLI 0 -> entailment);
    compare: "exact" (string equality after stripping) or "numeric" (arithmetic expressions by value).
    """
    field: str | None = None
    names: tuple[str, ...] = ()
    compare: str = "exact"


@dataclasses.dataclass(frozen=True)
class Parsed:
    rationale: str
    label: str


def _cut(text: str, stops: tuple[str, ...]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def parse_output(text: str, spec: ParseSpec) -> Parsed | None:
    """(rationale, label) of one raw completion, or None when it does not follow the answer format."""
    text = _cut(text, spec.cut_at).rstrip()
    if spec.marker not in text:
        return None
    rationale, rest = text.split(spec.marker, 1)
    rest = _cut(rest, spec.label_stop)
    if spec.label_regex is not None:
        match = re.search(spec.label_regex, rest, flags=re.DOTALL)
        if match is None:
            return None
        rest = match.group(1) if match.re.groups else match.group(0)
    label = rest.strip()
    if spec.strip_period and label.endswith("."):
        label = label[:-1].rstrip()
    if not label or not rationale.strip():
        return None
    return Parsed(rationale=rationale.strip(), label=label)


def eval_arithmetic(expression: str) -> float | None:
    """Value of an arithmetic expression of numbers, + - * / and parentheses; None if it is anything else."""
    def value(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            return _ARITH[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        raise ValueError(f"not arithmetic: {ast.dump(node)}")
    try:
        result = value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return result if math.isfinite(result) else None


def gold_label(example: dict, spec: GoldSpec) -> str | None:
    """The example's gold label as text (None when the template names no gold field)."""
    if spec.field is None:
        return None
    if spec.field not in example:
        raise KeyError(f"gold field {spec.field!r} missing (example keys: {sorted(example)})")
    gold = example[spec.field]
    if spec.names and isinstance(gold, int) and not isinstance(gold, bool):
        if not 0 <= gold < len(spec.names):
            raise ValueError(f"gold label {gold} outside the label names {list(spec.names)}")
        return spec.names[gold]
    return str(gold).strip()


def label_key(label: str, spec: GoldSpec) -> str:
    """Key under which two labels count as the same answer (votes and gold comparison)."""
    if spec.compare == "numeric":
        value = eval_arithmetic(label)
        if value is not None:
            return repr(round(value, 4) + 0.0)
    return label.strip()


def agrees(label: str, gold: str, spec: GoldSpec) -> bool:
    if spec.compare == "numeric":
        a, b = eval_arithmetic(label), eval_arithmetic(gold)
        return a is not None and b is not None and abs(a - b) < 1e-4
    return label.strip() == gold.strip()


@dataclasses.dataclass(frozen=True)
class Selection:
    index: int                  # which sample becomes the teacher output
    parsed: Parsed | None
    votes: dict[str, int]       # label -> number of samples that gave it (self-consistency)


def select_output(texts: list[str], parse: ParseSpec, gold: GoldSpec) -> Selection:
    """Self-consistency: the majority label over the parsed samples (ties: the label seen first), and the
    first sample that gave it. With one sample this is just its parse."""
    parsed = [parse_output(t, parse) for t in texts]
    keys = [label_key(p.label, gold) if p is not None else None for p in parsed]
    counts = collections.Counter(k for k in keys if k is not None)   # insertion order breaks ties
    if not counts:
        return Selection(index=0, parsed=None, votes={})
    winner = counts.most_common(1)[0][0]
    index = keys.index(winner)
    votes = {}
    for p, k in zip(parsed, keys):
        if p is not None:
            votes.setdefault(parsed[keys.index(k)].label, counts[k])
    return Selection(index=index, parsed=parsed[index], votes=votes)
