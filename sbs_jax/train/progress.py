"""Progress bar (ETA, examples/s) and metric writers (`metrics.jsonl` + TensorBoard) for process 0."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import jax
import numpy as np
from etils import epath

from sbs_jax import paths


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """A one-line bar on stderr, redrawn at most every `redraw_s` seconds (and at the last step); on a
    non-terminal it prints a plain line every `log_every` steps instead.

    Examples/s is steps/s × `batch_size`, or, with `batch_size=None` (packed batches, whose example count
    varies), the examples passed to `update` since the first step over the time up to the last such update.
    """

    redraw_s = 0.1

    def __init__(self, total_steps: int, start_step: int, batch_size: int | None, *, log_every: int = 50,
                 stream=None, enabled: bool | None = None):
        self.total, self.start, self.batch_size, self.log_every = total_steps, start_step, batch_size, log_every
        self.stream = stream or sys.stderr
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.t_first = None  # time after the first step, so that compilation does not skew the rate
        self.examples, self.t_examples = 0.0, None  # counted examples (after the first step) and when
        self.metrics: dict[str, float] = {}  # shown on each line: the latest logged step's
        self._t_drawn = -math.inf  # when the terminal line was last drawn

    def example_rate(self, step: int) -> float:
        if self.batch_size is not None:
            return self.rate(step) * self.batch_size
        if self.t_examples is None or self.t_first is None or self.t_examples <= self.t_first:
            return float("nan")
        return self.examples / (self.t_examples - self.t_first)

    def rate(self, step: int) -> float:
        """Steps per second since the first completed step."""
        if self.t_first is None or step <= self.start + 1:
            return float("nan")
        return (step - self.start - 1) / max(time.perf_counter() - self.t_first, 1e-9)

    def note(self, metrics: Mapping[str, float] | None = None, examples: float | None = None) -> None:
        """Metrics to show from now on (the latest logged step's), and examples trained since the previous
        note that passed them (first step excluded)."""
        if metrics is not None:
            self.metrics = dict(metrics)
        if examples is not None:
            self.examples += examples
            self.t_examples = time.perf_counter()

    def update(self, step: int, metrics: Mapping[str, float] | None = None,
               examples: float | None = None) -> None:
        """Step `step` was dispatched; `metrics`/`examples` as in `note`."""
        if self.t_first is None and step > self.start:
            self.t_first = time.perf_counter()
        self.note(metrics, examples)
        if not self.enabled or not (self.tty or step % self.log_every == 0 or step == self.total):
            return
        now = time.perf_counter()
        if self.tty and step != self.total and now - self._t_drawn < self.redraw_s:
            return  # a terminal redraw costs more than a tiny step: at most one per `redraw_s`
        self._t_drawn = now
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        width = 24
        done = int(width * step / max(self.total, 1))
        bar = "#" * done + "-" * (width - done)
        extra = "".join(f" {k}={v:.4g}" for k, v in self.metrics.items())
        line = (f"[{bar}] {step}/{self.total} {_fmt_seconds(time.perf_counter() - self.t0)}<"
                f"{_fmt_seconds(eta)} {self.example_rate(step):.1f} ex/s{extra}")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if self.tty and step == self.total:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class MetricWriter:
    """Appends `{"step": s, "split": ..., **metrics}` lines to `metrics.jsonl` and writes TensorBoard scalars
    under `<model_dir>/tensorboard/<split>`. Only process 0 writes."""

    def __init__(self, model_dir: str | os.PathLike, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = epath.Path(model_dir) / "metrics.jsonl"
        self.tb_dir = epath.Path(model_dir) / "tensorboard"  # TF writes gs:// itself
        self.tensorboard = tensorboard and self.enabled
        self._tb = {}

    def _tb_writer(self, split: str):
        # tf.summary.scalar needs the tensorboard package; the low-level write with the scalars plugin's
        # metadata produces the same event records without it.
        import tensorflow as tf

        if split not in self._tb:
            self._tb[split] = tf.summary.create_file_writer(str(self.tb_dir / split))
        return self._tb[split]

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        paths.append_text(self.path, json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        if self.tensorboard:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()
            writer = self._tb_writer(split)
            with writer.as_default():
                for k, v in clean.items():
                    tf.summary.write(k, tf.constant(v, tf.float32), step=int(step), metadata=metadata)
            writer.flush()

    def close(self) -> None:
        for w in self._tb.values():
            w.close()


class AsyncMetrics:
    """Train metrics of every `log_every`-th step, copied to the host without stalling the loop.

    `submit` starts the device->host copies of a logged step's metrics (and of the per-step example counts
    since the previous logged step) and returns at once; `ready` hands back, in step order, the logged steps
    whose values have arrived, so the loop never waits on the step it just dispatched. `flush` waits for all.
    Values are exactly the step's metrics (same arrays, read later).
    """

    def __init__(self):
        self._pending: list[tuple[int, Mapping, list]] = []
        self._examples: list = []

    def count_examples(self, num_examples) -> None:
        """A step's example count (device scalar), summed into the next submitted step's `examples`."""
        self._examples.append(num_examples)

    def submit(self, step: int, metrics: Mapping) -> None:
        local = {k: v.addressable_data(0) for k, v in metrics.items()}
        examples = [v.addressable_data(0) for v in self._examples]
        for v in (*local.values(), *examples):
            v.copy_to_host_async()
        self._pending.append((step, local, examples))
        self._examples = []

    @property
    def pending(self) -> bool:
        """Whether submitted steps wait to be handed back (lets the loop skip `ready` on most steps)."""
        return bool(self._pending)

    def ready(self, block: bool = False) -> list[tuple[int, dict[str, float], float | None]]:
        """[(step, metrics, examples or None)] of the submitted steps whose values have arrived (all with
        `block`), oldest first; each is returned once."""
        out = []
        while self._pending:
            step, local, examples = self._pending[0]
            if not block and not all(v.is_ready() for v in local.values()):
                break
            self._pending.pop(0)
            shown = {k: float(np.asarray(v)) for k, v in local.items()}
            out.append((step, shown, sum(float(np.asarray(v)) for v in examples) if examples else None))
        return out

    def flush(self) -> list[tuple[int, dict[str, float], float | None]]:
        return self.ready(block=True)
