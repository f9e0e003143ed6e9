"""The step loop: host batches in, compiled steps out, and at their cadence train metrics logged, validation
run and checkpoints saved.

`StepLoop` knows no model or task: the trainer hands it how to compile a step for a batch shape, a feed of
`(host batch, device batch)` pairs, and what validating and saving mean. Its per-step Python is kept to a
dispatch and a few integer tests (issue #13: loop overhead <= 1 ms/step): metrics cross to the host only every
`log_every` steps and asynchronously (`progress.AsyncMetrics`), and the device is waited on per step only where
`feeding.step_sync_needed()` says so.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator, Mapping

import jax

from sbs_jax.train import batch_cutting, progress


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Which steps (counted as steps done, 1-based) log, validate and save.

    Train metrics every `log_every` and at `end`; validation (when `validate`) every `eval_every` (0 = end
    only) and at `end`; a checkpoint every `save_every` (0 = never), at every validation and at `end`.
    """
    end: int
    log_every: int
    eval_every: int = 0
    save_every: int = 0
    validate: bool = True

    def logs(self, done: int) -> bool:
        return done % self.log_every == 0 or done == self.end

    def validates(self, done: int) -> bool:
        return self.validate and (bool(self.eval_every and done % self.eval_every == 0) or done == self.end)

    def saves(self, done: int, validated: bool) -> bool:
        return validated or (self.save_every > 0 and done % self.save_every == 0) or done == self.end


class StepTimer:
    """Steady-state steps/s of a run: from the end of its first step (compilation) to the end of its last."""

    def __init__(self, start: int, end: int):
        self.start, self.end, self.t_first, self.t_last = start, end, None, None
        self.cpu_first = self.cpu_last = None  # process CPU seconds: robust to a busy, shared machine

    def after_step(self, done: int, state) -> None:
        """Waits on the state twice per run only: after the first step and after the last (before the final
        evaluation and checkpoint)."""
        if done == self.start + 1:
            jax.block_until_ready(state)
            self.t_first, self.cpu_first = time.perf_counter(), time.process_time()
        if done == self.end:
            jax.block_until_ready(state)
            self.t_last, self.cpu_last = time.perf_counter(), time.process_time()

    def summary(self) -> dict:
        steps = self.end - self.start - 1
        if self.t_first is None or self.t_last is None or steps < 1:
            return {}
        return {"train_steps_per_s": steps / max(self.t_last - self.t_first, 1e-9),
                "train_cpu_s_per_step": (self.cpu_last - self.cpu_first) / steps}


@dataclasses.dataclass
class LoopResult:
    state: object
    last_validation: dict | None  # the last validation's metrics ({} when none ran)
    timing: dict  # StepTimer.summary()
    num_compiled: int  # compiled step shapes


class StepLoop:
    """Runs steps `start..cadence.end` of a run.

    compile_step(host_batch) -> compiled(state, device_batch) -> (state, metrics): called once per batch shape
    when `varying_shapes` (length-cut batches), else once. validate(state, done) -> metrics: the trainer's
    validation (it writes its own metrics). save(done, state, metrics or None): a checkpoint. writer/bar: the
    train metrics' `progress.MetricWriter` and the `progress.ProgressBar`. count_examples: packed rows hold a
    varying number of examples, so the bar counts them from each step's `num_examples` metric.
    sync_each_step: wait for each step's loss before the next (several CPU processes: `feeding`).
    """

    def __init__(self, compile_step: Callable, *, cadence: Cadence, writer, bar,
                 validate: Callable[[object, int], dict], save: Callable[[int, object, dict | None], None],
                 varying_shapes: bool = False, count_examples: bool = False, sync_each_step: bool = False):
        self.compile_step, self.cadence, self.writer, self.bar = compile_step, cadence, writer, bar
        self.validate, self.save = validate, save
        self.varying_shapes, self.count_examples, self.sync_each_step = varying_shapes, count_examples, sync_each_step
        self.compiled: dict = {}  # batch shape key (None when shapes cannot vary) -> compiled step

    def _step_for(self, local: Mapping) -> Callable:
        key = batch_cutting.shape_key(local) if self.varying_shapes else None
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = self.compiled[key] = self.compile_step(local)
        return compiled

    def run(self, state, start: int, feed: Iterator) -> LoopResult:
        cadence, end = self.cadence, self.cadence.end
        timer = StepTimer(start, end)
        logged = progress.AsyncMetrics()  # metrics read without a per-step device->host sync
        last_val: dict = {}
        for step in range(start, end):
            local, batch = next(feed)
            state, metrics = self._step_for(local)(state, batch)
            if self.sync_each_step:
                # Cross-process CPU collectives deadlock without waiting on each step (stack notes, §4).
                metrics["loss"].block_until_ready()
            done = step + 1
            timer.after_step(done, state)
            if self.count_examples and step > start:  # the first step's time is compilation: the rate starts after
                logged.count_examples(metrics["num_examples"])
            if cadence.logs(done):
                logged.submit(done, metrics)
            if logged.pending:
                self._show(logged.ready(block=done == end))
            self.bar.update(done)
            validated = cadence.validates(done)
            val = None
            if validated:
                val = last_val = self.validate(state, done)
            if cadence.saves(done, validated):
                self.save(done, state, val)
        return LoopResult(state, last_val, timer.summary(), len(self.compiled))

    def _show(self, ready) -> None:
        """Writes and shows the logged steps whose metrics have reached the host."""
        for step, shown, examples in ready:
            self.writer.write(step, shown, "train")
            self.bar.note({"loss": shown["loss"]}, examples=examples)
