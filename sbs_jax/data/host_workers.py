"""Worker processes for the host pipeline: run `host_kernels` on units in parallel, results in submission order.

`WorkerPool` starts `workers` processes as `python -m sbs_jax.data.host_worker` (a fresh interpreter that
imports numpy only: no fork of a process holding TensorFlow/JAX threads, no TensorFlow import per worker).
The tokenized arrays go to them once, as .npy files in a private folder on /dev/shm that they memory-map.
Each worker owns `depth` result slots (shared-memory files): unit u goes to worker u % workers, slot
(u // workers) % depth, so at most workers·depth units are in flight and the main process reads results in
submission order, straight from the slot (the caller copies rows into its batches, once), before handing the
slot to the next unit.
`close()` (also on garbage collection and at interpreter exit) stops the workers and removes the folder; a
worker's exception is re-raised here as `WorkerError` with the worker's traceback.
"""
from __future__ import annotations

import collections
import mmap
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import weakref
from multiprocessing.connection import Connection
from typing import Iterable, Iterator, Mapping

import numpy as np

_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])  # so `-m sbs_jax.data.host_worker` resolves


class WorkerError(RuntimeError):
    """A host pipeline worker failed (its traceback is in the message) or exited unexpectedly."""


def _shutdown(processes: list, conns: list, slots: list, folder: str) -> None:
    for conn in conns:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
        conn.close()
    for proc in processes:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for slot in slots:
        try:
            slot.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass
    shutil.rmtree(folder, ignore_errors=True)


_FOLDER_PREFIX = "sbs_host_pipeline_"


def remove_orphaned_folders(root: str) -> list[str]:
    """Removes the shared folders of pools whose process has died (a SIGKILLed run cannot clean up after
    itself); the owner's pid is in the folder's name. Returns the folders removed."""
    removed = []
    for name in os.listdir(root):
        if not name.startswith(_FOLDER_PREFIX):
            continue
        pid = name[len(_FOLDER_PREFIX):].split("_", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(name)
        except PermissionError:  # alive, another user's
            pass
    return removed


class WorkerPool:
    """`workers` processes running the kernel `host_kernels.KERNELS[kernel]` over shared `arrays`."""

    def __init__(self, arrays: Mapping[str, np.ndarray], kernel: str, options: Mapping, *, workers: int,
                 slot_bytes: int, depth: int = 2):
        if workers < 1:
            raise ValueError(f"workers={workers}: a WorkerPool needs at least 1 (0 runs in-thread)")
        self.workers, self.depth, self.slot_bytes = int(workers), int(depth), int(slot_bytes)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        remove_orphaned_folders(shm or tempfile.gettempdir())
        self._folder = tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}_", dir=shm)
        self.processes: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._slots: list[list[mmap.mmap]] = []
        flat_slots: list[mmap.mmap] = []
        self._finalizer = weakref.finalize(self, _shutdown, self.processes, self._conns, flat_slots, self._folder)
        paths = {}
        for i, (name, array) in enumerate(arrays.items()):
            paths[name] = os.path.join(self._folder, f"array{i}.npy")
            np.save(paths[name], np.ascontiguousarray(array))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))
                                                           if p)}
        for w in range(self.workers):
            slot_paths = [os.path.join(self._folder, f"slot{w}_{s}") for s in range(self.depth)]
            mine = []
            for path in slot_paths:
                with open(path, "w+b") as f:
                    f.truncate(self.slot_bytes)
                    mine.append(mmap.mmap(f.fileno(), self.slot_bytes))
            self._slots.append(mine)
            flat_slots.extend(mine)
            ours, theirs = socket.socketpair()
            proc = subprocess.Popen([sys.executable, "-m", "sbs_jax.data.host_worker", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
            theirs.close()
            self.processes.append(proc)
            self._conns.append(Connection(ours.detach()))
            self._conns[-1].send(("init", paths, slot_paths, self.slot_bytes, kernel, dict(options)))
        for w in range(self.workers):
            heavy = self._reply(w, "ready")
            if heavy:
                self.close()
                raise WorkerError(f"host pipeline worker {w} imported {heavy}; workers must import numpy only")

    def _reply(self, w: int, expected: str):
        try:
            kind, body = self._conns[w].recv()
        except (EOFError, OSError):
            code = self.processes[w].wait()
            raise WorkerError(f"host pipeline worker {w} (pid {self.processes[w].pid}) exited with code {code} "
                              "without a reply (see its stderr above)") from None
        if kind == "error":
            raise WorkerError(f"host pipeline worker {w} failed:\n{body}")
        if kind != expected:
            raise WorkerError(f"host pipeline worker {w} replied {kind!r}, expected {expected!r} (protocol bug)")
        return body

    def map(self, payloads: Iterable) -> Iterator[dict]:
        """Kernel results (`{name: array}`) for `payloads`, in order. The arrays are views of a result slot,
        valid until the next result is requested (the slot then takes a new unit): copy what you keep."""
        payloads = iter(payloads)
        in_flight: collections.deque = collections.deque()  # (worker, slot) of each unit, in submission order
        submitted = 0

        def submit() -> None:
            nonlocal submitted
            payload = next(payloads, None)
            if payload is None:
                return
            w, s = submitted % self.workers, (submitted // self.workers) % self.depth
            self._conns[w].send((s, payload))
            in_flight.append((w, s))
            submitted += 1

        for _ in range(self.workers * self.depth):
            submit()
        while in_flight:
            w, s = in_flight.popleft()
            layout = self._reply(w, "done")
            buffer = self._slots[w][s]
            yield {name: np.ndarray(shape, np.dtype(dtype), buffer=buffer, offset=offset)
                   for name, dtype, shape, offset in layout}
            submit()  # the caller is done with the slot: the next unit mapped to it may use it

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
