"""Reading and validating a data dir in the official layout, and attaching parsed teacher outputs.

Layout (see the datasets README): `<name>/<name>_<split>.json` (JSON lines) and, optionally,
`<name>/llm/<split>_CoT_<i>.json` (JSON lists of raw teacher completions, concatenated in numeric order,
one per example) or `<name>/llm/<split>_samples.jsonl` (several completions per example,
`teacher_samples.py`; read with `teacher_outputs="samples"`). Every problem raises `DataError` naming the file, line or field and what was expected.
Data dirs may be local or `gs://...`: every path here is an `etils.epath.Path`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Iterable, Sequence

from sbs_jax import paths
from etils import epath

from sbs_jax.data.records import formats as formats_lib
from sbs_jax.data.scoring import metrics
from sbs_jax.data.records.formats import DataError  # noqa: F401  (re-exported: the data package's error type)


@dataclasses.dataclass(frozen=True)
class Rationale:
    """One teacher rationale of an example and the label its completion ended in ("" when unparsed)."""
    text: str
    teacher_label: str = ""


@dataclasses.dataclass(frozen=True)
class Example:
    """One example of a rationale task. `rationale`/`teacher_label` are "" when absent or unparsable.

    The one owner of the several-rationales contract: a single-rationale example (the paper layout) leaves
    `rationales` empty and is exactly what it always was; an example with several teacher rationales holds
    all of them in `rationales`, and `rationale`/`teacher_label` are its first (what evaluation shows).
    Build either with `with_candidates`; read either with `candidates()`."""
    input: str
    label: str
    rationale: str = ""
    teacher_label: str = ""
    rationales: tuple[Rationale, ...] = ()

    def candidates(self) -> tuple[Rationale, ...]:
        """Every rationale of the example (an unparsed one has empty text); none only after filtering."""
        return self.rationales or (Rationale(self.rationale, self.teacher_label),)

    def with_candidates(self, candidates) -> "Example":
        """This example holding `candidates` (one: the single-rationale form; none: no rationale)."""
        candidates = tuple(candidates)
        first = candidates[0] if candidates else Rationale("", "")
        return dataclasses.replace(self, rationale=first.text, teacher_label=first.teacher_label,
                                   rationales=candidates if len(candidates) > 1 else ())


@dataclasses.dataclass
class SplitData:
    """The examples of one split plus what was found about its teacher outputs."""
    dataset: str
    split: str
    examples: list[Example]
    has_teacher: bool = False       # teacher outputs exist for this split
    parse_failures: int = 0         # teacher outputs that did not parse
    teacher_correct: int = 0        # parsed teacher label equals gold (by the dataset's metric)
    source: str = ""                # file the examples came from
    has_teacher_labels: bool = True  # False: rationales came without teacher labels (no teacher accuracy)
    filter_counts: dict | None = None  # what the rationale filters removed (registry.rationale_filters)

    @property
    def num_samples(self) -> int:
        """Teacher rationales (parsed or not) over all examples: the examples' count when one each."""
        return sum(len(ex.rationales) or 1 for ex in self.examples)

    @property
    def without_rationale(self) -> int:
        """Examples with no usable rationale (they train the label stream only)."""
        return sum(not any(c.text for c in ex.candidates()) for ex in self.examples)

    @property
    def teacher_accuracy(self) -> float | None:
        """Percent of all teacher samples whose parsed label equals gold (unparsed ones count as wrong); with
        one sample per example, the percent of examples."""
        if not (self.has_teacher and self.has_teacher_labels and self.examples):
            return None
        return 100.0 * self.teacher_correct / self.num_samples


def read_json_lines(path) -> list[tuple[int, object]]:
    """(line number, parsed value) for each line; a malformed or blank line is an error naming it."""
    path = epath.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            raise DataError(f"{path}:{lineno}: blank line; expected one JSON object per line")
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); expected one "
                            "JSON object per line") from None
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def dataset_dir(data_dir, name: str) -> epath.Path:
    formats_lib.get_format(name)
    root = epath.Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist (expected <data_dir>/{name}/{name}_<split>.json)")
    path = root / name
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{path}: no folder for dataset {name!r} (data dir holds {found or 'nothing'})")
    return path


def list_splits(data_dir, name: str) -> list[str]:
    """Splits present for a dataset: the `<split>` of every `<name>/<name>_<split>.json`."""
    folder = dataset_dir(data_dir, name)
    splits = sorted(p.name[len(name) + 1:-len(".json")] for p in folder.glob(f"{name}_*.json"))
    if not splits:
        raise DataError(f"{folder}: no split files (expected {name}_<split>.json, e.g. {name}_train.json)")
    return splits


def _teacher_files(folder: epath.Path, split: str) -> list[epath.Path]:
    pattern = re.compile(rf"{re.escape(split)}_CoT_(\d+)\.json$")
    found = {}
    for p in (folder / "llm").glob(f"{split}_CoT_*.json"):
        m = pattern.match(p.name)
        if m:
            found[int(m.group(1))] = p
    missing = [i for i in range(len(found)) if i not in found]
    if missing:
        raise DataError(f"{folder / 'llm'}: teacher files for split {split!r} are not numbered 0..{len(found) - 1} "
                        f"(missing {split}_CoT_{missing[0]}.json)")
    return [found[i] for i in range(len(found))]


def read_teacher_outputs(files: Sequence[epath.Path]) -> list[str]:
    """Concatenation of the JSON lists of raw completions, in file order."""
    outputs = []
    for path in files:
        try:
            value = json.loads(paths.read_utf8(path, "teacher output file"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); expected a JSON list of "
                            "strings") from None
        if not isinstance(value, list):
            raise DataError(f"{path}: expected a JSON list of teacher completions, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise DataError(f"{path}: item {i} is {type(item).__name__}, expected a string")
        outputs.extend(value)
    return outputs


TEACHER_OUTPUTS = ("cot", "samples")


def read_split(data_dir, name: str, split: str, *, teacher_outputs: str = "cot") -> SplitData:
    """Examples of one split with parsed teacher rationales/labels where teacher files exist.

    teacher_outputs: "cot" reads the official `llm/<split>_CoT_<i>.json` (one completion per example);
    "samples" reads `llm/<split>_samples.jsonl` (several per example, `teacher_samples`)."""
    if teacher_outputs not in TEACHER_OUTPUTS:
        raise DataError(f"teacher_outputs={teacher_outputs!r}: expected one of {TEACHER_OUTPUTS}")
    fmt = formats_lib.get_format(name)
    folder = dataset_dir(data_dir, name)
    path = folder / f"{name}_{split}.json"
    if not path.is_file():
        raise DataError(f"{path}: split {split!r} does not exist for {name} (found splits: "
                        f"{', '.join(list_splits(data_dir, name))})")
    examples = []
    for lineno, record in read_json_lines(path):
        formats_lib.validate_record(fmt, record, f"{path}:{lineno}")
        examples.append(Example(input=fmt.format_input(record), label=fmt.gold_label(record)))
    data = SplitData(name, split, examples, source=str(path))
    if teacher_outputs == "samples":
        from sbs_jax.data.records import teacher_samples
        samples = teacher_samples.samples_path(folder / "llm", split)
        if samples.is_file():
            attach_teacher_samples(data, teacher_samples.read_samples(samples), fmt.parse_teacher, fmt.metric,
                                   where=str(samples))
        return data
    files = _teacher_files(folder, split)
    if files:
        attach_teacher(data, read_teacher_outputs(files), fmt.parse_teacher, fmt.metric,
                       where=f"{files[0].parent / (split + '_CoT_*.json')} ({len(files)} files)")
    return data


def attach_teacher(data: SplitData, outputs: Sequence[str], parse, metric: str, where: str) -> SplitData:
    """Parse raw teacher completions (one per example, same order) into rationales and teacher labels."""
    if len(outputs) != len(data.examples):
        raise DataError(f"{where}: {len(outputs)} teacher outputs for {len(data.examples)} examples in "
                        f"{data.source}; expected exactly one output per example, in the same order")
    parsed_examples, failures, correct = [], 0, 0
    for example, output in zip(data.examples, outputs):
        parsed = parse(output)
        if parsed is None:
            failures += 1
            parsed_examples.append(example)
            continue
        correct += metrics.label_matches(metric, example.label, parsed.label)
        parsed_examples.append(dataclasses.replace(example, rationale=parsed.rationale,
                                                   teacher_label=parsed.label))
    data.examples, data.has_teacher = parsed_examples, True
    data.parse_failures, data.teacher_correct = failures, correct
    return data


def attach_teacher_samples(data: SplitData, samples: Sequence[Sequence[str]], parse, metric: str,
                           where: str) -> SplitData:
    """Parse several raw completions per example (same order as the examples) into `Example.rationales`;
    `parse_failures`/`teacher_correct` count samples. One sample per example gives `attach_teacher`'s result."""
    if len(samples) != len(data.examples):
        raise DataError(f"{where}: {len(samples)} lines of teacher samples for {len(data.examples)} examples in "
                        f"{data.source}; expected exactly one line per example, in the same order")
    out, failures, correct = [], 0, 0
    for example, completions in zip(data.examples, samples):
        candidates = []
        for text in completions:
            parsed = parse(text)
            if parsed is None:
                failures += 1
                candidates.append(Rationale("", ""))
                continue
            correct += metrics.label_matches(metric, example.label, parsed.label)
            candidates.append(Rationale(parsed.rationale, parsed.label))
        out.append(example.with_candidates(candidates))
    data.examples, data.has_teacher = out, True
    data.parse_failures, data.teacher_correct = failures, correct
    return data


def check_examples(examples: Iterable[Example], where: str) -> None:
    """Examples must have a non-empty input and gold label (an empty target is never trained on)."""
    for i, ex in enumerate(examples):
        if not ex.input.strip():
            raise DataError(f"{where}: example {i} has an empty input")
        if not ex.label.strip():
            raise DataError(f"{where}: example {i} has an empty label")
