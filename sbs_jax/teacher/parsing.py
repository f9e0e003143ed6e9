"""Gold comparison and self-consistency voting over teacher outputs parsed by a template's parse spec.

The parser itself (`ParseSpec`, `parse_output`) lives in `sbs_jax.data.records.output_parsing`, which the dataset
formats use too, so the teacher and the tasks split every completion the same way. Specs are data, so user
templates bring their own; the built-in ones give the counts of the datasets README (e.g. CQA train: 3
unparseable outputs, 74.26% teacher accuracy; tests/test_teacher_parsing.py).
"""
import collections
import dataclasses

from sbs_jax.data.scoring import metrics
from sbs_jax.data.records.output_parsing import Parsed, ParseSpec, parse_output  # re-export


@dataclasses.dataclass(frozen=True)
class GoldSpec:
    """Where the gold label lives in an example and how a teacher label is compared with it.

    field: the example's key; names: maps an integer gold label to its name (e-SNLI 0 -> entailment);
    compare: "exact" (string equality after stripping) or "numeric" (arithmetic expressions by value, with
    the tasks' own metric, sbs_jax.data.scoring.metrics).
    """
    field: str | None = None
    names: tuple[str, ...] = ()
    compare: str = "exact"


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
        value = metrics.try_evaluate_equation(label)
        if value is not None:
            return repr(float(f"{value:.9g}") + 0.0)
    return label.strip()


def agrees(label: str, gold: str, spec: GoldSpec) -> bool:
    """Teacher label = gold, by the same rule the tasks score with."""
    return metrics.label_matches("equation" if spec.compare == "numeric" else "exact_match", gold, label)


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
