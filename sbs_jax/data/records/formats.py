"""Per-dataset record formats of the paper's data: model input, gold label, and teacher-output parsing.

The teacher (PaLM 540B, few-shot chain of thought) runs on into invented further exemplars, so each parser
first cuts the completion, then splits rationale from label. A parser returns None when the completion does
not follow the format; callers count those instead of inventing a target (the official code silently used
`' '`).
"""
from __future__ import annotations

import ast
import dataclasses
from typing import Callable, Mapping, Sequence

from sbs_jax.data.records import output_parsing
from sbs_jax.data.vocab.eos_marker import EOS_MARKER
from sbs_jax.errors import InputError

class DataError(InputError):
    """Bad or missing input data; the message names the file, line or field and what was expected."""


NLI_LABELS = ("entailment", "neutral", "contradiction")  # e-SNLI / ANLI label ids 0, 1, 2
CHOICE_LETTERS = "abcdefghij"


@dataclasses.dataclass(frozen=True)
class TeacherOutput:
    rationale: str
    label: str


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
    """How one dataset's JSON records become (input, gold label) and how its teacher outputs parse."""
    name: str
    required_fields: Mapping[str, type | tuple[type, ...]]  # field -> accepted JSON type(s)
    format_input: Callable[[dict], str]
    gold_label: Callable[[dict], str]
    parse_teacher: Callable[[str], TeacherOutput | None]
    metric: str  # key of sbs_jax.data.scoring.metrics.METRICS


class TemplateParser:
    """`parse_teacher` of a paper dataset: the one spec-driven parser (`sbs_jax.data.records.output_parsing`) with the
    parse spec of the dataset's built-in teacher template, so tasks and `sbs teacher generate` agree."""

    def __init__(self, template: str):
        self.template = template

    @property
    def spec(self) -> output_parsing.ParseSpec:
        return output_parsing.builtin_spec(self.template)

    def __call__(self, text: str) -> TeacherOutput | None:
        parsed = output_parsing.parse_output(text, self.spec)
        return None if parsed is None else TeacherOutput(parsed.rationale, parsed.label)


# `<rationale> So the answer is (x) <answer>.` cut at the first `Q:`; label = answer text.
parse_cqa = TemplateParser("cqa")
# `<rationale> The answer is (<equation>).` cut at the first `Q:`; label = the parenthesised equation.
parse_svamp = TemplateParser("svamp")
# `<rationale>\nAnswer: <label>`; the label runs up to the next invented `Premise`.
parse_esnli = TemplateParser("esnli")
# `<rationale> So the answer is <label>.` cut at the first `Premise:`.
parse_anli = TemplateParser("anli1")


def cqa_input(record: dict) -> str:
    choices = "\n".join(f"({CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(record["choices"]))
    return f"{record['question']}\nAnswer Choices:\n{choices}"


def nli_input(record: dict) -> str:
    # The official code joins them with `tokenizer.eos_token`; our tokenisers read `</s>` as EOS (eos_marker).
    return f"{record['premise']}{EOS_MARKER}{record['hypothesis']}"


def nli_label(record: dict) -> str:
    return NLI_LABELS[record["label"]]


FORMATS: Mapping[str, DatasetFormat] = {
    "cqa": DatasetFormat("cqa", {"question": str, "choices": list, "answer": str}, cqa_input,
                         lambda r: r["answer"], parse_cqa, "exact_match"),
    "esnli": DatasetFormat("esnli", {"premise": str, "hypothesis": str, "label": int}, nli_input, nli_label,
                           parse_esnli, "exact_match"),
    "anli1": DatasetFormat("anli1", {"premise": str, "hypothesis": str, "label": int}, nli_input, nli_label,
                           parse_anli, "exact_match"),
    "svamp": DatasetFormat("svamp", {"input": str, "label": str}, lambda r: r["input"], lambda r: r["label"],
                           parse_svamp, "equation"),
}
PAPER_DATASETS: Sequence[str] = ("cqa", "esnli", "anli1", "svamp")


def get_format(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[name]


def validate_record(fmt: DatasetFormat, record, where: str) -> None:
    """One clear error for a record that lacks a field or holds the wrong type; `where` is `file:line`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field, types in fmt.required_fields.items():
        if field not in record:
            raise DataError(f"{where}: missing field {field!r} (a {fmt.name} record needs "
                             f"{sorted(fmt.required_fields)})")
        value = record[field]
        if not isinstance(value, types) or isinstance(value, bool):
            raise DataError(f"{where}: field {field!r} is {type(value).__name__} {value!r:.60}, expected "
                             f"{getattr(types, '__name__', types)}")
    if fmt.name in ("esnli", "anli1") and record["label"] not in range(len(NLI_LABELS)):
        raise DataError(f"{where}: field 'label' is {record['label']!r}, expected 0, 1 or 2 "
                         f"({', '.join(NLI_LABELS)})")
    if fmt.name == "cqa" and not all(isinstance(c, str) for c in record["choices"]):
        raise DataError(f"{where}: field 'choices' must be a list of strings")
    if fmt.name == "cqa" and not 1 <= len(record["choices"]) <= len(CHOICE_LETTERS):
        raise DataError(f"{where}: field 'choices' has {len(record['choices'])} entries, expected 1 to "
                         f"{len(CHOICE_LETTERS)}")
    if fmt.name == "cqa" and record["answer"] not in record["choices"]:
        raise DataError(f"{where}: field 'answer' is {record['answer']!r:.60}, which is not among its 'choices' "
                         f"{record['choices']!r:.200}; expected one of the choices, verbatim")
    if fmt.name == "svamp":
        problem = equation_problem(record["label"])
        if problem:
            raise DataError(f"{where}: field 'label' {record['label']!r:.80} is not an equation: {problem}; "
                             "expected numbers joined by + - * / with parentheses, e.g. '( 84.0 / 2.0 )'")


_EQUATION_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)


def equation_problem(text: str) -> str | None:
    """None when `text` is an arithmetic equation over number literals (SVAMP's label format), else what is
    wrong. Parsed with `ast` and checked node by node; never evaluated."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        return f"it does not parse ({e.msg})"
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.USub, ast.UAdd) + _EQUATION_OPS):
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        segment = ast.get_source_segment(text.strip(), node)
        kind = type(node).__name__.lower()
        return f"{kind} {segment!r} is not allowed" if segment else f"operator {kind} is not allowed"
    return None
