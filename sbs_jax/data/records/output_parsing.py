"""The one teacher-output parser: a raw completion -> (rationale, label), driven by a parse spec (data).

The teacher templates (`sbs_jax/teacher/templates/*.json`, their `parse` block) hold the specs; the dataset
formats (`sbs_jax.data.records.formats`) parse the paper's teacher outputs with the built-in templates' specs and
`sbs teacher generate` parses new completions with its template's, so both split text the same way. Pure
Python: the data layer owns it, the teacher package re-exports it.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import re


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


@functools.lru_cache(maxsize=None)
def builtin_spec(name: str) -> ParseSpec:
    """The parse spec of the built-in teacher template `name` (cqa, esnli, anli1, svamp)."""
    resource = importlib.resources.files("sbs_jax.teacher").joinpath(f"templates/{name}.json")
    raw = dict(json.loads(resource.read_text(encoding="utf-8"))["parse"])
    for key in ("cut_at", "label_stop"):  # a single string or a list of strings in the JSON
        if key in raw:
            raw[key] = (raw[key],) if isinstance(raw[key], str) else tuple(raw[key])
    return ParseSpec(**raw)
