"""Training batch cutting (sbs_jax.train.batch_cutting): the cut, loss and gradients
equal to full-length padding, the multi-process agreement, config errors, and Trainer runs with and without
bucketing that train identically."""
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax.model import Transformer, get_config
from sbs_jax.commands import gin_utils
from sbs_jax.train import batch_cutting as lb, checkpointing, decode_batching, evaluation, inputs
from sbs_jax.train import objective as objective_lib, optim, trainer

# Longer than arith needs (its inputs reach 35 tokens, labels 2, rationales 11), so batches have padding to cut.
LENGTHS = {"inputs": 96, "targets": 8, "rationales": 32}
TINY = dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0,
            dtype="float32")
GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    from sbs_jax import tasks

    tasks.register_arith_tasks(vocab_cache_dir=str(tmp_path_factory.mktemp("arith_vocab")))


@pytest.fixture(scope="module")
def arith_batches(arith):
    """Six unpacked arith_sbs training batches of 8, padded to LENGTHS."""
    it = inputs.train_batches("arith_sbs", task_feature_lengths=LENGTHS, batch_size=8, seed=0,
                              streams=("label", "rationale"))
    return [next(it) for _ in range(6)]


def _stream(enc_lengths, dec_lengths, enc_len, dec_len, seed):
    """A synthetic stream whose rows have the given real lengths (tokens 1..9, 0 = padding)."""
    rng = np.random.default_rng(seed)
    rows = len(enc_lengths)
    enc = np.where(np.arange(enc_len) < np.asarray(enc_lengths)[:, None], rng.integers(1, 10, (rows, enc_len)), 0)
    tgt = np.where(np.arange(dec_len) < np.asarray(dec_lengths)[:, None], rng.integers(1, 10, (rows, dec_len)), 0)
    dec_in = np.pad(tgt, [(0, 0), (1, 0)])[:, :-1]
    return {"encoder_input_tokens": enc.astype(np.int32), "decoder_input_tokens": dec_in.astype(np.int32),
            "decoder_target_tokens": tgt.astype(np.int32), "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def _assert_cut_is_exact(full, cut):
    """Kept columns equal the full batch's; the dropped ones held nothing a kept position sees."""
    for s, features in full.items():
        for k, v in features.items():
            length = cut[s][k].shape[1]
            np.testing.assert_array_equal(cut[s][k], v[:, :length], err_msg=f"{s}/{k}")
            if k == "decoder_input_tokens" and length < v.shape[1]:
                # Column `length` holds the last target shifted right; it feeds only its own (dropped) position.
                np.testing.assert_array_equal(v[:, length:length + 1], features["decoder_target_tokens"][
                    :, length - 1:length])
                assert not v[:, length + 1:].any(), f"{s}/{k}"
            else:
                assert not v[:, length:].any(), f"{s}/{k} lost a real column"


def test_cut_picks_smallest_bucket_per_group():
    assert decode_batching.bucket_lengths(96, 8) == (8, 16, 32, 64, 96)
    batch = {"label": _stream([5, 17, 0], [2, 3, 1], 96, 32, 0),
             "rationale": _stream([6, 18, 0], [9, 16, 0], 96, 32, 1)}
    assert lb.needed_lengths(batch) == {"encoder": 18, "label": 3, "rationale": 16}
    assert lb.full_lengths(batch) == {"encoder": 96, "label": 32, "rationale": 32}
    lengths = lb.choose_lengths(lb.needed_lengths(batch), lb.full_lengths(batch), 8)
    # 18 -> 32 (the fused objective needs one encoder length for both streams), 3 -> 8, 16 exactly fits 16.
    assert lengths == {"encoder": 32, "label": 8, "rationale": 16}
    cut = lb.cut_batch(batch, lengths)
    assert cut["label"]["encoder_input_tokens"].shape == cut["rationale"]["encoder_input_tokens"].shape == (3, 32)
    assert cut["label"]["decoder_target_tokens"].shape == (3, 8)
    assert cut["rationale"]["decoder_input_tokens"].shape == (3, 16)
    _assert_cut_is_exact(batch, cut)
    # A row as long as the padding keeps the full length; an all-empty batch gets the smallest bucket.
    long = {"label": _stream([96], [32], 96, 32, 2)}
    assert lb.choose_lengths(lb.needed_lengths(long), lb.full_lengths(long), 8) == {"encoder": 96, "label": 32}
    empty = {"label": _stream([0], [0], 96, 32, 3)}
    assert lb.choose_lengths(lb.needed_lengths(empty), lb.full_lengths(empty), 8) == {"encoder": 8, "label": 8}


def test_bucket_lengths_with_a_step():
    assert lb.train_bucket_lengths(1024, 16) == (16, 32, 64, 128, 256, 512, 1024)
    assert lb.train_bucket_lengths(200, 16, step=32) == (16, 32, 64, 96, 128, 160, 192, 200)
    assert lb.train_bucket_lengths(8, 16, step=32) == (8,)
    assert lb.train_bucket_lengths(40, 8, step=8) == (8, 16, 24, 32, 40)
    # CQA's ~72-token inputs: 96 with a step of 32, 128 with powers of two.
    assert lb.choose_lengths({"encoder": 72}, {"encoder": 1024}, 16, 32) == {"encoder": 96}
    assert lb.choose_lengths({"encoder": 72}, {"encoder": 1024}, 16) == {"encoder": 128}
    assert lb.choose_lengths({"label": 5}, {"label": 256}, 16, 32) == {"label": 16}
    with pytest.raises(ValueError, match="step=0"):
        lb.train_bucket_lengths(64, 16, step=0)


def test_cut_of_real_arith_batches(arith_batches):
    cutter = lb.BatchCutter(min_length=4)
    combinations = 6 * 2 * 4  # buckets (4, ..., 64, 96), (4, 8), (4, 8, 16, 32)
    seen = set()
    for batch in arith_batches:
        cut = cutter(batch)
        _assert_cut_is_exact(batch, cut)
        needed, got = lb.needed_lengths(batch), lb.full_lengths(cut)
        for group, length in got.items():
            buckets = decode_batching.bucket_lengths(lb.full_lengths(batch)[group], 4)
            # The smallest bucket that holds the longest row of the batch.
            assert length == min(b for b in buckets if b >= needed[group]), group
        seen.add(lb.shape_key(cut))
    assert cutter.kept < cutter.padded and len(seen) <= combinations
    assert lb.shape_key(cut) != lb.shape_key(batch)


def test_bad_batches_fail_clearly():
    batch = {"label": _stream([3], [2], 16, 8, 0)}
    with pytest.raises(ValueError, match=r"label/.*neither an encoder_\* nor a decoder_\*"):
        lb.needed_lengths({"label": {**batch["label"], "weird": np.zeros((1, 4))}})
    with pytest.raises(ValueError, match=r"rationale/encoder_input_tokens has length 32, other 'encoder'"):
        lb.full_lengths({**batch, "rationale": _stream([3], [2], 32, 8, 1)})
    with pytest.raises(ValueError, match="'label' needs 9 tokens, more than its padded length 8"):
        lb.choose_lengths({"label": 9}, {"label": 8}, 4)


def test_processes_agree_on_the_longest_rows(monkeypatch):
    from jax.experimental import multihost_utils

    def no_collective(_):
        raise AssertionError("one process needs no collective")
    monkeypatch.setattr(multihost_utils, "process_allgather", no_collective)
    assert lb.agree_lengths({"encoder": 5, "label": 2}) == {"encoder": 5, "label": 2}

    other = {"encoder": 40, "label": 1, "rationale": 20}  # the second process's needed lengths
    calls = []

    def allgather(mine):  # process_allgather's stacking of two processes' [groups] vectors
        calls.append(mine)
        return np.stack([mine, np.asarray([other[n] for n in sorted(other)], np.int32)])
    mine = {"encoder": 18, "label": 3, "rationale": 16}
    assert lb.agree_lengths(mine, allgather) == {"encoder": 40, "label": 3, "rationale": 20}
    np.testing.assert_array_equal(calls[0], [18, 3, 16])  # sorted group names: one fixed order everywhere

    # The cutter cuts this process's rows to what the longest rows anywhere need.
    batch = {"label": _stream([5, 18], [2, 3], 96, 32, 0), "rationale": _stream([6, 18], [9, 16], 96, 32, 1)}
    cut = lb.BatchCutter(min_length=8, allgather=allgather)(batch)
    assert lb.full_lengths(cut) == {"encoder": 64, "label": 8, "rationale": 32}
    _assert_cut_is_exact(batch, cut)


@pytest.fixture(scope="module")
def tiny_model():
    model = Transformer(get_config("t5_1_1_tiny", **TINY))
    params = jax.jit(model.init)(jax.random.key(1), jnp.ones((2, 8), jnp.int32), jnp.ones((2, 4), jnp.int32))
    return model, params["params"]


@pytest.mark.parametrize("fused", [pytest.param(False, marks=pytest.mark.slow), True])  # ~18 s each
def test_cut_batch_has_full_batch_loss_and_gradients(arith_batches, tiny_model, fused):
    full = arith_batches[0]
    cut = lb.BatchCutter(min_length=4)(full)
    assert lb.full_lengths(cut)["encoder"] < LENGTHS["inputs"] and lb.full_lengths(cut)["label"] < 8
    model, params = tiny_model
    obj = objective_lib.ObjectiveConfig(alpha=0.5, fused=fused)

    def run(batch):
        fn = lambda p: objective_lib.loss_fn(model, p, batch, jax.random.key(0), obj, enable_dropout=False)  # noqa: E731
        return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
    (loss_f, m_f), grads_f = run(full)
    (loss_c, m_c), grads_c = run(cut)
    np.testing.assert_allclose(float(loss_c), float(loss_f), rtol=1e-5)
    for k in ("label/loss", "rationale/loss", "label/accuracy", "rationale/num_tokens", "num_examples"):
        np.testing.assert_allclose(float(m_c[k]), float(m_f[k]), rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_f)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_config_errors_and_gin_macro():
    model = get_config("t5_1_1_tiny", **TINY)
    common = dict(model_dir="/tmp/x", mixture_or_task_name="arith_sbs", task_feature_lengths=LENGTHS,
                  train_steps=1, batch_size=8, model=model)
    with pytest.raises(ValueError, match=r"pack=True \(PACK\) and cut_batches=True \(LENGTH_BUCKETS\)"):
        trainer.TrainConfig(**common, pack=True, cut_batches=True)
    with pytest.raises(ValueError, match="min_bucket_length: expected a positive integer"):
        trainer.TrainConfig(**common, cut_batches=True, min_bucket_length=0)
    with pytest.raises(ValueError, match="bucket_step: expected a positive integer or None, got 0"):
        trainer.TrainConfig(**common, cut_batches=True, bucket_step=0)

    files = [str(GIN_DIR / f) for f in ("models/t5_1_1_tiny.gin", "runs/step_by_step.gin", "datasets/arith.gin")]
    gin_utils.parse(files, ["MODEL_DIR = '/tmp/unused'"], search_paths=[str(GIN_DIR)])
    assert gin_utils.build("TrainConfig").cut_batches is False
    gin_utils.parse(files, ["MODEL_DIR = '/tmp/unused'", "LENGTH_BUCKETS = True",
                            "TrainConfig.min_bucket_length = 8", "TrainConfig.bucket_step = 32"],
                    search_paths=[str(GIN_DIR)])
    config = gin_utils.build("TrainConfig")
    assert config.cut_batches is True and (config.min_bucket_length, config.bucket_step) == (8, 32)
    # The paper recipe pads like the official code (to the batch's longest example, here up to a power of 2).
    gin_utils.parse([str(GIN_DIR / "runs/paper_t5_1_1_base.gin"), str(GIN_DIR / "datasets/cqa.gin")],
                    ["MODEL_DIR = '/tmp/unused'", "INITIAL_CHECKPOINT_PATH = '/ckpt'", "TASK_REGISTRATIONS = []"],
                    search_paths=[str(GIN_DIR)])
    assert gin_utils.build("TrainConfig").cut_batches is True
    # The old field names still work (deprecated aliases), in Python and in gin.
    assert trainer.TrainConfig(**common, length_buckets=True).cut_batches is True
    assert evaluation.DecodeConfig(length_bucketing=False).length_sorted_batches is False
    assert evaluation.DecodeConfig().length_sorted_batches is True
    gin_utils.parse(files, ["MODEL_DIR = '/tmp/unused'", "TrainConfig.length_buckets = True"],
                    search_paths=[str(GIN_DIR)])
    assert gin_utils.build("TrainConfig").cut_batches is True


def _train(tmp_path, name, **extra):
    config = trainer.TrainConfig(
        model_dir=str(tmp_path / name), mixture_or_task_name="arith_sbs", task_feature_lengths=LENGTHS,
        train_steps=6, batch_size=8, model=get_config("t5_1_1_tiny", **TINY),
        optimizer=optim.OptimizerConfig(learning_rate=3e-3), objective=objective_lib.ObjectiveConfig(alpha=0.5),
        log_every=1, validation_split=None, test_split=None, save_every=6, tensorboard=False, seed=4, **extra)
    trainer.train(config)
    lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["split"] == "train"], checkpointing.load_params(tmp_path / name, step=6)[1]


@pytest.mark.slow  # two runs, 3-4 train-step compilations; 105 s on 2 shared CPU cores (load ~4)
def test_trainer_with_buckets_trains_like_full_padding(arith, tmp_path, capsys):
    full, params_full = _train(tmp_path, "full")
    capsys.readouterr()
    # arith's inputs all need 33-35 tokens, so power-of-two buckets would give one shape; steps of 1 from 4 cut
    # the encoder to each batch's own length (33, 34 or 35 at seed 4) and labels to 4.
    bucketed, params_cut = _train(tmp_path, "bucketed", cut_batches=True, min_bucket_length=4, bucket_step=1)
    out = capsys.readouterr().out
    compiled = re.findall(r"train step compiled for lengths (encoder \d+, label \d+, rationale \d+)", out)
    # More than one shape (the cut happened), at most one per bucket combination, each compiled once.
    assert 1 < len(compiled) <= 6 and len(set(compiled)) == len(compiled)
    assert all(not c.startswith("encoder 96") for c in compiled)
    kept = float(re.search(r"batches kept ([\d.]+) % of the padded token positions", out).group(1))
    assert 0 < kept < 100
    assert [x["step"] for x in bucketed] == [x["step"] for x in full] == list(range(1, 7))
    for a, b in zip(bucketed, full):
        for k in ("loss", "label/loss", "rationale/loss", "label/num_tokens", "rationale/num_tokens",
                  "grad_norm", "num_examples"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5, err_msg=f"step {a['step']} {k}")
    for x, y in zip(jax.tree.leaves(params_cut), jax.tree.leaves(params_full)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
