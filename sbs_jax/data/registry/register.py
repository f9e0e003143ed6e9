"""Registering rationale tasks in the SeqIO registry, in the variants the paper compares.

One call registers `<name>_sbs`, `<name>_sbs_llm`, `<name>_ft` and `<name>_distill` (see
`preprocessors.VARIANTS`) from JSON lines (`register_jsonl_task`), TFDS (`register_tfds_task`), any SeqIO
DataSource (`register_source_task`) or in-memory examples (`register_examples_task`). Re-registering a name
replaces it. Every function is gin-configurable. The commands (`sbs train`, `sbs eval`, sweeps, quickstart)
call `register_tasks()` after parsing their gin files; `runs/train.gin` and `runs/eval.gin` bind its
`registrations` to the macro `TASK_REGISTRATIONS`, which a dataset file sets to its registration calls. Programs
of your own do the same: parse the gin files, call `register_tasks()`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gin
import seqio
from etils import epath
from absl import logging

from sbs_jax.data.scoring import metrics
from sbs_jax.data.registry import preprocessors
from sbs_jax.data.records import data_dir as records
from sbs_jax.data.registry import memory_source as sources
from sbs_jax.data.registry import splits as splits_lib
from sbs_jax.data.registry import rationale_filters as filters_lib
from sbs_jax.data.registry import rationale_rows
from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib
from sbs_jax.data.records.data_dir import DataError, Example, Rationale, SplitData

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
    train_fraction: float | None = None  # fraction of the train split kept (data-size studies); None: unknown
    label_prefix: str = preprocessors.PREDICT_PREFIX
    rationale_prefix: str = preprocessors.EXPLAIN_PREFIX
    prefix_style: str = "ours"
    selection: Mapping[str, Any] | None = None  # how split_data was selected (mode, fraction, seed, carve-out)
    rationale_sampling: str = "one_per_epoch"  # rationale_rows.SAMPLING_MODES
    # Rows per train example of the source (rationale_rows); None: one each (the source rows are the examples).
    train_rows: Any = None

    def settings(self) -> dict[str, Any]:
        """What a run on this task was given: variant, prefixes, the example selection settings and, for
        in-memory tasks, the rationale sampling, filters and what each filter removed per split."""
        out = {"variant": self.variant, "label_source": self.label_source, "prefix_style": self.prefix_style,
               "label_prefix": self.label_prefix,
               "rationale_prefix": self.rationale_prefix if self.paired else None, **(self.selection or {})}
        counts = {s: d.filter_counts for s, d in sorted((self.split_data or {}).items()) if d.filter_counts}
        if counts:
            out["rationale_filter_counts"] = counts
        return out

    def picks_rationales(self, split: str) -> bool:
        """Whether training on `split` picks one of several rationales per example each epoch."""
        return (split == rationale_rows.TRAIN_SPLIT and self.rationale_sampling == "one_per_epoch"
                and self.train_rows is not None and int(max(self.train_rows, default=1)) > 1)

    def source_examples(self, split: str) -> list[Example]:
        """The rows the task's source serves for `split` (one per (example, rationale) on the train split)."""
        examples = self.split_data[split].examples
        return rationale_rows.rows(examples)[0] if split == rationale_rows.TRAIN_SPLIT else examples


_TASK_INFO: dict[str, TaskInfo] = {}


def get_task_info(name: str) -> TaskInfo:
    if name not in _TASK_INFO:
        known = ", ".join(sorted(_TASK_INFO)) or "none"
        raise ValueError(f"task {name!r} was not registered by sbs_jax (registered: {known})")
    return _TASK_INFO[name]


def check_rationales(task_name: str, split: str, max_unparsed_fraction: float) -> str | None:
    """For a step-by-step run: a task whose `split` has no teacher rationale at all, or more than
    `max_unparsed_fraction` unparsed teacher outputs, is a DataError (training would silently become
    finetuning). Returns a one-line note with the unparsed count when some are missing, else None."""
    info = _TASK_INFO.get(task_name)
    data = (info.split_data or {}).get(split) if info else None
    if data is None or not data.examples:
        return None  # a source sbs_jax did not read itself: nothing recorded to check
    total, missing = len(data.examples), data.without_rationale
    if not data.has_teacher:
        folder = data.source.rsplit("/", 1)[0] if data.source.endswith(".json") else None
        where = f"{folder}/llm/{split}_CoT_0.json, ..." if folder else f"teacher outputs for {data.source}"
        raise DataError(f"task {task_name!r} trains step-by-step but split {split!r} has no teacher rationales: "
                        f"{where} not found; make them with `sbs teacher generate` (docs/teacher.md), or train "
                        f"the `_ft` variant")
    if missing == total:
        raise DataError(f"task {task_name!r} trains step-by-step but none of the {total} teacher outputs of split "
                        f"{split!r} ({data.source}) gave a rationale; check the files or the parser")
    if missing > max_unparsed_fraction * total:
        raise DataError(f"task {task_name!r}: {missing} of {total} teacher outputs of split {split!r} "
                        f"({100.0 * missing / total:.1f} %) have no usable rationale, more than the limit "
                        f"{100.0 * max_unparsed_fraction:.1f} % (TrainConfig.max_unparsed_fraction); fix the "
                        "teacher outputs or raise the limit")
    if missing:
        return (f"note: {task_name} {split}: {missing} of {total} teacher outputs ({100.0 * missing / total:.1f} %) "
                "have no usable rationale; those examples train the label stream only")
    return None


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
                         split_data: Mapping[str, SplitData] | None = None, prefix_style: str = "ours",
                         selection_settings: Mapping[str, Any] | None = None,
                         rationale_sampling: str = "one_per_epoch", train_rows=None) -> list[str]:
    """Register `<name>_<variant>` tasks over any SeqIO DataSource; returns the task names.

    Field names say where the source keeps the model input, the gold label, the teacher rationale ("" or
    absent = no rationale: that row's rationale stream has zero loss weight) and, optionally, the teacher's
    label (used by `sbs_llm`/`distill`; gold where it is empty). Integer labels map through `label_names`.
    `prefix_style` (`preprocessors.PREFIX_STYLES`): `ours` prefixes every variant's inputs, `official` only the
    step-by-step variants' (as the official code). `selection_settings` records how `split_data` was selected.
    `rationale_sampling` / `train_rows`: see `rationale_rows` (set by `register_examples_task`).
    """
    rationale_rows.check_sampling(rationale_sampling)
    if metric not in metrics.METRICS:
        raise ValueError(f"metric must be one of {sorted(metrics.METRICS)}, got {metric!r}")
    unknown = [v for v in variants if v not in preprocessors.VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {VARIANT_NAMES}")
    if prefix_style not in preprocessors.PREFIX_STYLES:
        raise ValueError(f"prefix_style must be one of {preprocessors.PREFIX_STYLES}, got {prefix_style!r}")
    vocabulary = vocab_lib.load_vocabulary(vocabulary)
    fields = dict(input_field=input_field, label_field=label_field, rationale_field=rationale_field,
                  teacher_label_field=teacher_label_field, label_names=label_names)
    canonical = fields == dict(input_field="input", label_field="label", rationale_field="rationale",
                               teacher_label_field="teacher_label", label_names=None)
    names = []
    for variant in variants:
        paired, label_source = preprocessors.VARIANTS[variant]
        label_prefix, rationale_prefix = preprocessors.task_prefixes(variant, prefix_style)
        if paired and rationale_field is None:
            raise ValueError(f"variant {variant!r} needs rationales; set rationale_field")
        steps = [] if canonical else [_bind(preprocessors.map_fields, **fields)]
        steps += [_bind(preprocessors.stream_features, paired=paired, label_source=label_source,
                        label_prefix=label_prefix, rationale_prefix=rationale_prefix),
                  seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                  seqio.preprocessors.append_eos_after_trim]
        task_name = f"{name}_{variant}"
        seqio.TaskRegistry.remove(task_name)
        seqio.TaskRegistry.add(task_name, source=source, preprocessors=steps,
                               output_features=output_features(vocabulary, paired),
                               postprocess_fn=metrics.postprocess, metric_fns=[metrics.METRICS[metric]],
                               shuffle_buffer_size=shuffle_buffer_size)
        _TASK_INFO[task_name] = TaskInfo(
            task_name, name, variant, paired, label_source, metric, split_data, label_prefix=label_prefix,
            rationale_prefix=rationale_prefix, prefix_style=prefix_style,
            selection=None if selection_settings is None else dict(selection_settings),
            rationale_sampling=rationale_sampling, train_rows=train_rows)
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
                           seed: int = 0, selection: str = "ours", prefix_style: str = "ours",
                           rationale_sampling: str = "one_per_epoch",
                           rationale_filters=None) -> list[str]:
    """Register tasks over in-memory examples (after the seeded validation carve-out / train subset).

    `selection`: `ours` (carve-out, then subset; `splits.plan_splits`) or `official` (subset with `seed` as the
    run, then the carve-out; `selection.official_plan`). `prefix_style`: see `register_source_task`.
    `rationale_sampling`: how training reads several rationales per example (`rationale_rows`).
    `rationale_filters`: which rationales to keep, a dict of `rationale_filters.RationaleFilters` fields (gin:
    `{'agree_with_gold': True}`; None keeps everything). Filters run after the selection, on every split.
    """
    rationale_rows.check_sampling(rationale_sampling)
    filters = filters_lib.RationaleFilters.from_setting(rationale_filters)
    data = {s: v if isinstance(v, SplitData) else _from_examples(name, s, list(v)) for s, v in splits.items()}
    for s, d in data.items():
        records.check_examples(d.examples, d.source or f"{name}:{s}")
    planned = splits_lib.plan_splits({s: d.examples for s, d in data.items()},
                                     valid_from_train=valid_from_train, train_fraction=train_fraction,
                                     seed=seed, where=name, selection=selection)
    split_data = {s: _restat(data.get(s) or data["train"], s, ex, metric) for s, ex in planned.items()}
    if filters.active:
        vocabulary = vocab_lib.load_vocabulary(vocabulary)
        count = _token_counter(vocabulary) if filters.max_tokens is not None else None
        split_data = {s: filters_lib.apply_filters(d, filters, metric, count_tokens=count, task=name)
                      for s, d in split_data.items()}
        for s, d in sorted(split_data.items()):
            if d.filter_counts:
                print(f"note: {name} {s}: {filters_lib.describe(d.filter_counts)}", flush=True)
    for s, d in sorted(split_data.items()):
        if d.has_teacher:
            logging.info("%s:%s: %d examples, %d without a usable rationale (label stream only)%s", name, s,
                         len(d.examples), d.without_rationale, "" if d.teacher_accuracy is None else
                         f", teacher accuracy {d.teacher_accuracy:.2f}%")
        else:
            logging.info("%s:%s: %d examples, no teacher outputs", name, s, len(d.examples))
    source, train_rows = {}, None
    for s, d in split_data.items():
        if not d.examples:
            raise DataError(f"{name} {s}: no examples left (rationale filters with without_rationale='drop')")
        if s == rationale_rows.TRAIN_SPLIT:
            source[s], train_rows = rationale_rows.rows(d.examples)
        else:
            source[s] = d.examples
    largest = max(len(ex) for ex in source.values())
    names = register_source_task(
        name, sources.InMemoryDataSource(source, groups=None if train_rows is None else {"train": train_rows}),
        vocabulary=vocabulary, metric=metric, variants=variants,
        teacher_label_field="teacher_label", shuffle_buffer_size=max(1, min(largest, MAX_SHUFFLE_BUFFER)),
        split_data=split_data, prefix_style=prefix_style,
        selection_settings={"selection": selection, "train_fraction": train_fraction, "seed": seed,
                            "valid_from_train": valid_from_train, "rationale_sampling": rationale_sampling,
                            "rationale_filters": filters.settings()},
        rationale_sampling=rationale_sampling, train_rows=train_rows)
    for task in names:
        _TASK_INFO[task] = dataclasses.replace(_TASK_INFO[task], train_fraction=float(train_fraction))
    return names


def _token_counter(vocabulary):
    """Token counts with EOS of texts under `vocabulary` (SentencePiece batched where it can)."""
    def count(texts):
        ids = vocabulary.encode_batch(list(texts)) if hasattr(vocabulary, "encode_batch") else [
            vocabulary.encode(t) for t in texts]
        return [len(x) + 1 for x in ids]
    return count


def _from_examples(name: str, split: str, examples: list[Example]) -> SplitData:
    """A bare list of examples carries its own rationales: the split has teacher outputs when any example has
    one, and those without one count as unparsed (as a teacher file's would)."""
    candidates = [c for ex in examples for c in ex.candidates()]
    with_rationale = sum(bool(c.text) for c in candidates)
    return SplitData(name, split, examples, has_teacher=with_rationale > 0,
                     parse_failures=len(candidates) - with_rationale if with_rationale else 0,
                     source=f"{name}:{split}", has_teacher_labels=any(c.teacher_label for c in candidates))


def _restat(parent: SplitData, split: str, examples: list[Example], metric: str) -> SplitData:
    """Teacher statistics of a (carved or subsampled) split, recounted from its own examples."""
    has = parent.has_teacher
    failures = sum(not c.text for ex in examples for c in ex.candidates()) if has else 0
    correct = sum(bool(c.teacher_label) and metrics.label_matches(metric, ex.label, c.teacher_label)
                  for ex in examples for c in ex.candidates()) if has else 0
    return SplitData(parent.dataset, split, examples, has, failures, correct, parent.source,
                     parent.has_teacher_labels)


@gin.configurable(module="sbs_jax.data")
def register_jsonl_task(name: str, files: Mapping[str, str], *, vocabulary, input_field: str = "input",
                        label_field: str = "label", rationale_field: str = "rationale",
                        teacher_label_field: str | None = None, metric: str = "exact_match",
                        variants: Sequence[str] = VARIANT_NAMES, valid_from_train: float | None = None,
                        train_fraction: float = 1.0, seed: int = 0, selection: str = "ours",
                        prefix_style: str = "ours", rationale_sampling: str = "one_per_epoch",
                        rationale_filters=None) -> list[str]:
    """Register a rationale task from JSON lines, one file per split: `{"train": "train.jsonl", ...}`.

    Each line is an object with the input, label and rationale fields (names configurable). A null, empty
    or absent rationale is counted as missing (label stream only); a missing input or label is an error.
    The rationale field may hold a list of rationales (several per example; then a teacher label field, if
    named, holds a list of the same length). `rationale_sampling`, `rationale_filters`: see
    `register_examples_task`.
    """
    if not files:
        raise DataError(f"task {name!r}: no files given (expected {{split: path.jsonl}})")
    splits = {}
    for split, path in files.items():
        path = epath.Path(path)  # local or gs://
        examples = []
        for lineno, row in records.read_json_lines(path):
            where = f"{path}:{lineno}"
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            text = {f: _text_field(row, f, where, required=True) for f in (input_field, label_field)}
            candidates = _jsonl_rationales(row, rationale_field, teacher_label_field, where)
            examples.append(Example(input=text[input_field], label=text[label_field]).with_candidates(candidates))
        data = SplitData(name, split, examples, has_teacher=True, source=str(path),
                         has_teacher_labels=teacher_label_field is not None)
        splits[split] = _restat(data, split, examples, metric)
    return register_examples_task(name, splits, vocabulary=vocabulary, metric=metric, variants=variants,
                                  valid_from_train=valid_from_train, train_fraction=train_fraction, seed=seed,
                                  selection=selection, prefix_style=prefix_style,
                                  rationale_sampling=rationale_sampling, rationale_filters=rationale_filters)


def _jsonl_rationales(row: dict, rationale_field: str, teacher_label_field: str | None, where: str):
    """The line's rationales as `Rationale`s: one from a string (or none), several from a list."""
    value = row.get(rationale_field)
    if not isinstance(value, list):
        label = _text_field(row, teacher_label_field, where, required=False) if teacher_label_field else ""
        return [Rationale(_text_field(row, rationale_field, where, required=False), label)]
    if not value:
        raise DataError(f"{where}: field {rationale_field!r} is an empty list; expected rationale strings "
                        "(or null for none)")
    labels = [""] * len(value)
    if teacher_label_field and row.get(teacher_label_field) is not None:
        labels = row[teacher_label_field]
        if not isinstance(labels, list) or len(labels) != len(value):
            raise DataError(f"{where}: field {teacher_label_field!r} must be a list of {len(value)} labels, one "
                            f"per rationale of {rationale_field!r}, got {labels!r:.80}")
    out = []
    for j, (text, label) in enumerate(zip(value, labels)):
        one = {"r": text, "l": label}
        out.append(Rationale(_text_field(one, "r", f"{where}: {rationale_field}[{j}]", required=False),
                             _text_field(one, "l", f"{where}: {teacher_label_field}[{j}]", required=False)))
    return out


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
                       splits: Mapping[str, str] | Sequence[str] | None = None, rationale_sampling: str | None = None,
                       rationale_filters=None, **fields) -> list[str]:
    """Register tasks over a TFDS dataset (`"name/config:version"`); `fields` as in register_source_task.

    With `rationale_filters` or `rationale_sampling` set, the splits are read into memory (in file order) and
    registered through `register_examples_task` (a rationale field may then hold a list of strings: several
    rationales per example); otherwise the tasks stream from TFDS as they always did.
    """
    source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits)
    if rationale_filters is None and rationale_sampling is None:
        return register_source_task(name, source, vocabulary=vocabulary, **fields)
    from sbs_jax.data.registry import tfds_examples

    examples, metric = tfds_examples.read(name, source, fields)
    return register_examples_task(name, examples, vocabulary=vocabulary, metric=metric,
                                  variants=fields.get("variants", VARIANT_NAMES),
                                  prefix_style=fields.get("prefix_style", "ours"),
                                  rationale_sampling=rationale_sampling or "one_per_epoch",
                                  rationale_filters=rationale_filters)


@gin.configurable(module="sbs_jax.data")
def register_tasks(registrations: Sequence[Sequence[str]] = ()) -> list[str]:
    """Gin-callable form: bind `registrations = [@my/register_jsonl_task(), ...]`; gin runs each
    registration when this is called, and this returns the names they registered."""
    return [name for names in registrations for name in names]
