"""Packed training batches (sbs_jax.data.input_pipeline.packing): every example once in both streams, the row invariants,
the packed loss equal to the unpacked loss over the same examples, accumulation, resume, a Trainer run, and
config errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from sbs_jax.data.input_pipeline import feature_converter as fc
from sbs_jax.data.input_pipeline import packing
from sbs_jax.data.input_pipeline import pipeline
from sbs_jax.data.registry import register
from sbs_jax.model import Transformer, get_config
from sbs_jax.train import inputs, objective as objective_lib, optim, step as step_lib, trainer
from sbs_jax.train.state import TrainState

LENGTHS = {"inputs": 48, "targets": 4, "rationales": 20}  # room for every arith example (longest: 35, 2, 11)
TINY = dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0,
            dtype="float32")


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    from sbs_jax import tasks

    tasks.register_arith_tasks(vocab_cache_dir=str(tmp_path_factory.mktemp("arith_vocab")))
    return register.get_task_info("arith_sbs").split_data


def _segments(row_tokens, row_segments):
    """{segment id: tokens} of one packed row."""
    return {int(k): row_tokens[row_segments == k].tolist() for k in np.unique(row_segments) if k > 0}


def _unpacked_sequences(batch):
    """Per example: label inputs, label targets, rationale inputs, rationale targets (padding stripped),
    and whether the rationale is trained."""
    out = []
    for i in range(batch["label"]["encoder_input_tokens"].shape[0]):
        strip = lambda a: [int(t) for t in a[i] if t != 0]  # noqa: E731
        out.append((strip(batch["label"]["encoder_input_tokens"]), strip(batch["label"]["decoder_target_tokens"]),
                    strip(batch["rationale"]["encoder_input_tokens"]),
                    strip(batch["rationale"]["decoder_target_tokens"]),
                    bool(batch["rationale"]["decoder_loss_weights"][i].sum() > 0)))
    return out


def _check_row_invariants(rows):
    """Vectorised over rows: prefix layout, segment numbering, positions, shift, weights, stream ids."""
    for side, tokens in (("encoder", rows["encoder_input_tokens"]), ("decoder", rows["decoder_target_tokens"])):
        seg, pos = rows[f"{side}_segment_ids"], rows[f"{side}_positions"]
        valid = seg > 0
        n = valid.sum(1, keepdims=True)
        # Segments fill a prefix of the row; padding is 0 in every feature.
        np.testing.assert_array_equal(valid, np.arange(seg.shape[1])[None] < n)
        np.testing.assert_array_equal(tokens != 0, valid)
        assert (pos[~valid] == 0).all()
        prev = np.pad(seg, [(0, 0), (1, 0)])[:, :-1]
        new = valid & (seg != prev)
        # Numbered 1, 2, ... from each row's start; positions restart at 0 and count up by one.
        assert (seg[:, 0] == 1).all() and ((seg - prev)[valid] <= 1).all() and ((seg - prev)[valid] >= 0).all()
        assert (pos[new] == 0).all()
        prev_pos = np.pad(pos, [(0, 0), (1, 0)])[:, :-1]
        assert (pos[valid & ~new] == prev_pos[valid & ~new] + 1).all()
    np.testing.assert_array_equal(rows["encoder_segment_ids"].max(1), rows["decoder_segment_ids"].max(1))
    seg, tgt, inp = rows["decoder_segment_ids"], rows["decoder_target_tokens"], rows["decoder_input_tokens"]
    valid, starts = seg > 0, (seg > 0) & (rows["decoder_positions"] == 0)
    inner = valid & ~starts
    # Shifted right within each segment, BOS 0 at every segment start.
    assert (inp[starts] == 0).all() and (inp[~valid] == 0).all()
    np.testing.assert_array_equal(inp[:, 1:][inner[:, 1:]], tgt[:, :-1][inner[:, 1:]])
    np.testing.assert_array_equal(rows["decoder_loss_weights"], (tgt > 0).astype(np.int32))
    stream = rows["decoder_stream_ids"]
    assert np.isin(stream[valid], [1, 2]).all() and (stream[~valid] == 0).all()
    assert (stream[:, 1:][inner[:, 1:]] == stream[:, :-1][inner[:, 1:]]).all()  # one stream per segment


def test_every_example_once_per_epoch_in_both_streams(arith):
    # Rows straight from the packer (no drop_remainder batching): one epoch is every row.
    lengths = pipeline.sequence_lengths(LENGTHS, paired=True)
    both = ("label", "rationale")
    ds = seqio.get_mixture_or_task("arith_sbs").get_dataset(sequence_length=lengths, split="train",
                                                             shuffle=False, num_epochs=1)
    packed = list(packing.pack_streams(ds, packing.resolve_packed_lengths(lengths, None, both), both)
                  .batch(1024).as_numpy_iterator())
    rows = {k: np.concatenate([b[k] for b in packed]) for k in packed[0]}
    assert rows["encoder_input_tokens"].shape[1] == 96 and rows["decoder_target_tokens"].shape[1] == 24
    assert all(v.dtype == np.int32 for v in rows.values())
    _check_row_invariants(rows)

    unpacked = pipeline.get_train_dataset("arith_sbs", task_feature_lengths=LENGTHS, batch_size=4000,
                                          shuffle=False, num_epochs=1)
    expected = _unpacked_sequences(next(unpacked.as_numpy_iterator()))
    label_segments, rationale_segments = [], []
    for r in range(rows["encoder_input_tokens"].shape[0]):
        enc = _segments(rows["encoder_input_tokens"][r], rows["encoder_segment_ids"][r])
        dec = _segments(rows["decoder_target_tokens"][r], rows["decoder_segment_ids"][r])
        ids = _segments(rows["decoder_stream_ids"][r], rows["decoder_segment_ids"][r])
        for k in sorted(enc):
            (label_segments if ids[k][0] == 1 else rationale_segments).append((enc[k], dec[k]))
    # Data order is kept: the i-th label segment is example i's label stream, likewise for rationales.
    assert label_segments == [(e[0], e[1]) for e in expected]
    assert rationale_segments == [(e[2], e[3]) for e in expected if e[4]]
    omitted = sum(not e[4] for e in expected)
    assert omitted == arith["train"].parse_failures > 0
    assert len(label_segments) == 4000 and len(rationale_segments) == 4000 - omitted
    # Counted from the token lengths, as the pipeline logs it.
    token_lengths = pipeline._token_lengths(seqio.get_mixture_or_task("arith_sbs"), "train")
    assert packing.count_omitted_rationales(token_lengths["rationales"]) == omitted

    stats = packing.packed_stats(rows)
    assert stats["examples"] == 4000 and stats["rationale_segments"] == 4000 - omitted
    # Real tokens / row tokens; the unpacked batch of the same examples fills its rows far less.
    real_enc = sum(len(e[0]) + len(e[2]) * e[4] for e in expected)
    assert stats["encoder_fill"] == pytest.approx(real_enc / rows["encoder_input_tokens"].size)
    unpacked_fill = real_enc / (4000 * 2 * LENGTHS["inputs"])
    print(f"arith_sbs default rows {stats}; unpacked encoder fill {unpacked_fill:.3f}, "
          f"examples per row {stats['examples'] / stats['rows']:.2f}")
    assert stats["encoder_fill"] > unpacked_fill


def _same_examples(start, count, packed_lengths=None, streams=("label", "rationale")):
    """The unpacked paired batch and the packed rows of the same arith train examples."""
    task = seqio.get_mixture_or_task("arith_sbs")
    lengths = pipeline.sequence_lengths(LENGTHS, paired=True)
    ds = task.get_dataset(sequence_length=lengths, split="train", shuffle=False, num_epochs=1)
    keys = ("inputs", "targets", "rationale_inputs", "rationales")
    chosen = [{k: ex[k] for k in keys} for ex in ds.skip(start).take(count).as_numpy_iterator()]
    sub = tf.data.Dataset.from_generator(lambda: iter(chosen), output_signature={
        k: tf.TensorSpec([None], tf.int32) for k in keys})
    unpacked = fc.nest(next(fc.PairedFeatureConverter()(sub, lengths).batch(len(chosen)).as_numpy_iterator()))
    rows_len = packing.resolve_packed_lengths(lengths, packed_lengths, streams)
    packed_rows = list(packing.pack_streams(sub, rows_len, streams).as_numpy_iterator())
    packed = {k: np.stack([r[k] for r in packed_rows]) for k in packed_rows[0]}
    return unpacked, packed


def _failure_index(arith):
    return next(i for i, ex in enumerate(arith["train"].examples[:400]) if not ex.rationale)


@pytest.mark.slow  # ~45 s: value_and_grad of two layouts; test_every_example_once... keeps packing in the default suite
def test_packed_loss_and_gradients_equal_unpacked(arith):
    start = max(_failure_index(arith) - 4, 0)
    unpacked, packed = _same_examples(start, 9)  # includes an unparsed rationale
    assert (unpacked["rationale"]["decoder_loss_weights"].sum(1) == 0).sum() == 1
    assert packed["encoder_input_tokens"].shape[0] < 2 * 9  # rows hold several segments
    model = Transformer(get_config("t5_1_1_tiny", **TINY))
    params = model.init(jax.random.key(1), jnp.ones((2, 8), jnp.int32), jnp.ones((2, 4), jnp.int32))["params"]
    obj = objective_lib.ObjectiveConfig(rationale_weight=0.7)

    def run(batch):
        def fn(p):
            return objective_lib.loss_fn(model, p, batch, jax.random.key(0), obj, enable_dropout=False)
        return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

    (loss_u, m_u), grads_u = run(unpacked)
    (loss_p, m_p), grads_p = run({"packed": packed})
    np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
    for k in ("label/loss", "rationale/loss", "label/accuracy", "rationale/accuracy", "label/num_tokens",
              "rationale/num_tokens", "num_examples"):
        np.testing.assert_allclose(float(m_p[k]), float(m_u[k]), rtol=1e-5, err_msg=k)
    assert float(m_p["num_examples"]) == 9
    for s in ("label", "rationale"):
        np.testing.assert_allclose(
            float(objective_lib.token_counts(obj, {"packed": packed})[s]),
            float(objective_lib.token_counts(obj, unpacked)[s]))
    for a, b in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_u)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    # Label-only packing (finetuning on the label stream) equals the label-only unpacked loss.
    _, label_rows = _same_examples(start, 9, streams=("label",))
    assert set(np.unique(label_rows["decoder_stream_ids"])) == {0, 1}
    ft = objective_lib.ObjectiveConfig(mode="finetune")
    ft_loss = jax.jit(lambda b: objective_lib.loss_fn(model, params, b, jax.random.key(0), ft,
                                                      enable_dropout=False)[0])
    np.testing.assert_allclose(float(ft_loss({"packed": label_rows})), float(ft_loss(unpacked)), rtol=1e-5)


@pytest.mark.slow  # two train-step compilations
def test_accumulation_over_packed_rows_equals_full_batch(arith):
    _, packed = _same_examples(0, 24, packed_lengths={"inputs": 64, "targets": 24})
    rows = packed["encoder_input_tokens"].shape[0] // 2 * 2
    batch = {"packed": {k: v[:rows] for k, v in packed.items()}}
    model = Transformer(get_config("t5_1_1_tiny", **TINY))
    params = model.init(jax.random.key(1), jnp.ones((2, 8), jnp.int32), jnp.ones((2, 4), jnp.int32))["params"]
    opt = optim.OptimizerConfig(name="adamw", learning_rate=1e-3)
    tx = optim.make_optimizer(opt)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    out = {}
    for k in (1, 2):
        train_step = step_lib.make_train_step(model, tx, objective_lib.ObjectiveConfig(alpha=0.5),
                                              optim.make_schedule(opt), grad_accum_steps=k)
        out[k] = jax.jit(train_step)(state, batch)
    for key in ("loss", "label/loss", "rationale/loss", "num_examples", "grad_norm"):
        np.testing.assert_allclose(float(out[2][1][key]), float(out[1][1][key]), rtol=1e-5, err_msg=key)
    assert float(out[1][1]["num_examples"]) == packing.packed_stats(batch["packed"])["examples"]
    # Adam's first update is lr·g/(|g| + eps): gradients near eps amplify float rounding, so params agree to
    # 1 % of the learning rate (the gradients themselves agree to rtol 1e-5 through grad_norm above).
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out[1][0].params, out[2][0].params)
    assert max(jax.tree.leaves(diffs)) < 1e-5


@pytest.mark.slow  # ~30 s: two packed input shards read twice
def test_packed_input_resumes_and_keeps_shapes_across_shards(arith):
    def batches(start, shards):
        it = inputs.train_batches("arith_sbs", task_feature_lengths=LENGTHS, batch_size=8, seed=3,
                                  streams=("label", "rationale"), start_batch=start, num_input_shards=shards,
                                  pack=True, packed_lengths={"inputs": 64, "targets": 24})
        return [next(it) for _ in range(3)]
    full, resumed = batches(0, 2), batches(2, 2)
    assert set(full[0]) == {"packed"}
    for k, v in full[2]["packed"].items():
        np.testing.assert_array_equal(resumed[0]["packed"][k], v)
        assert v.shape == (8, 64 if k.startswith("encoder") else 24)


def test_bad_packing_configs_fail_clearly(arith):
    lengths = pipeline.sequence_lengths(LENGTHS, paired=True)
    both = ("label", "rationale")
    with pytest.raises(ValueError, match=r"packed_lengths\['targets'\] = 12 .*rationales\) = 20"):
        packing.resolve_packed_lengths(lengths, {"inputs": 96, "targets": 12}, both)
    with pytest.raises(ValueError, match=r"packed_lengths\['inputs'\] = 40 .*expected at least 48"):
        packing.resolve_packed_lengths(lengths, {"inputs": 40, "targets": 24}, both)
    # The label stream alone only needs the label target length.
    assert packing.resolve_packed_lengths(lengths, {"inputs": 48, "targets": 4}, ("label",)) == \
        {"inputs": 48, "targets": 4}
    with pytest.raises(ValueError, match=r"expected keys \['inputs', 'targets'\].*unknown \['rationales'\]"):
        packing.resolve_packed_lengths(lengths, {"inputs": 96, "targets": 24, "rationales": 20}, both)
    with pytest.raises(ValueError, match="packed_streams=.*'rationale'"):
        pipeline.get_train_dataset("arith_ft", task_feature_lengths=LENGTHS, batch_size=2, pack=True,
                                   packed_streams=("label", "rationale"))
    with pytest.raises(ValueError, match="packed_lengths is set but pack=False"):
        trainer.TrainConfig(model_dir="/tmp/x", mixture_or_task_name="arith_sbs", task_feature_lengths=LENGTHS,
                            train_steps=1, batch_size=2, model=get_config("t5_1_1_tiny", **TINY),
                            packed_lengths={"inputs": 96, "targets": 24})


@pytest.mark.slow  # compiles a train step and the decoders; ~1-2 min on 2 CPU cores
def test_trainer_runs_packed_on_arith(arith, tmp_path):
    config = trainer.TrainConfig(
        model_dir=str(tmp_path / "run"), mixture_or_task_name="arith_sbs", task_feature_lengths=LENGTHS,
        train_steps=6, batch_size=8, model=get_config("t5_1_1_tiny", **TINY),
        optimizer=optim.OptimizerConfig(learning_rate=3e-3), objective=objective_lib.ObjectiveConfig(fused=True),
        pack=True, packed_lengths={"inputs": 96, "targets": 24}, log_every=1, eval_every=0,
        test_split=None, eval_batch_size=400, save_every=3, tensorboard=False)
    summary = trainer.train(config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train] == list(range(1, 7))
    assert all(np.isfinite(x["loss"]) for x in train)
    assert train[-1]["loss"] < train[0]["loss"]
    # 8 rows of 96 input tokens hold more than 8 examples, and how many varies from step to step.
    assert all(x["num_examples"] > 8 for x in train) and len({x["num_examples"] for x in train}) > 1
    assert all(x["rationale/num_tokens"] > x["label/num_tokens"] for x in train)
    assert (tmp_path / "run" / "checkpoints" / "6").exists() and (tmp_path / "run" / "checkpoints" / "3").exists()
    val = summary["validation"]
    assert np.isfinite(val["label/loss"]) and np.isfinite(val["rationale/loss"])
    # The reported accuracy is the exact-match rate of the predictions file of every validation example.
    (path,) = (tmp_path / "run" / "predictions").glob("validation_step*.jsonl")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == val["num_examples"] == len(arith["validation"].examples)
    assert [r["input"] for r in rows] == [ex.input for ex in arith["validation"].examples]
    recount = 100.0 * sum(r["prediction"].strip() == r["gold"].strip() for r in rows) / len(rows)
    assert val["accuracy"] == pytest.approx(recount, abs=1e-9)
    assert [r["correct"] for r in rows] == [r["prediction"].strip() == r["gold"].strip() for r in rows]


def test_gin_macros_turn_packing_on():
    import pathlib

    from sbs_jax.commands import gin_utils

    gin_dir = pathlib.Path(__file__).resolve().parents[1] / "gin"
    files = [str(gin_dir / f) for f in ("models/t5_1_1_tiny.gin", "runs/step_by_step.gin", "datasets/arith.gin")]
    gin_utils.parse(files, ["MODEL_DIR = '/tmp/unused'", "PACK = True",
                            "PACKED_LENGTHS = {'inputs': 96, 'targets': 24}"], search_paths=[str(gin_dir)])
    config = gin_utils.build("TrainConfig")
    assert config.pack is True and config.packed_lengths == {"inputs": 96, "targets": 24}
    gin_utils.parse(files, ["MODEL_DIR = '/tmp/unused'"], search_paths=[str(gin_dir)])
    config = gin_utils.build("TrainConfig")
    assert config.pack is False and config.packed_lengths is None


def test_progress_bar_counts_examples_of_packed_steps(monkeypatch):
    import io

    from sbs_jax.train import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = progress.ProgressBar(3, 0, None, log_every=1, stream=out, enabled=True)
    now[0] = 10.0
    bar.update(1)  # the first step ends at 10 s (compilation); its examples are not counted
    assert "nan ex/s" in out.getvalue()
    now[0] = 12.0
    bar.update(3, examples=50.0)  # steps 2 and 3: 50 examples in 2 s
    assert bar.example_rate(3) == pytest.approx(25.0)
    assert "25.0 ex/s" in out.getvalue().splitlines()[-1]
    fixed = progress.ProgressBar(3, 0, 8, log_every=1, stream=io.StringIO(), enabled=True)
    now[0] = 20.0
    fixed.update(1)
    now[0] = 24.0
    fixed.update(3)
    assert fixed.example_rate(3) == pytest.approx(4.0)  # 2 steps of 8 rows in 4 s
