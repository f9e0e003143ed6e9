"""`sbs data check`: per-split counts, teacher parse failures, teacher accuracy and token lengths.

    sbs data check --data_dir D [--dataset NAME] [--spiece_model spiece.model] [--json]
        [--teacher_outputs cot|samples] [--rationales_per_example K] [--agree_with_gold] [--drop_unparsed]
        [--min_rationale_words N] [--max_rationale_tokens N] [--drop_duplicate_rationales]
        [--without_rationale label_only|drop]

With any filter flag, the report adds per split what each rationale filter removed, as registering the task
with those `rationale_filters` would (docs/tasks.md).

Token lengths are counted under the given SentencePiece model (default: $SPIECE_MODEL), EOS included, with
the `predict: ` prefix on inputs; without a vocabulary the length columns are left out and the report says so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from etils import epath

from sbs_jax import errors
from sbs_jax.data.records import datasets
from sbs_jax.data.records import formats
from sbs_jax.data.records import report
from sbs_jax.data.records.data_dir import DataError


@errors.command("sbs data")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sbs data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a data dir and report its statistics")
    check.add_argument("--data_dir", help="data dir in the official layout")
    check.add_argument("--dataset", action="append",
                       help="cqa, esnli, anli1, svamp or arith (repeatable; default: all found in --data_dir)")
    check.add_argument("--spiece_model", default=os.environ.get("SPIECE_MODEL"),
                       help="SentencePiece model or HF tokenizer.json (file or its directory) for token lengths "
                            "(default: $SPIECE_MODEL)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    check.add_argument("--teacher_outputs", default="cot", choices=("cot", "samples"),
                       help="teacher files: llm/<split>_CoT_<i>.json (cot) or llm/<split>_samples.jsonl (samples)")
    check.add_argument("--rationales_per_example", type=int, default=1,
                       help="teacher completions drawn per problem (generated datasets: arith)")
    check.add_argument("--agree_with_gold", action="store_true", help="filter: keep rationales whose label is gold")
    check.add_argument("--drop_unparsed", action="store_true", help="filter: drop completions that did not parse")
    check.add_argument("--min_rationale_words", type=int, default=0, help="filter: drop shorter rationales")
    check.add_argument("--max_rationale_tokens", type=int, default=None,
                       help="filter: drop rationales longer than this many tokens with EOS (needs a vocabulary)")
    check.add_argument("--drop_duplicate_rationales", action="store_true",
                       help="filter: drop repeated rationales of one example")
    check.add_argument("--without_rationale", default="label_only", choices=("label_only", "drop"),
                       help="examples left without a rationale: train the label only, or drop them (train split)")
    args = parser.parse_args(argv)
    try:
        names = args.dataset or _found_datasets(args.data_dir)
        vocabulary = None
        if args.spiece_model:
            from sbs_jax.data.vocab import sentencepiece_vocab as vocab
            vocabulary = vocab.load_vocabulary(args.spiece_model)
        filters = _filters(args, vocabulary)
        reports = {}
        for name in names:
            splits = datasets.load_splits(name, args.data_dir, teacher_outputs=args.teacher_outputs,
                                          rationales_per_example=args.rationales_per_example)
            if filters is not None:
                splits = {s: filters(name, d) for s, d in splits.items()}
            reports[name] = report.dataset_report(splits, vocabulary)
    except (ValueError, OSError) as e:
        print(f"sbs data check: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        print("\n\n".join(report.format_report(name, r) for name, r in reports.items()))
        if vocabulary is None:
            print("\ntoken lengths: skipped (no vocabulary; pass --spiece_model or set SPIECE_MODEL)")
    return 0


def _filters(args, vocabulary):
    """(dataset, SplitData) -> filtered SplitData, or None without filter flags."""
    from sbs_jax.data.registry import rationale_filters

    filters = rationale_filters.RationaleFilters(
        agree_with_gold=args.agree_with_gold, drop_unparsed=args.drop_unparsed, min_words=args.min_rationale_words,
        max_tokens=args.max_rationale_tokens, drop_duplicates=args.drop_duplicate_rationales,
        without_rationale=args.without_rationale)
    if not filters.active:
        return None
    if filters.max_tokens is not None and vocabulary is None:
        raise DataError("--max_rationale_tokens counts tokens: pass --spiece_model (or set SPIECE_MODEL)")
    count = None
    if vocabulary is not None:
        count = lambda texts: [len(ids) + 1 for ids in report.encode_batch(vocabulary, list(texts))]  # noqa: E731

    def apply(name, data):
        metric = datasets.metric(name)
        return rationale_filters.apply_filters(data, filters, metric, count_tokens=count, task=name)
    return apply


def _found_datasets(data_dir: str | None) -> list[str]:
    if not data_dir:
        raise DataError(f"pass --data_dir (or {datasets.generated_names_hint()} for the embedded task)")
    root = epath.Path(data_dir)  # local or gs://
    if not root.is_dir():
        raise DataError(f"data dir {data_dir} does not exist")
    found = [d for d in formats.PAPER_DATASETS if (root / d).is_dir()]
    if not found:
        raise DataError(f"data dir {data_dir} holds none of the paper's datasets "
                        f"({', '.join(formats.PAPER_DATASETS)})")
    return found


if __name__ == "__main__":
    sys.exit(main())
