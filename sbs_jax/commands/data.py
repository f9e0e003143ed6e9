"""`sbs data check`: per-split counts, teacher parse failures, teacher accuracy and token lengths.

    sbs data check --data_dir D [--dataset NAME] [--spiece_model spiece.model] [--json]

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
    args = parser.parse_args(argv)
    try:
        names = args.dataset or _found_datasets(args.data_dir)
        vocabulary = None
        if args.spiece_model:
            from sbs_jax.data.vocab import sentencepiece_vocab as vocab
            vocabulary = vocab.load_vocabulary(args.spiece_model)
        reports = {name: report.dataset_report(datasets.load_splits(name, args.data_dir), vocabulary) for name in names}
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
