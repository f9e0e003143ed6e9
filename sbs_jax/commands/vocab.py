"""`sbs vocab train`: a SentencePiece vocabulary with T5's ids from a dataset's or a text file's text."""
from __future__ import annotations

import argparse
import sys

from sbs_jax import errors, paths
from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib


def _task_texts(args) -> list[str]:
    """Inputs, labels and rationales of a dataset's train split (all splits when it has no train)."""
    from sbs_jax.data.records import datasets

    datasets.check_name(args.dataset)  # unknown names fail here, before asking for --data_dir
    data = datasets.load_splits(args.dataset, args.data_dir, seed=args.data_seed)
    splits = {s: d.examples for s, d in data.items()}
    chosen = ["train"] if "train" in splits else sorted(splits)
    print(f"vocabulary text: {args.dataset} splits {chosen}", file=sys.stderr)
    return vocab_lib.model_texts(ex for s in chosen for ex in splits[s])


@errors.command("sbs vocab")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sbs vocab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a SentencePiece model (T5 ids) from a dataset's or a file's text")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="cqa, esnli, anli1, svamp (with --data_dir) or arith (embedded)")
    source.add_argument("--text_file", help="plain text, one example per line")
    train.add_argument("--data_dir", help="data dir in the official layout")
    train.add_argument("--output_dir", required=True, help="writes <output_dir>/spiece.model")
    train.add_argument("--vocab_size", type=int, default=8000)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    train.add_argument("--data_seed", type=int, default=0, help="generator seed of a generated dataset (arith)")
    args = parser.parse_args(argv)
    try:
        if args.text_file:
            texts = paths.read_utf8(args.text_file, "--text_file").splitlines()
        else:
            texts = _task_texts(args)
        path = vocab_lib.train_vocabulary(texts, args.output_dir, vocab_size=args.vocab_size, seed=args.seed,
                                model_type=args.model_type)
    except (ValueError, OSError) as e:
        print(f"sbs vocab: error: {e}", file=sys.stderr)
        return 2
    vocab = vocab_lib.load_vocabulary(path)
    print(f"wrote {path} ({vocab.vocab_size} pieces, from {len(texts)} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
