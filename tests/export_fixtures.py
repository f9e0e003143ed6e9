"""A small student saved as a training run directory, for the export tests.

The run directory is written with the trainer's own checkpointer (params, AdamW state, step, RNG), so export
has to find the params in a real train state and leave the optimizer state behind.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from sbs_jax.data.records import arith

# Inputs the tests serve: arithmetic word problems of the embedded task, plus edge cases (empty, long).
def sample_inputs(n: int = 10) -> list[str]:
    examples = arith.generate_splits(seed=0)["validation"]
    texts = [ex.input for ex in examples[: n - 2]]
    return texts + ["", " ".join(texts)]  # the last one is longer than max_input_length tokens


def train_vocab(directory: pathlib.Path, model_type: str = "unigram") -> pathlib.Path:
    from sbs_jax.data.vocab.sentencepiece_vocab import model_texts, train_vocabulary

    examples = arith.generate_splits(seed=0)["train"][:500]  # enough text for 200 pieces, and quick
    return train_vocabulary(model_texts(examples), directory, vocab_size=200, model_type=model_type)


def write_run_dir(run_dir: pathlib.Path, config, params, vocab: pathlib.Path, *, step: int = 7) -> pathlib.Path:
    """MODEL_DIR layout of ARCHITECTURE.md: model_config.json, vocab/, checkpoints/<step>/ (orbax)."""
    import jax
    import jax.numpy as jnp
    import optax

    from sbs_jax.train.checkpointing import Checkpointer
    from sbs_jax.train.state import TrainState

    run_dir.mkdir(parents=True)
    (run_dir / "model_config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "vocab").mkdir()
    (run_dir / "vocab" / "spiece.model").write_bytes(vocab.read_bytes())
    (run_dir / "config.gin").write_text(
        "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 12, 'rationales': 20}\n")
    params = jax.tree.map(jnp.asarray, params)
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                       opt_state=optax.adamw(1e-3).init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    checkpointer = Checkpointer(run_dir / "checkpoints", save_every=1, async_save=False)
    checkpointer.save(step, state, data_position=0, seed=0)
    checkpointer.close()
    return run_dir


def random_student(vocab: pathlib.Path, *, seed: int = 0):
    """A tiny T5 v1.1 whose weights are scaled up so greedy outputs differ from input to input."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import sentencepiece as spm

    from sbs_jax.model import Transformer, get_config

    pieces = spm.SentencePieceProcessor(model_file=str(vocab)).GetPieceSize()
    config = get_config("t5_1_1_tiny", vocab_size=pieces + 56, dtype="float32", dropout_rate=0.0)
    variables = Transformer(config).init(jax.random.key(seed), jnp.ones((1, 8), jnp.int32),
                                         jnp.ones((1, 4), jnp.int32))
    params = jax.tree.map(lambda p: np.asarray(p, np.float32), nn.unbox(variables["params"]))
    return config, params
