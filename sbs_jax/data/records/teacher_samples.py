"""The several-rationales layout: every teacher completion drawn for an example, one JSON line per example.

`<name>/llm/<split>_samples.jsonl`, line i (1-based) belongs to example i of `<name>_<split>.json`:

    {"completions": ["<raw completion 1>", "<raw completion 2>", ...]}

Raw completions, parsed like the official `llm/<split>_CoT_<i>.json` files (which hold one completion per
example and keep that meaning). `sbs teacher generate` writes this file beside the majority-vote CoT files;
users may write it by hand. Every problem is a `DataError` naming the file and line.
"""
from __future__ import annotations

import json

from etils import epath

from sbs_jax.data.records.formats import DataError
from sbs_jax.data.records.data_dir import read_json_lines

SUFFIX = "_samples.jsonl"


def samples_path(llm_dir, split: str) -> epath.Path:
    return epath.Path(llm_dir) / f"{split}{SUFFIX}"


def read_samples(path) -> list[list[str]]:
    """The completions of every example, in example order; each line must be `{"completions": [str, ...]}`
    with at least one completion."""
    out = []
    for lineno, row in read_json_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or "completions" not in row:
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{where}: expected an object {{\"completions\": [\"...\", ...]}}, got {got}")
        completions = row["completions"]
        if not isinstance(completions, list) or not completions:
            raise DataError(f"{where}: 'completions' must be a non-empty list of strings, got {completions!r:.80}")
        for j, text in enumerate(completions):
            if not isinstance(text, str):
                raise DataError(f"{where}: completion {j} is {type(text).__name__}, expected a string")
        out.append(completions)
    return out


def samples_text(samples) -> str:
    """The file's text for `samples` (a list of completion lists, one per example)."""
    return "".join(json.dumps({"completions": list(c)}, ensure_ascii=False) + "\n" for c in samples)
