"""The embedded quickstart task `arith`: generated in memory, with a vocabulary trained from its text."""
from __future__ import annotations

from typing import Sequence

import gin

from sbs_jax.data.records import arith
from sbs_jax.data.registry import register
from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

ARITH_VOCAB_SIZE = 400


@gin.configurable(module="sbs_jax.tasks")
def register_arith_tasks(*, seed: int = 0, vocabulary=None, vocab_cache_dir: str | None = None,
                         vocab_size: int = ARITH_VOCAB_SIZE, train_fraction: float = 1.0,
                         variants: Sequence[str] = register.VARIANT_NAMES, rationales_per_example: int = 1,
                         rationale_sampling: str = "one_per_epoch", rationale_filters=None) -> list[str]:
    """Register `arith_sbs`, `arith_sbs_llm`, `arith_ft`, `arith_distill` (train 4,000 / validation 1,000 /
    test 2,000 generated problems; `train_fraction` keeps a seeded subset of train). `rationales_per_example`:
    teacher completions drawn per problem (1: the single-rationale task); `rationale_sampling`,
    `rationale_filters`: see `register.register_examples_task`.

    Without `vocabulary`, a SentencePiece model is trained deterministically from the train split's text
    and cached under `vocab_cache_dir` (default `$SBS_CACHE_DIR` or `~/.cache/sbs_jax`).
    """
    splits = arith.generate_split_data(seed=seed, rationales_per_example=rationales_per_example)
    if vocabulary is None:
        # BPE: on this small closed vocabulary it gives word-level pieces (~28 input tokens), where unigram
        # stops at ~180 mostly sub-word pieces and doubles the input length.
        vocabulary = vocab_lib.cached_vocabulary(vocab_lib.model_texts(splits["train"].examples),
                                                 vocab_size=vocab_size, seed=seed, cache_dir=vocab_cache_dir,
                                                 tag="arith", model_type="bpe")
    return register.register_examples_task("arith", splits, vocabulary=vocabulary, variants=variants,
                                           train_fraction=train_fraction, seed=seed,
                                           rationale_sampling=rationale_sampling,
                                           rationale_filters=rationale_filters)
