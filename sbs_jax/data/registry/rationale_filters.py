"""Rationale filters applied at registration, each one counted, and what becomes of examples left without one.

The filters run in `FILTER_ORDER` over every teacher rationale of every split with teacher outputs; each
counts the rationales it removed (of those the earlier filters kept). Evaluation splits lose rationales only,
never examples: `without_rationale="drop"` drops examples from the train split alone (dropping from a split
that is scored would change what is measured). A filter that leaves a split with teacher rationales with none
at all is a `DataError` naming the filter and the split. Pure Python; token counts come from a callable.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from sbs_jax.data.records.data_dir import DataError, Example, SplitData
from sbs_jax.data.scoring import metrics

FILTER_ORDER = ("unparsed", "disagree_with_gold", "too_short", "too_long", "duplicate")
WITHOUT_RATIONALE = ("label_only", "drop")
TRAIN_SPLIT = "train"


@dataclasses.dataclass(frozen=True)
class RationaleFilters:
    """Which rationales a task keeps (every field off by default: today's behaviour, everything kept).

    agree_with_gold: keep a rationale only when its parsed teacher label equals the gold label (the task's
      metric); needs teacher labels. drop_unparsed: drop completions that did not parse (by default one stays
      as an empty rationale: its example trains the label stream only that time). min_words: drop rationales
      of fewer words. max_tokens: drop rationales longer than this many tokens with EOS (set it to the
      `rationales` feature length: they would be cut there). drop_duplicates: keep the first of identical
      rationales of one example. without_rationale: what an example left with no rationale does:
      "label_only" (trains the label stream) or "drop" (left out of the train split).
    """
    agree_with_gold: bool = False
    drop_unparsed: bool = False
    min_words: int = 0
    max_tokens: int | None = None
    drop_duplicates: bool = False
    without_rationale: str = "label_only"

    def __post_init__(self):
        if self.without_rationale not in WITHOUT_RATIONALE:
            raise ValueError(f"without_rationale={self.without_rationale!r}: expected one of {WITHOUT_RATIONALE}")
        if isinstance(self.min_words, bool) or not isinstance(self.min_words, int) or self.min_words < 0:
            raise ValueError(f"min_rationale_words={self.min_words!r}: expected an int >= 0")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 2):
            raise ValueError(f"max_rationale_tokens={self.max_tokens!r}: expected None or an int >= 2 (the "
                             "rationales feature length)")

    @classmethod
    def from_setting(cls, value) -> "RationaleFilters":
        """From a registration's `rationale_filters` setting: None (keep everything), a RationaleFilters or a
        dict of its fields (gin: `rationale_filters = {'agree_with_gold': True, 'drop_unparsed': True}`)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"rationale_filters={value!r}: expected a dict of {sorted(FIELDS)}")
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise ValueError(f"rationale_filters: unknown filter(s) {unknown}; expected some of {sorted(FIELDS)}")
        return cls(**value)

    @property
    def active(self) -> bool:
        return self != RationaleFilters()

    def settings(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(RationaleFilters))


def describe(counts: dict) -> str:
    """One line: what every filter kept of the split's teacher rationales."""
    steps = ", ".join(f"{name} -{n}" for name, n in counts["removed"].items())
    line = (f"rationale filters kept {counts['rationales_after']} of {counts['rationales_before']} teacher "
            f"rationales ({counts['samples']} completions; {steps or 'nothing removed'})")
    if counts["examples_dropped"]:
        return line + f"; {counts['examples_dropped']} examples left without one are dropped"
    if counts["examples_without_rationale"]:
        return line + f"; {counts['examples_without_rationale']} examples left without one train the label only"
    return line


def _removes(name: str, filters: RationaleFilters) -> bool:
    return {"unparsed": filters.drop_unparsed, "disagree_with_gold": filters.agree_with_gold,
            "too_short": filters.min_words > 0, "too_long": filters.max_tokens is not None,
            "duplicate": filters.drop_duplicates}[name]


def apply_filters(data: SplitData, filters: RationaleFilters, metric: str, *,
                  count_tokens: Callable[[Sequence[str]], Sequence[int]] | None = None,
                  task: str = "task") -> SplitData:
    """`data` with the filtered rationales and `filter_counts`: {"samples" (teacher completions, parsed or
    not), "rationales_before" (parsed ones), "removed": {filter: completions it removed}, "rationales_after",
    "examples_without_rationale", "examples_dropped"}. `count_tokens(texts)` gives token
    counts with EOS (needed with `max_tokens`)."""
    if not data.has_teacher or not filters.active:
        return data
    if filters.agree_with_gold and not data.has_teacher_labels:
        raise DataError(f"{task} {data.split}: agree_with_gold needs the teacher's labels, and {data.source} has "
                        "none (JSONL tasks: set teacher_label_field)")
    if filters.max_tokens is not None and count_tokens is None:
        raise ValueError("max_rationale_tokens needs a vocabulary to count tokens")
    candidates = [list(ex.candidates()) for ex in data.examples]
    samples = sum(len(cs) for cs in candidates)
    usable = sum(bool(c.text) for cs in candidates for c in cs)
    removed = {}
    for name in FILTER_ORDER:
        if not _removes(name, filters):
            continue
        count = sum(len(cs) for cs in candidates)
        candidates = _filter(name, candidates, data.examples, filters, metric, count_tokens)
        removed[name] = count - sum(len(cs) for cs in candidates)
        if usable and not any(c.text for cs in candidates for c in cs):
            raise DataError(f"{task} {data.split}: filter {name!r} leaves none of the split's {usable} teacher "
                            f"rationales ({data.source}); loosen it or train the `_ft` variant")
    examples = [ex.with_candidates(cs) for ex, cs in zip(data.examples, candidates)]
    without = [i for i, ex in enumerate(examples) if not any(c.text for c in ex.candidates())]
    dropped = 0
    if filters.without_rationale == "drop" and data.split == TRAIN_SPLIT:
        gone = set(without)
        examples = [ex for i, ex in enumerate(examples) if i not in gone]
        dropped = len(gone)
    counts = {"samples": samples, "rationales_before": usable, "removed": removed,
              "rationales_after": sum(bool(c.text) for ex in examples for c in ex.candidates()),
              "examples_without_rationale": len(without), "examples_dropped": dropped}
    # The teacher statistics describe what is kept (the counts above say what was removed).
    kept = [(ex, c) for ex in examples for c in ex.candidates()]
    return dataclasses.replace(
        data, examples=examples, filter_counts=counts, parse_failures=sum(not c.text for _, c in kept),
        teacher_correct=sum(bool(c.teacher_label) and metrics.label_matches(metric, ex.label, c.teacher_label)
                            for ex, c in kept))


def _filter(name, candidates, examples: list[Example], filters: RationaleFilters, metric, count_tokens):
    if name == "unparsed":
        return [[c for c in cs if c.text] for cs in candidates]
    if name == "disagree_with_gold":  # an unparsed completion has no label to agree
        return [[c for c in cs if c.text and metrics.label_matches(metric, ex.label, c.teacher_label)]
                for cs, ex in zip(candidates, examples)]
    if name == "too_short":
        return [[c for c in cs if not c.text or len(c.text.split()) >= filters.min_words] for cs in candidates]
    if name == "too_long":
        texts = sorted({c.text for cs in candidates for c in cs if c.text})
        lengths = dict(zip(texts, count_tokens(texts))) if texts else {}
        return [[c for c in cs if not c.text or lengths[c.text] <= filters.max_tokens] for cs in candidates]
    if name == "duplicate":
        out = []
        for cs in candidates:
            seen, kept = set(), []
            for c in cs:
                if c.text and c.text in seen:
                    continue
                seen.add(c.text)
                kept.append(c)
            out.append(kept)
        return out
    raise ValueError(name)
