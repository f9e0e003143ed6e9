"""Feeding the compiled step: host batches prepared and placed on device ahead of the step that needs them.

`DevicePrefetcher` runs the host side of every step (next host batch, optional length-bucket cut, the
transfer to global arrays) on a background thread, `depth` batches ahead, so that the loop only dispatches.
Batches come out in input order, so results do not depend on it. `step_sync_needed` says when the loop
must still wait for each step.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import jax

_DONE = object()


def step_sync_needed() -> bool:
    """Whether the loop must wait for each step before dispatching the next: only with several processes on
    the CPU backend, whose cross-process collectives deadlock when steps queue up (stack notes, §4). TPU pods
    and GPU clusters keep dispatching ahead."""
    return jax.process_count() > 1 and jax.default_backend() == "cpu"


class DevicePrefetcher:
    """Iterates `(host_batch, device_batch)`: `prepare(next(batches))` then `place(...)`, `depth` ahead.

    depth=0 runs everything inline (needed when `prepare` runs cross-process collectives, which must stay in
    the order the main thread issues them). Errors of the producer are raised by `__next__`.
    """

    def __init__(self, batches: Iterator, place: Callable, *, prepare: Callable | None = None, depth: int = 2):
        self._batches, self._place, self._prepare = batches, place, prepare or (lambda b: b)
        self._depth = depth
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._produce, name="device-prefetch", daemon=True)
            self._thread.start()

    def _one(self):
        host = self._prepare(next(self._batches))
        return host, self._place(host)

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._one()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, StopIteration included
            self._queue.put((_DONE, e))

    def __iter__(self):
        return self

    def __next__(self):
        if self._depth == 0:
            return self._one()
        item = self._queue.get()
        if item[0] is _DONE:
            self._queue.put(item)  # later calls raise again
            raise item[1]
        return item

    def close(self) -> None:
        if self._depth > 0:
            self._stop.set()
            self._thread.join(timeout=10)
