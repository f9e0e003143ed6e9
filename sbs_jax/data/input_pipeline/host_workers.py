"""Worker processes for the host pipeline: run `host_kernels` on units in parallel, results in submission order.

`WorkerPool` starts `workers` processes as `python -m sbs_jax.data.input_pipeline.host_worker` (a fresh interpreter that
imports numpy only: no fork of a process holding TensorFlow/JAX threads, no TensorFlow import per worker).
The tokenized arrays go to them once, as .npy files in a private folder on /dev/shm that they memory-map.
Unit u goes to worker u % workers, at most workers·depth units in flight, and the main process reads results in
submission order. Each unit's result is written into a unit buffer (a shared-memory file in that folder, mapped
once by the main process and by each worker that uses it) that nothing else holds: the main process hands out
numpy views of it, no copy, and takes the buffer back for a later unit only once every view of it is garbage
(`weakref.finalize` on the array all views hang from). Buffers are created as needed, so their number is the
units in flight plus the units whose batches someone still holds.
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

_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[3])  # so `-m sbs_jax.data.input_pipeline.host_worker` resolves


class WorkerError(RuntimeError):
    """A host pipeline worker failed (its traceback is in the message) or exited unexpectedly."""


def _shutdown(processes: list, conns: list, buffers: list, folder: str) -> None:
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
    for buffer in buffers:
        try:
            buffer.close()
        except BufferError:  # batches still view it: the mapping stays until they are gone (the file does not)
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
        self._buffers: list[mmap.mmap] = []  # unit buffer i is the file unit{i}
        # Buffers no view holds any more; appended to by finalizers, from whichever thread drops the last view.
        self._free: collections.deque[int] = collections.deque()
        self._finalizer = weakref.finalize(self, _shutdown, self.processes, self._conns, self._buffers, self._folder)
        paths = {}
        for i, (name, array) in enumerate(arrays.items()):
            paths[name] = os.path.join(self._folder, f"array{i}.npy")
            np.save(paths[name], np.ascontiguousarray(array))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))
                                                           if p)}
        for w in range(self.workers):
            ours, theirs = socket.socketpair()
            proc = subprocess.Popen([sys.executable, "-m", "sbs_jax.data.input_pipeline.host_worker", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
            theirs.close()
            self.processes.append(proc)
            self._conns.append(Connection(ours.detach()))
            self._conns[-1].send(("init", paths, self._folder, self.slot_bytes, kernel, dict(options)))
        for w in range(self.workers):
            heavy = self._reply(w, "ready")
            if heavy:
                self.close()
                raise WorkerError(f"host pipeline worker {w} imported {heavy}; workers must import numpy only")

    @property
    def num_buffers(self) -> int:
        """Unit buffers created so far (each a file in the pool's folder)."""
        return len(self._buffers)

    def _take_buffer(self) -> int:
        """A unit buffer no view holds: a recycled one (already mapped here and in the workers), else a new one."""
        if self._free:
            return self._free.popleft()
        path = os.path.join(self._folder, f"unit{len(self._buffers)}")
        with open(path, "w+b") as f:
            f.truncate(self.slot_bytes)  # sparse: only the pages results are written to take memory
            self._buffers.append(mmap.mmap(f.fileno(), self.slot_bytes))
        return len(self._buffers) - 1

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
        """Kernel results (`{name: array}`) for `payloads`, in order. The arrays are views of the unit's own
        buffer; they (and views of them) stay valid for as long as they are referenced."""
        payloads = iter(payloads)
        in_flight: collections.deque = collections.deque()  # (worker, buffer) of each unit, in submission order
        submitted = 0

        def submit() -> None:
            nonlocal submitted
            payload = next(payloads, None)
            if payload is None:
                return
            w, b = submitted % self.workers, self._take_buffer()
            self._conns[w].send((b, payload))
            in_flight.append((w, b))
            submitted += 1

        for _ in range(self.workers * self.depth):
            submit()
        while in_flight:
            w, b = in_flight.popleft()
            layout = self._reply(w, "done")
            # Every view below has `owner` as its base (numpy collapses view chains onto it), so `owner` dies,
            # and the buffer is free again, exactly when the last view of this unit's result does.
            owner = np.frombuffer(self._buffers[b], np.uint8)
            weakref.finalize(owner, self._free.append, b).atexit = False
            result = {name: np.ndarray(shape, np.dtype(dtype), buffer=owner, offset=offset)
                      for name, dtype, shape, offset in layout}
            del owner
            submit()  # before the caller takes its time with this result: keep the workers busy
            yield result
            del result

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
