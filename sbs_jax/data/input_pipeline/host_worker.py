"""A worker process of `host_workers.WorkerPool`: runs `host_kernels` on units, writes results to unit buffers.

Started as `python -m sbs_jax.data.input_pipeline.host_worker FD` (never by fork: no TensorFlow/JAX/seqio state is inherited
or imported; only numpy). Protocol over the connection FD, in order:
  <- ("init", {array name: .npy path}, pool folder, buffer bytes, kernel name, kernel options)
  -> ("ready", [heavy modules loaded])            # the pool checks that the list is empty
  <- (buffer number i, payload ndarray) ...       # result into the file unit{i} of the pool folder
  -> ("done", [(name, dtype, shape, offset), ...]) | ("error", traceback text)
  <- None (or EOF: the pool is gone)               -> exit
"""
from __future__ import annotations

import mmap
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection

import numpy as np

from sbs_jax.data.input_pipeline import host_kernels

HEAVY_MODULES = ("tensorflow", "jax", "seqio", "flax")
_ALIGN = 64


def write_buffer(buffer, arrays: dict, capacity: int) -> list[tuple]:
    """Copies `arrays` into `buffer` back to back (64-byte aligned); returns their layout."""
    layout, offset = [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        end = offset + a.nbytes
        if end > capacity:
            raise ValueError(f"a unit's result needs more than the {capacity} bytes of its buffer (array {name!r} "
                             f"{a.dtype}{list(a.shape)}); this is a bug in the buffer size estimate")
        np.ndarray(a.shape, a.dtype, buffer=buffer, offset=offset)[...] = a
        layout.append((name, a.dtype.str, a.shape, offset))
        offset = -(-end // _ALIGN) * _ALIGN
    return layout


def serve(conn: Connection) -> None:
    _, array_paths, folder, buffer_bytes, kernel_name, options = conn.recv()
    arrays = {name: np.load(path, mmap_mode="r") for name, path in array_paths.items()}
    tokens = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("tokens/")}
    lengths = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("lengths/")}
    buffers: dict[int, mmap.mmap] = {}  # mapped on first use, kept: the pool recycles buffer numbers
    kernel = host_kernels.KERNELS[kernel_name]
    conn.send(("ready", sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY_MODULES))))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        number, payload = message
        if number not in buffers:
            with open(os.path.join(folder, f"unit{number}"), "r+b") as f:
                buffers[number] = mmap.mmap(f.fileno(), buffer_bytes)
        result = kernel(tokens, lengths, payload, **options)
        conn.send(("done", write_buffer(buffers[number], result, buffer_bytes)))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it closes the pool
    conn = Connection(int(argv[1]))
    try:
        serve(conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # the pool went away: nothing is left to report to
    except Exception:  # noqa: BLE001 - every error goes back to the pool, which re-raises it
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
