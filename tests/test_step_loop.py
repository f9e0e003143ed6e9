"""train/loop.py: the step loop's cadence (logging, validation, checkpoints) and compilation per batch shape,
with a fake compiled step (no model: fast)."""
import io

import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax.train import loop, progress


class FakeStep:
    """A 'compiled step' that adds the batch's sum to a scalar state and reports it as the loss."""

    def __init__(self):
        self.calls = 0

    def __call__(self, state, batch):
        self.calls += 1
        state = state + jnp.sum(batch["x"])
        return state, {"loss": state * 1.0, "num_examples": jnp.float32(batch["x"].shape[0])}


class Recorder:
    def __init__(self):
        self.written, self.saved, self.validated, self.compiled = [], [], [], []

    def write(self, step, metrics, split="train"):
        self.written.append((step, split, dict(metrics)))

    def validate(self, state, done):
        self.validated.append(done)
        return {"accuracy": float(done)}

    def save(self, done, state, metrics):
        self.saved.append((done, metrics))

    def compile_step(self, fake):
        def compile_step(local):
            self.compiled.append(local["label"]["x"].shape)
            return fake
        return compile_step


def batches(shapes):
    for i, rows in enumerate(shapes):
        x = np.full((rows,), i + 1.0, np.float32)
        yield {"label": {"x": x}}, {"x": jnp.asarray(x)}  # host batches are per stream


def run_loop(rec, *, start=0, end=10, log_every=3, eval_every=4, save_every=5, validate=True, shapes=None,
             varying_shapes=False, count_examples=False, sync_each_step=False):
    fake = FakeStep()
    bar = progress.ProgressBar(end, start, None if count_examples else 2, log_every=log_every, stream=io.StringIO(),
                               enabled=True)
    steps = loop.StepLoop(rec.compile_step(fake), cadence=loop.Cadence(end=end, log_every=log_every,
                                                                     eval_every=eval_every, save_every=save_every,
                                                                     validate=validate),
                          writer=rec, bar=bar, validate=rec.validate, save=rec.save, varying_shapes=varying_shapes,
                          count_examples=count_examples, sync_each_step=sync_each_step)
    result = steps.run(jnp.float32(0.0), start, batches(shapes or [2] * (end - start)))
    return fake, bar, result


def test_cadence_of_logging_validation_and_checkpoints():
    rec = Recorder()
    fake, bar, result = run_loop(rec)
    assert fake.calls == 10 and rec.compiled == [(2,)]  # one compilation for one batch shape
    train = [(s, m["loss"]) for s, split, m in rec.written if split == "train"]
    # Logged every 3rd step and at the end, each with that step's own loss: 2 * (1 + ... + step).
    assert train == [(s, float(2 * sum(range(1, s + 1)))) for s in (3, 6, 9, 10)]
    assert rec.validated == [4, 8, 10]
    # A checkpoint at every validation (with its metrics), every 5th step, and at the end, once each.
    assert rec.saved == [(4, {"accuracy": 4.0}), (5, None), (8, {"accuracy": 8.0}), (10, {"accuracy": 10.0})]
    assert result.last_validation == {"accuracy": 10.0} and result.num_compiled == 1
    assert float(result.state) == 2 * sum(range(1, 11))
    assert set(result.timing) == {"train_steps_per_s", "train_cpu_s_per_step"}
    assert bar.stream.getvalue().count("\n") == 4  # not a terminal: a line at each log step (3, 6, 9, 10)


def test_resumed_run_without_validation_saves_only_on_its_cadence():
    rec = Recorder()
    fake, _, result = run_loop(rec, start=5, end=12, eval_every=0, save_every=0, validate=False)
    assert fake.calls == 7 and rec.validated == [] and result.last_validation == {}
    assert rec.saved == [(12, None)]  # the end always saves
    assert [s for s, split, _ in rec.written] == [6, 9, 12]


def test_one_compilation_per_batch_shape_when_shapes_vary():
    rec = Recorder()
    _, _, result = run_loop(rec, end=6, shapes=[2, 4, 2, 4, 3, 2], varying_shapes=True)
    assert rec.compiled == [(2,), (4,), (3,)] and result.num_compiled == 3


def test_packed_runs_count_examples_after_the_first_step():
    rec = Recorder()
    _, bar, _ = run_loop(rec, end=6, log_every=2, shapes=[2, 3, 4, 5, 6, 7], count_examples=True,
                         sync_each_step=True)
    assert bar.examples == 3 + 4 + 5 + 6 + 7  # the first step (compilation) is not counted


@pytest.mark.parametrize("validate,eval_every,done,expected", [
    (True, 0, 5, False), (True, 0, 10, True), (True, 5, 5, True), (False, 5, 5, False), (False, 0, 10, False)])
def test_cadence_validates(validate, eval_every, done, expected):
    assert loop.Cadence(end=10, log_every=50, eval_every=eval_every, validate=validate).validates(done) is expected


def test_terminal_bar_redraws_at_most_every_redraw_s(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bar = progress.ProgressBar(100, 0, 8, log_every=50, stream=Tty(), enabled=True)
    for step in range(1, 101):
        now[0] += 0.01  # 100 steps/s: ten steps per 0.1 s
        bar.update(step)
    draws = bar.stream.getvalue().count("\r")
    assert 9 <= draws <= 12  # ~one redraw per 0.1 s over 1 s, the last step included
    assert bar.stream.getvalue().rstrip("\n").endswith("\033[K") and "100/100" in bar.stream.getvalue()
