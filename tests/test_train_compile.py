"""The seqio-free compile path shared by the trainer and the benchmark."""
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from sbs_jax import partitioning
from sbs_jax.model import Transformer, get_config
from sbs_jax.train import compile as compile_lib, objective, optim, state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("modules", ["sbs_jax.train.compile", "bench.ours"])
def test_import_needs_no_seqio_or_tensorflow(modules):
    code = (f"import sys, {modules}; "
            "assert 'seqio' not in sys.modules and 'tensorflow' not in sys.modules, "
            "sorted(m for m in ('seqio', 'tensorflow') if m in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]


def _stream(rng, batch, enc_len, dec_len, vocab):
    targets = rng.integers(2, vocab, size=(batch, dec_len)).astype(np.int32)
    return {"encoder_input_tokens": rng.integers(2, vocab, size=(batch, enc_len)).astype(np.int32),
            "decoder_input_tokens": np.pad(targets[:, :-1], [(0, 0), (1, 0)]),
            "decoder_target_tokens": targets, "decoder_loss_weights": np.ones((batch, dec_len), np.float32)}


def test_compiled_step_is_sharded_donating_and_trains():
    cfg = get_config("t5_1_1_tiny", vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                     dropout_rate=0.0, dtype="float32")
    model = Transformer(cfg)
    mesh, rules = partitioning.make_mesh(data=-1, model=1), partitioning.get_rules("data_parallel")
    opt = optim.OptimizerConfig(name="adamw", learning_rate=1e-2, schedule="constant")
    tx = optim.make_optimizer(opt)
    shardings, abstract = compile_lib.state_shardings(model, tx, mesh, rules)
    rng = np.random.default_rng(0)
    batch = {"label": _stream(rng, 8, 6, 3, 64), "rationale": _stream(rng, 8, 6, 5, 64)}
    batch_abstract = compile_lib.abstract_batch(batch, mesh)
    assert batch_abstract["rationale"]["decoder_target_tokens"].shape == (8, 5)
    compiled = compile_lib.compile_train_step(model, tx, objective.ObjectiveConfig(alpha=0.5), optim.make_schedule(opt),
                                              1, mesh, rules, shardings, abstract, batch_abstract)
    state = state_lib.create_state(model, tx, mesh, rules, 0, shardings)
    global_batch = jax.device_put(batch, partitioning.data_sharding(mesh))
    old_params = state.params
    losses = []
    for _ in range(3):
        state, metrics = compiled(state, global_batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 3 and losses[-1] < losses[0]
    # The state is donated: the first step consumed the buffers it was given.
    assert jax.tree.leaves(old_params)[0].is_deleted()
    assert state.params["token_embedder"]["embedding"].sharding == shardings.params["token_embedder"]["embedding"]
    assert "per device: arguments" in compile_lib.memory_summary(compiled)
