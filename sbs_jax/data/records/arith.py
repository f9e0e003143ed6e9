"""The embedded quickstart task: arithmetic word problems with teacher-style rationales.

Deterministic for a seed. Each problem follows one person's count (1-9) through two changes of 1-5, told
with one of many verbs per direction (`sells 3`, `is given 4 more`), next to a distractor sentence about
someone else's count. The label is the final count; the rationale spells the steps out (`9 - 3 = 6. 6 + 4 =
10.`), so it carries what the label alone does not: which numbers matter, which way each verb goes, and the
intermediate count. The simulated teacher behaves like a real one: its raw completion runs on into an
invented next exemplar, it slips on one step of about 10% of the problems (a wrong but self-consistent
label), and about 2% of its outputs do not parse. With `rationales_per_example=k` it draws k completions per
problem: the first is the one above (so k=1 is byte-identical to the single-rationale task), the others tell
the same steps in a different valid way (the other order of the two changes where no count goes negative, and
`a + b = c.` / `c = a + b.` / `a + b is c.`), each with its own slips.
"""
from __future__ import annotations

import random
from typing import Mapping

from sbs_jax.data.records import formats
from sbs_jax.data.records.data_dir import Example, SplitData, attach_teacher, attach_teacher_samples

DEFAULT_SIZES: Mapping[str, int] = {"train": 4000, "validation": 1000, "test": 2000}
TEACHER_SLIP_RATE = 0.10
TEACHER_UNPARSABLE_RATE = 0.02
STEPS = 2

_PEOPLE = (("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Lily", "She"), ("Sam", "He"), ("Mia", "She"),
           ("Jack", "He"), ("Emma", "She"), ("Leo", "He"), ("Zoe", "She"), ("Max", "He"), ("Ava", "She"))
_OBJECTS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "cookies", "cards")
_ADD = ("buys {n} more", "finds {n} more", "gets {n} more", "wins {n} more", "picks up {n} more",
        "is given {n} more", "earns {n} more", "collects {n} more")
_SUB = ("gives away {n}", "loses {n}", "sells {n}", "eats {n}", "drops {n}", "trades away {n}", "breaks {n}",
        "hands out {n}")


def _problem(rng: random.Random) -> tuple[str, int, list[tuple[str, int, int]]]:
    """Question text, the starting count and the steps as (operator, operand, result)."""
    (name, _), (other, _) = rng.sample(_PEOPLE, 2)
    obj = rng.choice(_OBJECTS)
    start = value = rng.randint(1, 9)
    sentences = [f"{name} has {value} {obj}."]
    steps = []
    for _ in range(STEPS):
        if rng.random() < 0.5 and value > 1:
            n = rng.randint(1, min(5, value - 1))
            sentences.append(f"Then {name} {rng.choice(_SUB).format(n=n)}.")
            steps.append(("-", n, value - n))
        else:
            n = rng.randint(1, 5)
            sentences.append(f"Then {name} {rng.choice(_ADD).format(n=n)}.")
            steps.append(("+", n, value + n))
        value = steps[-1][2]
    # The distractor: a count the answer does not depend on, anywhere after the first sentence.
    sentences.insert(rng.randint(1, len(sentences)), f"{other} has {rng.randint(1, 9)} {obj}.")
    sentences.append(f"How many {obj} does {name} have now?")
    return " ".join(sentences), start, steps


# How a step `a op b = c` is written: the default first, then the other phrasings of the extra samples.
_STYLES = ("{a} {op} {b} = {c}.", "{c} = {a} {op} {b}.", "{a} {op} {b} is {c}.")


def _orders(start: int, steps) -> list[tuple[int, ...]]:
    """Orders in which the steps can be told without a count going negative (the given order first)."""
    out = []
    for order in ((0, 1), (1, 0)) if len(steps) == 2 else (tuple(range(len(steps))),):
        value, ok = start, True
        for i in order:
            value = value + steps[i][1] if steps[i][0] == "+" else value - steps[i][1]
            ok &= value >= 0
        if ok:
            out.append(order)
    return out


def _teacher_output(rng: random.Random, start: int, steps, order: tuple[int, ...] | None = None,
                    style: str = _STYLES[0]) -> str:
    """A raw chain-of-thought completion, possibly with one arithmetic slip or a broken ending."""
    order = tuple(range(len(steps))) if order is None else order
    slip_at = rng.randrange(len(steps)) if rng.random() < TEACHER_SLIP_RATE else -1
    value, parts = start, []
    for i, k in enumerate(order):
        op, n, _ = steps[k]
        result = value + n if op == "+" else value - n
        if i == slip_at:
            slip = rng.choice((-2, -1, 1, 2))
            result += slip if result + slip >= 0 else -slip
        parts.append(style.format(a=value, op=op, b=n, c=result))
        value = result
    rationale = " ".join(parts)
    if rng.random() < TEACHER_UNPARSABLE_RATE:
        return f"{rationale} So"  # cut off before the answer, as truncated completions are
    invented = rng.choice(_PEOPLE)[0]
    return f"{rationale} So the answer is {value}.\n\nQ: {invented} has {rng.randint(2, 20)} {rng.choice(_OBJECTS)}."


def parse_teacher(text: str) -> formats.TeacherOutput | None:
    """`<steps> So the answer is <n>.` cut at the first `Q:` (the invented next exemplar)."""
    head, sep, tail = text.split("Q:")[0].partition("So the answer is")
    label = tail.strip().removesuffix(".")
    return formats.TeacherOutput(head.strip(), label) if sep and head.strip() and label else None


def _more_samples(seed: int, split: str, index: int, start: int, steps, k: int) -> list[str]:
    """The 2nd..k-th completions of one problem: different valid tellings (distinct while there are), from a
    generator of their own, so drawing them leaves the problems and the first completions unchanged."""
    rng = random.Random(f"arith-samples:{seed}:{split}:{index}")
    ways = [(o, s) for o in _orders(start, steps) for s in _STYLES][1:]  # the first is the default's
    rng.shuffle(ways)
    picks = [ways[i % len(ways)] for i in range(k - 1)]
    return [_teacher_output(rng, start, steps, order, style) for order, style in picks]


def generate_split_data(seed: int = 0, sizes: Mapping[str, int] = DEFAULT_SIZES,
                        rationales_per_example: int = 1) -> dict[str, SplitData]:
    """All splits, with teacher outputs parsed and counted; no question appears in two splits."""
    if isinstance(rationales_per_example, bool) or not isinstance(rationales_per_example, int) \
            or rationales_per_example < 1:
        raise ValueError(f"rationales_per_example={rationales_per_example!r}: expected an int >= 1")
    rng = random.Random(seed)
    seen: set[str] = set()
    out = {}
    for split, size in sizes.items():
        examples, outputs = [], []
        while len(examples) < size:
            question, start, steps = _problem(rng)
            if question in seen:
                continue
            seen.add(question)
            examples.append(Example(input=question, label=str(steps[-1][2])))
            outputs.append([_teacher_output(rng, start, steps)])
            if rationales_per_example > 1:
                outputs[-1] += _more_samples(seed, split, len(examples) - 1, start, steps, rationales_per_example)
        data = SplitData("arith", split, examples, source=f"arith generator (seed {seed})")
        if rationales_per_example == 1:
            out[split] = attach_teacher(data, [o[0] for o in outputs], parse_teacher, "exact_match",
                                        where=data.source)
        else:
            out[split] = attach_teacher_samples(data, outputs, parse_teacher, "exact_match", where=data.source)
    return out


def generate_splits(seed: int = 0, sizes: Mapping[str, int] = DEFAULT_SIZES) -> dict[str, list[Example]]:
    return {split: data.examples for split, data in generate_split_data(seed, sizes).items()}
