"""Benchmark shapes: the paper's CQA setting, a larger one, and small CPU configs.

The CQA token lengths below were measured from the shared data by `python -m bench.shapes --measure`
(see RESULTS.md for the date and tokenizer). The timed path only reads the constants: nothing here imports
seqio, TensorFlow or sentencepiece at module level (the GPU machines have none of them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import random

REPO = pathlib.Path(__file__).resolve().parents[1]

# Measured on CQA train (9,741 examples, teacher rationales parsed as in datasets/README.md) with a
# SentencePiece unigram vocabulary of 8,000 pieces trained on that same text (no T5 SentencePiece model
# exists offline). Lengths include the EOS token; inputs include the `predict: `/`explain: ` prefix.
# "batch_max" is the mean over shuffled batches of 64 of the longest example: what HF's dynamic padding
# (DataCollatorForSeq2Seq, as in the official code) pads each batch to.
CQA_MEASURED = {
    "tokenizer": "sentencepiece unigram, 8000 pieces, trained on CQA train inputs+labels+rationales",
    "examples": 9741,
    "rationale_missing": 0,
    "inputs": {"mean": 46.91, "p50": 46, "p95": 61, "max": 105, "batch_max": 71.84},
    "targets": {"mean": 2.59, "p50": 2, "p95": 4, "max": 7, "batch_max": 5.06},
    "rationales": {"mean": 30.23, "p50": 29, "p95": 39, "max": 74, "batch_max": 45.89},
}


@dataclasses.dataclass(frozen=True)
class BenchShape:
    """One benchmark setting: a model preset (plus overrides) and padded stream lengths."""
    name: str
    model: str                      # sbs_jax.model.get_config preset name
    batch: int                      # paired examples per step (each has a label and a rationale stream)
    inputs: int                     # encoder length (both streams)
    targets: int                    # label-stream decoder length
    rationales: int                 # rationale-stream decoder length
    overrides: tuple = ()           # (field, value) pairs for get_config, e.g. a smaller vocab on CPU

    def config_overrides(self) -> dict:
        return dict(self.overrides)


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


# Padded lengths: the measured batch maxima (72 / 5 / 46) rounded up to a multiple of 8, the same for the
# reference and for ours (the estimate was "about 64/8/64").
PAPER_LENGTHS = dict(inputs=_round_up(CQA_MEASURED["inputs"]["batch_max"], 8),
                     targets=_round_up(CQA_MEASURED["targets"]["batch_max"], 8),
                     rationales=_round_up(CQA_MEASURED["rationales"]["batch_max"], 8))
SHAPES = {
    "paper": BenchShape("paper", "t5_1_1_base", 64, **PAPER_LENGTHS),
    "large": BenchShape("large", "t5_1_1_large", 256, **PAPER_LENGTHS),
    # CPU (2 shared cores): same stream lengths, small models, the vocab cut so that the output projection
    # and the embedding gradient do not dominate a tiny model.
    "cpu_tiny": BenchShape("cpu_tiny", "t5_1_1_tiny", 8, **PAPER_LENGTHS, overrides=(("vocab_size", 4096),)),
    "cpu_small": BenchShape("cpu_small", "t5_1_1_small", 8, **PAPER_LENGTHS,
                            overrides=(("vocab_size", 8192), ("num_layers", 2))),
}


def get_shape(name: str) -> BenchShape:
    if name not in SHAPES:
        raise ValueError(f"unknown benchmark shape {name!r}; expected one of {sorted(SHAPES)}")
    return SHAPES[name]


# ---------------------------------------------------------------------------------------------------------
# Measurement (offline; not on the timed path).

def cqa_examples(data_dir: pathlib.Path) -> tuple[list[tuple[str, str, str]], int]:
    """(input, gold label, teacher rationale) triples, and how many teacher outputs did not parse."""
    src = data_dir / "cqa" / "cqa_train.json"
    rows = []
    with open(src) as f:
        for lineno, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{src}:{lineno}: not a JSON object ({e})") from None
    llm_dir = data_dir / "cqa" / "llm"
    files = sorted(llm_dir.glob("train_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    completions = [c for p in files for c in json.loads(p.read_text())]
    if len(completions) != len(rows):
        raise ValueError(f"{llm_dir}: {len(completions)} teacher outputs for {len(rows)} examples in {src}")
    out, unparsed = [], 0
    for row, completion in zip(rows, completions):
        choices = "\n".join(f"({'abcde'[i]}) {c}" for i, c in enumerate(row["choices"]))
        text = f"{row['question']}\nAnswer Choices:\n{choices}"
        head = completion.split("Q:")[0]
        if "So the answer is" in head:
            rationale = head.split("So the answer is")[0].strip()
        else:
            unparsed, rationale = unparsed + 1, ""
        out.append((text, row["answer"], rationale))
    return out, unparsed


def _stats(lengths: list[int], batch: int, seed: int) -> dict:
    ordered = sorted(lengths)
    shuffled = list(lengths)
    random.Random(seed).shuffle(shuffled)
    maxes = [max(shuffled[i:i + batch]) for i in range(0, len(shuffled) - batch + 1, batch)]
    return {
        "mean": round(sum(lengths) / len(lengths), 2),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[int(0.95 * (len(ordered) - 1))],
        "max": ordered[-1],
        "batch_max": round(sum(maxes) / len(maxes), 2),
    }


def cqa_token_lengths(data_dir: pathlib.Path, workdir: pathlib.Path, *, vocab_size: int = 8000):
    """Per-example token lengths (EOS included) of the four sequences a paired example has, and the number of
    teacher outputs that did not parse: {"inputs" (`predict: x`), "explain_inputs" (`explain: x`), "targets",
    "rationales"} -> lists in example order. Trains the SentencePiece model on CQA text first."""
    import sentencepiece as spm  # offline measurement only

    examples, unparsed = cqa_examples(data_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = workdir / "cqa_corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for ex in examples for t in ex if t) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(workdir / "cqa_spm"), vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=2, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(workdir / "cqa_spm.model"))

    def n(text: str) -> int:
        return len(sp.encode(text)) + 1  # + EOS

    lengths = {"inputs": [n("predict: " + x) for x, _, _ in examples],
               "explain_inputs": [n("explain: " + x) for x, _, _ in examples],
               "targets": [n(y) for _, y, _ in examples],
               "rationales": [n(r) for _, _, r in examples]}
    return lengths, unparsed, examples


def measure_cqa(data_dir: pathlib.Path, workdir: pathlib.Path, *, vocab_size: int = 8000,
                batch: int = 64, seed: int = 0) -> dict:
    """Train a SentencePiece model on CQA text and measure the three streams' token lengths."""
    lengths, unparsed, examples = cqa_token_lengths(data_dir, workdir, vocab_size=vocab_size)
    return {
        "tokenizer": f"sentencepiece unigram, {vocab_size} pieces, trained on CQA train inputs+labels+rationales",
        "examples": len(examples),
        "rationale_missing": unparsed,
        "inputs": _stats(lengths["inputs"], batch, seed),
        "targets": _stats(lengths["targets"], batch, seed),
        "rationales": _stats(lengths["rationales"], batch, seed),
        "whitespace_words": {
            "inputs": _stats([len(("predict: " + x).split()) for x, _, _ in examples], batch, seed),
            "rationales": _stats([len(r.split()) for _, _, r in examples], batch, seed),
        },
    }


def length_histogram(lengths: dict[str, list[int]], tokenizer: str) -> dict:
    """The joint per-example length histogram: {"fields": [...], "counts": [[l_1, ..., l_k, count], ...]}
    (one entry per distinct tuple of lengths, sorted), which keeps each example's lengths together."""
    fields = list(lengths)
    counts: dict[tuple, int] = {}
    for row in zip(*(lengths[f] for f in fields)):
        counts[row] = counts.get(row, 0) + 1
    return {"tokenizer": tokenizer, "examples": len(lengths[fields[0]]), "fields": fields,
            "counts": [list(k) + [v] for k, v in sorted(counts.items())]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure CQA token lengths")
    parser.add_argument("--data_dir", type=pathlib.Path, default=REPO.parent / "shared" / "datasets",
                        help="data dir in the official layout (default: ../shared/datasets beside the checkout)")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bench_shapes"))
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--histogram", type=pathlib.Path, default=None,
                        help="write the joint per-example length histogram here (bench/cqa_lengths.json)")
    args = parser.parse_args(argv)
    if args.histogram:
        lengths, _, _ = cqa_token_lengths(args.data_dir, args.workdir, vocab_size=args.vocab_size)
        tokenizer = f"sentencepiece unigram, {args.vocab_size} pieces, trained on CQA train inputs+labels+rationales"
        args.histogram.write_text(json.dumps(length_histogram(lengths, tokenizer), separators=(",", ":")) + "\n")
    elif args.measure:
        print(json.dumps(measure_cqa(args.data_dir, args.workdir, vocab_size=args.vocab_size), indent=1))
    else:
        for shape in SHAPES.values():
            print(shape)


if __name__ == "__main__":
    main()
