"""Which of an example's rationales an epoch trains on: a counter-based function of (seed, epoch, example).

No state is carried from batch to batch, so the pick is the same whatever the process count (it uses the
example's global index), with or without packing, and on resume (the stream is rebuilt from the seed and the
data position, which holds the epoch). Epochs come in blocks of k (an example's rationale count): block b
visits the k rationales in a seeded permutation of its own, so every k consecutive epochs cover every
rationale once. The hash is SplitMix64's finaliser over the four integers.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(*parts) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = np.uint64(0)
        for p in parts:
            h = _mix(h * _GOLDEN + np.asarray(p).astype(np.uint64) + _GOLDEN)
    return h


def pick(seed: int, epoch: np.ndarray, example: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For each (epoch[j], example[j]) with counts[j] rationales: the rationale index in [0, counts[j])."""
    epoch, example, counts = (np.asarray(a, np.int64) for a in (epoch, example, counts))
    if epoch.size == 0:
        return np.zeros((0,), np.int64)
    k_max = int(counts.max())
    block = epoch // counts
    slots = np.arange(k_max, dtype=np.int64)[None, :]                               # [1, k_max]
    keys = _hash(np.int64(seed) & 0x7FFFFFFFFFFFFFFF, example[:, None], block[:, None], slots)  # [n, k_max]
    keys = np.where(slots < counts[:, None], keys, np.iinfo(np.uint64).max)         # padding sorts last
    permutation = np.argsort(keys, axis=1, kind="stable")                           # [n, k_max]
    return permutation[np.arange(len(epoch)), epoch % counts]


class PickedRows:
    """An `IndexStream` over positions of the repeated, shuffled example stream, read as source rows.

    position p is example `p % n` (local index) in epoch `p // n`; the row is that example's first row plus
    `pick(seed, epoch, global index, count)`. `take` has `IndexStream.take`'s contract."""

    def __init__(self, positions, counts: np.ndarray, global_index: np.ndarray, seed: int):
        self._positions = positions
        self._counts = np.asarray(counts, np.int64)
        self._first = np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)
        self._global = np.asarray(global_index, np.int64)
        self._seed = int(seed)

    def take(self, n: int, *, partial: bool = False) -> np.ndarray | None:
        positions = self._positions.take(n, partial=partial)
        if positions is None:
            return None
        local = positions % len(self._counts)
        epoch = positions // len(self._counts)
        chosen = pick(self._seed, epoch, self._global[local], self._counts[local])
        return self._first[local] + chosen

    def close(self) -> None:
        self._positions.close()
