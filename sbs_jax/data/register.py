"""Registering rationale tasks in the SeqIO registry, in the variants the paper compares.

One call registers `<name>_sbs`, `<name>_sbs_llm`, `<name>_ft` and `<name>_distill` (see
`preprocessors.VARIANTS`) from JSON lines (`register_jsonl_task`), TFDS (`register_tfds_task`), any SeqIO
DataSource (`register_source_task`) or in-memory examples (`register_examples_task`). Re-registering a name
replaces it. Every function is gin-configurable; `register_tasks(registrations=[@reg/register_jsonl_task()])`
is the gin-callable form (a training binary calls `register_tasks()` after parsing its gin files).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Sequence

import gin
import seqio
from absl import logging

from sbs_jax.data import metrics, preprocessors, records, sources, splits as splits_lib, vocab as vocab_lib
from sbs_jax.data.records import DataError, Example, SplitData

VARIANT_NAMES: tuple[str, ...] = tuple(preprocessors.VARIANTS)
DEFAULT_SHUFFLE_BUFFER = 10_000
MAX_SHUFFLE_BUFFER = 65_536


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What sbs-jax knows about a registered task beyond what seqio stores."""
    name: str
    base: str                   # dataset / task family name, e.g. "svamp"
    variant: str                # sbs | sbs_llm | ft | distill
    paired: bool                # both streams (label and rationale) in every example
    label_source: str           # gold | teacher (label stream on every split; evaluation is always on gold)
    metric: str                 # key of metrics.METRICS
    split_data: Mapping[str, SplitData] | None = None  # in-memory sources: examples and teacher statistics
    # The seeded share of train kept at registration (splits.plan_splits); None: the source was registered
    # without a fraction (TFDS / DataSource tasks cannot subsample). Sweeps check their cell's fraction here.
    train_fraction: float | None = None


_TASK_INFO: dict[str, TaskInfo] = {}


def get_task_info(name: str) -> TaskInfo:
    if name not in _TASK_INFO:
        known = ", ".join(sorted(_TASK_INFO)) or "none"
        raise ValueError(f"task {name!r} was not registered by sbs_jax (registered: {known})")
    return _TASK_INFO[name]


def get_vocabulary(task_name: str):
    """The vocabulary of a registered task or mixture (its `inputs` feature's)."""
    return seqio.get_mixture_or_task(task_name).output_features["inputs"].vocabulary


def output_features(vocabulary, paired: bool) -> dict[str, seqio.Feature]:
    features = {"inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
                "targets": seqio.Feature(vocabulary, add_eos=True)}
    if paired:
        features["rationale_inputs"] = seqio.Feature(vocabulary, add_eos=True, required=True)
        features["rationales"] = seqio.Feature(vocabulary, add_eos=True)
    return features


@gin.configurable(module="sbs_jax.data")
def register_source_task(name: str, source: seqio.DataSource, *, vocabulary, metric: str = "exact_match",
                         variants: Sequence[str] = VARIANT_NAMES, input_field: str = "input",
                         label_field: str = "label", rationale_field: str | None = "rationale",
                         teacher_label_field: str | None = None, label_names: Sequence[str] | None = None,
                         shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
                         split_data: Mapping[str, SplitData] | None = None) -> list[str]:
    """Register `<name>_<variant>` tasks over any SeqIO DataSource; returns the task names.

    Field names say where the source keeps the model input, the gold label, the teacher rationale ("" or
    absent = no rationale: that row's rationale stream has zero loss weight) and, optionally, the teacher's
    label (used by `sbs_llm`/`distill`; gold where it is empty). Integer labels map through `label_names`.
    """
    if metric not in metrics.METRICS:
        raise ValueError(f"metric must be one of {sorted(metrics.METRICS)}, got {metric!r}")
    unknown = [v for v in variants if v not in preprocessors.VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {VARIANT_NAMES}")
    vocabulary = vocab_lib.load_vocabulary(vocabulary)
    fields = dict(input_field=input_field, label_field=label_field, rationale_field=rationale_field,
                  teacher_label_field=teacher_label_field, label_names=label_names)
    canonical = fields == dict(input_field="input", label_field="label", rationale_field="rationale",
                               teacher_label_field="teacher_label", label_names=None)
    names = []
    for variant in variants:
        paired, label_source = preprocessors.VARIANTS[variant]
        if paired and rationale_field is None:
            raise ValueError(f"variant {variant!r} needs rationales; set rationale_field")
        steps = [] if canonical else [_bind(preprocessors.map_fields, **fields)]
        steps += [_bind(preprocessors.stream_features, paired=paired, label_source=label_source),
                  seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                  seqio.preprocessors.append_eos_after_trim]
        task_name = f"{name}_{variant}"
        seqio.TaskRegistry.remove(task_name)
        seqio.TaskRegistry.add(task_name, source=source, preprocessors=steps,
                               output_features=output_features(vocabulary, paired),
                               postprocess_fn=metrics.postprocess, metric_fns=[metrics.METRICS[metric]],
                               shuffle_buffer_size=shuffle_buffer_size)
        _TASK_INFO[task_name] = TaskInfo(task_name, name, variant, paired, label_source, metric, split_data)
        names.append(task_name)
    return names


def _bind(fn, **kwargs):
    def preprocessor(dataset):
        return fn(dataset, **kwargs)
    preprocessor.__name__ = fn.__name__
    return preprocessor


@gin.configurable(module="sbs_jax.data")
def register_examples_task(name: str, splits: Mapping[str, SplitData | Sequence[Example]], *, vocabulary,
                           metric: str = "exact_match", variants: Sequence[str] = VARIANT_NAMES,
                           valid_from_train: float | None = None, train_fraction: float = 1.0,
                           seed: int = 0) -> list[str]:
    """Register tasks over in-memory examples (after the seeded validation carve-out / train subset)."""
    data = {s: v if isinstance(v, SplitData) else SplitData(name, s, list(v), source=f"{name}:{s}")
            for s, v in splits.items()}
    for s, d in data.items():
        records.check_examples(d.examples, d.source or f"{name}:{s}")
    planned = splits_lib.plan_splits({s: d.examples for s, d in data.items()},
                                     valid_from_train=valid_from_train, train_fraction=train_fraction,
                                     seed=seed, where=name)
    split_data = {s: _restat(data.get(s) or data["train"], s, ex, metric) for s, ex in planned.items()}
    for s, d in sorted(split_data.items()):
        if d.has_teacher:
            logging.info("%s:%s: %d examples, %d without a usable rationale (label stream only)%s", name, s,
                         len(d.examples), d.parse_failures, "" if d.teacher_accuracy is None else
                         f", teacher accuracy {d.teacher_accuracy:.2f}%")
        else:
            logging.info("%s:%s: %d examples, no teacher outputs", name, s, len(d.examples))
    largest = max(len(ex) for ex in planned.values())
    names = register_source_task(
        name, sources.InMemoryDataSource(planned), vocabulary=vocabulary, metric=metric, variants=variants,
        teacher_label_field="teacher_label", shuffle_buffer_size=max(1, min(largest, MAX_SHUFFLE_BUFFER)),
        split_data=split_data)
    for task_name in names:
        _TASK_INFO[task_name] = dataclasses.replace(_TASK_INFO[task_name], train_fraction=float(train_fraction))
    return names


def _restat(parent: SplitData, split: str, examples: list[Example], metric: str) -> SplitData:
    """Teacher statistics of a (carved or subsampled) split, recounted from its own examples."""
    has = parent.has_teacher
    failures = sum(not ex.rationale for ex in examples) if has else 0
    correct = sum(bool(ex.teacher_label) and metrics.label_matches(metric, ex.label, ex.teacher_label)
                  for ex in examples) if has else 0
    return SplitData(parent.dataset, split, examples, has, failures, correct, parent.source,
                     parent.has_teacher_labels)


@gin.configurable(module="sbs_jax.data")
def register_jsonl_task(name: str, files: Mapping[str, str], *, vocabulary, input_field: str = "input",
                        label_field: str = "label", rationale_field: str = "rationale",
                        teacher_label_field: str | None = None, metric: str = "exact_match",
                        variants: Sequence[str] = VARIANT_NAMES, valid_from_train: float | None = None,
                        train_fraction: float = 1.0, seed: int = 0) -> list[str]:
    """Register a rationale task from JSON lines, one file per split: `{"train": "train.jsonl", ...}`.

    Each line is an object with the input, label and rationale fields (names configurable). A null, empty
    or absent rationale is counted as missing (label stream only); a missing input or label is an error.
    """
    if not files:
        raise DataError(f"task {name!r}: no files given (expected {{split: path.jsonl}})")
    splits = {}
    for split, path in files.items():
        path = pathlib.Path(path)
        examples, missing, correct = [], 0, 0
        for lineno, row in records.read_json_lines(path):
            where = f"{path}:{lineno}"
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            text = {f: _text_field(row, f, where, required=f in (input_field, label_field))
                    for f in (input_field, label_field, rationale_field, teacher_label_field) if f}
            ex = Example(input=text[input_field], label=text[label_field],
                         rationale=text.get(rationale_field, ""),
                         teacher_label=text.get(teacher_label_field, "") if teacher_label_field else "")
            missing += not ex.rationale
            correct += bool(ex.teacher_label) and metrics.label_matches(metric, ex.label, ex.teacher_label)
            examples.append(ex)
        splits[split] = SplitData(name, split, examples, has_teacher=True, parse_failures=missing,
                                  teacher_correct=correct, source=str(path),
                                  has_teacher_labels=teacher_label_field is not None)
    return register_examples_task(name, splits, vocabulary=vocabulary, metric=metric, variants=variants,
                                  valid_from_train=valid_from_train, train_fraction=train_fraction, seed=seed)


def _text_field(row: dict, field: str, where: str, required: bool) -> str:
    if field not in row or row[field] is None:
        if required:
            raise DataError(f"{where}: missing field {field!r} (the line has {sorted(row)})")
        return ""
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    value = str(value).strip()
    if required and not value:
        raise DataError(f"{where}: field {field!r} is empty")
    return value


@gin.configurable(module="sbs_jax.data")
def register_tfds_task(name: str, tfds_name: str, *, vocabulary, tfds_data_dir: str | None = None,
                       splits: Mapping[str, str] | Sequence[str] | None = None, **fields) -> list[str]:
    """Register tasks over a TFDS dataset (`"name/config:version"`); `fields` as in register_source_task."""
    source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits)
    return register_source_task(name, source, vocabulary=vocabulary, **fields)


@gin.configurable(module="sbs_jax.data")
def register_tasks(registrations: Sequence[Sequence[str]] = ()) -> list[str]:
    """Gin-callable form: bind `registrations = [@my/register_jsonl_task(), ...]`; gin runs each
    registration when this is called, and this returns the names they registered."""
    return [name for names in registrations for name in names]
