"""The embedded quickstart task: multi-step arithmetic word problems with teacher-style rationales.

Deterministic for a seed. Each problem chains 1 to 3 steps (add or take away 1-5, double) on counts that
start at 1-9, small enough for a tiny student to learn the arithmetic facts on a CPU in minutes; the
rationale spells each step out (`3 + 4 = 7. 7 - 2 = 5.`), so a student that also learns to explain sees every
intermediate result, while a label-only student must compose the steps in one go. The simulated teacher
behaves like a real one: its raw completion runs on into an invented next exemplar, it slips on one step of
about 10% of the problems (a wrong but self-consistent label), and about 2% of its outputs do not parse.
"""
from __future__ import annotations

import random
from typing import Mapping

from sbs_jax.data import formats
from sbs_jax.data.records import Example, SplitData, attach_teacher

DEFAULT_SIZES: Mapping[str, int] = {"train": 4000, "validation": 400, "test": 400}
TEACHER_SLIP_RATE = 0.10
TEACHER_UNPARSABLE_RATE = 0.02

_PEOPLE = (("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Lily", "She"), ("Sam", "He"), ("Mia", "She"),
           ("Jack", "He"), ("Emma", "She"))
_OBJECTS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "cookies", "cards")
_ADD = ("buys {n} more", "finds {n} more", "gets {n} more from a friend")
_SUB = ("gives away {n}", "loses {n}", "gives {n} to a friend")


def _problem(rng: random.Random) -> tuple[str, list[tuple[str, int, int]]]:
    """Question text and its steps as (operator, operand, result)."""
    name, pronoun = rng.choice(_PEOPLE)
    obj = rng.choice(_OBJECTS)
    value = rng.randint(1, 9)
    sentences = [f"{name} has {value} {obj}."]
    steps = []
    for _ in range(rng.choice((1, 2, 2, 3, 3))):
        kind = rng.choice(("add", "sub", "add", "sub", "double"))
        if kind == "double" and value <= 6:
            sentences.append(f"Then the number of {obj} {pronoun.lower()} has doubles.")
            steps.append(("*", 2, value * 2))
        elif kind == "sub" and value > 1:
            n = rng.randint(1, min(5, value - 1))
            sentences.append(f"{pronoun} {rng.choice(_SUB).format(n=n)}.")
            steps.append(("-", n, value - n))
        else:
            n = rng.randint(1, 5)
            sentences.append(f"{pronoun} {rng.choice(_ADD).format(n=n)}.")
            steps.append(("+", n, value + n))
        value = steps[-1][2]
    sentences.append(f"How many {obj} does {name} have now?")
    return " ".join(sentences), [(op, n, r) for op, n, r in steps]


def _teacher_output(rng: random.Random, question: str, start: int, steps) -> str:
    """A raw chain-of-thought completion, possibly with one arithmetic slip or a broken ending."""
    slip_at = rng.randrange(len(steps)) if rng.random() < TEACHER_SLIP_RATE else -1
    value, parts = start, []
    for i, (op, n, _) in enumerate(steps):
        result = value + n if op == "+" else value - n if op == "-" else value * n
        if i == slip_at:
            slip = rng.choice((-2, -1, 1, 2))
            result += slip if result + slip >= 0 else -slip
        parts.append(f"{value} {op} {n} = {result}.")
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


def generate_split_data(seed: int = 0, sizes: Mapping[str, int] = DEFAULT_SIZES) -> dict[str, SplitData]:
    """All splits, with teacher outputs parsed and counted; no question appears in two splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = {}
    for split, size in sizes.items():
        examples, outputs = [], []
        while len(examples) < size:
            question, steps = _problem(rng)
            if question in seen:
                continue
            seen.add(question)
            start = int(question.split(" has ", 1)[1].split(" ", 1)[0])
            examples.append(Example(input=question, label=str(steps[-1][2])))
            outputs.append(_teacher_output(rng, question, start, steps))
        data = SplitData("arith", split, examples, source=f"arith generator (seed {seed})")
        out[split] = attach_teacher(data, outputs, parse_teacher, "exact_match", where=data.source)
    return out


def generate_splits(seed: int = 0, sizes: Mapping[str, int] = DEFAULT_SIZES) -> dict[str, list[Example]]:
    return {split: data.examples for split, data in generate_split_data(seed, sizes).items()}
