"""The loop's helpers: device prefetching in order, metrics read asynchronously equal to per-step reads."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax.train import feeding, progress


def test_prefetcher_keeps_order_and_places_every_batch():
    batches = iter([{"x": np.full((2,), i)} for i in range(7)])
    feed = feeding.DevicePrefetcher(batches, lambda b: jax.device_put(b["x"]), prepare=lambda b: {"x": b["x"] + 1},
                                    depth=3)
    got = list(feed)
    feed.close()
    assert [int(h["x"][0]) for h, _ in got] == list(range(1, 8))
    assert all(isinstance(d, jax.Array) and np.array_equal(np.asarray(d), h["x"]) for h, d in got)
    inline = list(feeding.DevicePrefetcher(iter([{"x": np.zeros(1)}] * 3), lambda b: b, depth=0))
    assert len(inline) == 3


def test_prefetcher_raises_the_producers_error():
    def broken():
        yield {"x": 1}
        raise RuntimeError("bad record at line 7")

    feed = feeding.DevicePrefetcher(broken(), lambda b: b, depth=2)
    assert next(feed) == ({"x": 1}, {"x": 1})
    with pytest.raises(RuntimeError, match="line 7"):
        next(feed)
    feed.close()


def test_single_process_never_waits_per_step():
    assert jax.process_count() == 1 and not feeding.step_sync_needed()


def test_async_metrics_equal_per_step_metrics():
    @jax.jit
    def step(x):
        x = x * 1.01 + 0.5
        return x, {"loss": jnp.sum(x), "num_examples": jnp.float32(3.0) + x[0] % 2}

    x, per_step, logged = jnp.arange(4.0), {}, progress.AsyncMetrics()
    seen = []
    for i in range(1, 10):
        x, metrics = step(x)
        per_step[i] = {k: float(v) for k, v in metrics.items()}  # the synchronous read
        if i > 1:
            logged.count_examples(metrics["num_examples"])
        if i % 3 == 0:
            logged.submit(i, metrics)
        seen += logged.ready()
    seen += logged.flush()
    assert [s for s, _, _ in seen] == [3, 6, 9]
    for s, shown, examples in seen:
        assert shown == per_step[s]
        counted = range(max(2, s - 2), s + 1)
        assert examples == sum(per_step[i]["num_examples"] for i in counted)
    assert logged.flush() == []


@pytest.mark.slow  # compiles the tiny step twice (~30 s on 2 shared cores)
def test_trainer_logs_what_a_per_step_read_gives(tmp_path):
    from sbs_jax import tasks
    from sbs_jax.model import get_config
    from sbs_jax.train import inputs, trainer

    tasks.register_arith_tasks(vocab_cache_dir=str(tmp_path / "vocab"))
    lengths = {"inputs": 48, "targets": 4, "rationales": 20}
    tiny = get_config("t5_1_1_tiny", vocab_size=512, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1)

    def config(name):
        return trainer.TrainConfig(model_dir=str(tmp_path / name), mixture_or_task_name="arith_sbs",
                                   task_feature_lengths=lengths, train_steps=6, batch_size=8, model=tiny,
                                   log_every=2, validation_split=None, test_split=None, save_every=100,
                                   tensorboard=False)

    summary = trainer.Trainer(config("run")).run()
    assert summary["train_steps_per_s"] > 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {x.pop("step"): x for x in lines if x.pop("split") == "train"}
    assert sorted(logged) == [2, 4, 6]

    # The same run, reading every step's metrics synchronously.
    t = trainer.Trainer(config("sync"))
    state, _ = t.initial_state()
    compiled, per_step = None, {}
    for step, local in zip(range(1, 7), t.train_batches(0)):
        compiled = compiled or t.compile_step(local)
        state, metrics = compiled(state, inputs.to_global(local, t.mesh))
        per_step[step] = {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}
    for step, shown in logged.items():
        assert shown == per_step[step], step
