"""The reference side of the parity harness: the official code's behaviour, written by us from its description
(issue 12) with HF `datasets`, `transformers` and torch. Nothing here is imported by `sbs_jax`.

- `reference_selection`: subsample with `Dataset.train_test_split(test_size=1-f, seed=run)["train"]` (not at
  f = 1), then `train_test_split(test_size=0.1, seed=0)` of the subsample as validation (data without one).
- `reference_input` / `reference_label`: the dataset formats (NLI inputs joined with the tokenizer's EOS token).
- `reference_tokens`: `T5Tokenizer(vocab_file=...)`, prefix per method, inputs cut to 1,024, targets to 256, EOS.
- `reference_accuracy`: decoded strings compared with `==`; SVAMP by `eval()` of both sides, `nan` on error. Only
  strings that are plain arithmetic (checked on their `ast`) are ever evaluated here; others count as `nan`.
"""
from __future__ import annotations

import ast
import math
from typing import Sequence

import numpy as np

NLI_NAMES = ("entailment", "neutral", "contradiction")


# ------------------------------------------------------------------------------------------------ selection
def reference_selection(num_examples: int, fraction: float, run: int, carve_validation: bool):
    """(train row ids, validation row ids or None), each in the order `datasets` returns them."""
    import datasets

    ds = datasets.Dataset.from_dict({"row": list(range(num_examples))})
    if fraction < 1.0:
        ds = ds.train_test_split(test_size=1.0 - fraction, seed=run)["train"]
    if not carve_validation:
        return list(ds["row"]), None
    parts = ds.train_test_split(test_size=0.1, seed=0)
    return list(parts["train"]["row"]), list(parts["test"]["row"])


# ------------------------------------------------------------------------------------------------ formats
def reference_input(dataset: str, record: dict, eos_token: str = "</s>") -> str:
    if dataset == "cqa":
        letters = "abcde"
        choices = "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(record["choices"]))
        return record["question"] + "\nAnswer Choices:\n" + choices
    if dataset in ("esnli", "anli1"):
        return eos_token.join([record["premise"], record["hypothesis"]])
    return record["input"]


def reference_label(dataset: str, record: dict) -> str:
    if dataset == "cqa":
        return record["answer"]
    if dataset in ("esnli", "anli1"):
        return NLI_NAMES[record["label"]]
    return record["label"]


def reference_prefixes(method: str) -> tuple[str, str]:
    """The official code: `task_prefix` (step-by-step) prefixes both streams; `standard` neither."""
    return ("predict: ", "explain: ") if method == "step_by_step" else ("", "")


def reference_tokens(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """`tokenizer(texts, max_length=..., truncation=True)["input_ids"]` (EOS appended by the tokenizer)."""
    return tokenizer(list(texts), max_length=max_length, truncation=True)["input_ids"]


# ------------------------------------------------------------------------------------------------ scoring
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
            ast.UAdd, ast.USub)


def is_plain_arithmetic(text: str) -> bool:
    """Whether Python would parse `text` as numbers, + - * /, unary signs and parentheses only."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            return False
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool)
                                               or not isinstance(node.value, (int, float))):
            return False
    return True


def reference_eval_equation(text: str) -> float:
    """The official `eval_equation`: `eval(text)`, `nan` on any error; non-arithmetic strings are `nan` here
    without being evaluated (the official code would execute them)."""
    if not is_plain_arithmetic(text):
        return math.nan
    try:
        value = eval(compile(ast.parse(text.strip(), mode="eval"), "<equation>", "eval"), {"__builtins__": {}})
    except (ZeroDivisionError, OverflowError, ValueError):
        return math.nan
    return float(value)


def reference_accuracy(metric: str, targets: Sequence[str], predictions: Sequence[str]) -> float:
    """Percent correct as the official code scores decoded strings."""
    if metric.startswith("equation"):
        t = np.array([reference_eval_equation(x) for x in targets])
        p = np.array([reference_eval_equation(x) for x in predictions])
    else:
        t, p = np.array(list(targets), dtype=object), np.array(list(predictions), dtype=object)
    return 100.0 * float(np.mean(t == p))
