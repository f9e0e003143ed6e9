"""A numpy back end for training batches: tokenize once through SeqIO, then shuffle, pack and batch in numpy.

`pipeline.get_train_dataset` (tf.data) spends most of its time on per-example tf.data work after
tokenization (feature conversion, segment splitting, packing in `tf.while_loop`), every epoch. For tasks over
in-memory examples (`sources.InMemoryDataSource`: every task `register` builds from files or examples) this
module yields the very same batches (tests/test_host_pipeline.py compares them with the tf.data path) from
arrays built once:

1. `TokenizedSplit`: one pass of the registered SeqIO task (`task.get_dataset(shuffle=False, num_epochs=1)`,
   so every SeqIO preprocessor runs as registered) stored as padded int32 arrays plus true lengths.
2. `IndexStream`: the example order. SeqIO shuffles with `ds.repeat(num_epochs).shuffle(buffer, seed)` after
   1:1 maps only, and tf.data's shuffle picks by position, never by content, so the same shuffle over
   `range(n)` gives the same order.
3. `unpacked_batches` / `packed_batches`: the feature converter's and `packing.pack_streams`' layouts, built
   with vectorised numpy (packing: seqio's greedy rule over windows of max(row lengths) segments). This module
   plans the units (example indices of whole batches; the segment table of one packing window) and the
   kernels in `host_kernels` build their rows, in this thread or (`workers` > 0) in `host_workers` processes;
   results come back in unit order, so every worker count gives the same batches.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import queue
import threading
import weakref
from typing import Iterator, Mapping

import numpy as np

from sbs_jax.data.input_pipeline import host_kernels
from sbs_jax.data import schema
from sbs_jax.data.schema import STREAM_FEATURES

_ORDER_CHUNK = 8192  # indices fetched from tf.data per call (one call per ~8k examples)


def supports(provider) -> bool:
    """Whether `provider` (a seqio Task or Mixture) can use this back end: a single task over in-memory examples
    (mixtures sample across tasks in tf.data; other sources may shuffle files or not know their size)."""
    import seqio

    from sbs_jax.data.registry.memory_source import InMemoryDataSource

    return isinstance(provider, seqio.Task) and isinstance(provider.source, InMemoryDataSource)


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
    """Every example of one (shard of a) split after SeqIO preprocessing and trimming, in source order.

    tokens[f]: [examples, longest f] int32, zero-padded; lengths[f]: [examples] tokens before padding."""
    tokens: Mapping[str, np.ndarray]
    lengths: Mapping[str, np.ndarray]

    @property
    def num_examples(self) -> int:
        return int(next(iter(self.lengths.values())).shape[0])

    @classmethod
    def from_task(cls, task, *, split: str, sequence_length: Mapping[str, int], features: tuple[str, ...],
                  shard_info=None) -> "TokenizedSplit":
        ds = task.get_dataset(sequence_length=dict(sequence_length), split=split, shuffle=False, num_epochs=1,
                              shard_info=shard_info)
        ds = ds.map(lambda ex: {f: ex[f] for f in features}).ragged_batch(1024)
        rows: dict[str, list[np.ndarray]] = {f: [] for f in features}
        for chunk in ds.as_numpy_iterator():
            for f in features:
                rows[f].extend(chunk[f])  # RaggedTensorValue rows -> np arrays
        tokens, lengths = {}, {}
        for f in features:
            seqs = [np.asarray(r, np.int32) for r in rows[f]]
            lengths[f] = np.array([len(s) for s in seqs], np.int64)
            out = np.zeros((len(seqs), int(lengths[f].max(initial=0))), np.int32)
            for i, s in enumerate(seqs):
                out[i, :len(s)] = s
            tokens[f] = out
        return cls(tokens, lengths)


class IndexStream:
    """Example indices in the order `ds.repeat(num_epochs).shuffle(buffer_size, seed)` yields a dataset's
    elements (no shuffle: source order, repeated).

    tf.data's shuffle costs about 1 us per example, as much as building an unpacked batch, and cannot be split
    across workers (each pick depends on the last). A thread computes it ahead (`ahead` chunks of
    `_ORDER_CHUNK` indices): the tf.data op releases the GIL, so on a second core it runs beside the batch
    building instead of before it. The order is the same either way; `ahead=0` computes it in `take`."""

    def __init__(self, num_examples: int, *, shuffle: bool, buffer_size: int | None, seed: int | None,
                 num_epochs: int | None, ahead: int = 4, positions: bool = False):
        import tensorflow as tf

        if ahead < 0:
            raise ValueError(f"ahead={ahead}: expected 0 (no thread) or more chunks computed ahead")
        if positions:
            # Positions in the repeated stream instead of indices (index = position % n, epoch = position // n):
            # the shuffle picks by position, so the order of `position % n` is the order of the indices.
            ds = tf.data.Dataset.range(num_examples * num_epochs if num_epochs else np.iinfo(np.int64).max)
        else:
            ds = tf.data.Dataset.range(num_examples)
        if num_epochs != 1 and not positions:
            ds = ds.repeat(num_epochs)
        if shuffle:
            ds = ds.shuffle(buffer_size, seed=seed)
        options = tf.data.Options()
        # Nothing here runs in parallel; with autotuning on, its background thread used ~0.2 ms of CPU per
        # batch of the packed path (measured with workers=1, CQA), CPU the workers need.
        options.autotune.enabled = False
        chunks = ds.batch(_ORDER_CHUNK).with_options(options).as_numpy_iterator()
        self._buffer = np.zeros((0,), np.int64)
        self._ahead = None
        if ahead:
            self._ahead = _ChunksAhead(chunks, ahead)
            self._next_chunk = self._ahead.get
        else:
            self._next_chunk = lambda: next(chunks, None)

    def take(self, n: int, *, partial: bool = False) -> np.ndarray | None:
        """The next `n` indices, or None when fewer remain (finite epochs); with `partial`, what remains of
        them (None only when nothing does)."""
        while self._buffer.shape[0] < n:
            chunk = self._next_chunk()
            if chunk is None:
                if partial and self._buffer.shape[0]:
                    out, self._buffer = self._buffer, self._buffer[:0]
                    return out
                return None
            self._buffer = np.concatenate([self._buffer, chunk])
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def close(self) -> None:
        """Stops the thread computing ahead (also done when the stream is collected or Python exits)."""
        if self._ahead is not None:
            self._ahead.close()


class _ChunksAhead:
    """`chunks` (an iterator) consumed on a daemon thread, at most `depth` items ahead of `get`."""

    _END = object()

    def __init__(self, chunks: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._fill, args=(chunks, self._queue, self._stop), daemon=True,
                                        name="sbs-example-order")
        self._thread.start()
        # The thread holds no reference to self, so a dropped stream is collected and this stops the thread.
        weakref.finalize(self, self._stop.set)
        _LIVE.add(self)

    @staticmethod
    def _fill(chunks: Iterator, out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for item in itertools.chain(chunks, [_ChunksAhead._END]):
                if not put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(e))

    def get(self) -> np.ndarray | None:
        if self._done:
            return None
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the thread computing the example order ended without a result") from None
        if item is self._END:
            self._done = True
            return None
        if isinstance(item, _Failed):
            self._done = True
            raise RuntimeError("computing the example order failed") from item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: BaseException


_LIVE: "weakref.WeakSet[_ChunksAhead]" = weakref.WeakSet()


@atexit.register
def _stop_order_threads() -> None:
    # A daemon thread left inside a TensorFlow op while the interpreter shuts down can crash it.
    for ahead in list(_LIVE):
        ahead.close()


# Rows (unpacked) or segments (packed) per unit handed to a worker: enough to amortise the per-unit messages,
# few enough to keep units flowing.
_UNIT_ROWS = 2048
_UNIT_SEGMENTS = 4096
_ALIGN = 64  # host_worker aligns each array of a unit buffer to 64 bytes


def _units(split: TokenizedSplit, kernel: str, options: dict, payloads: Iterator[np.ndarray], *, workers: int,
           slot_bytes: int) -> Iterator[dict]:
    """`host_kernels.KERNELS[kernel]` over `payloads`, in order: in this thread (workers=0) or in a
    `host_workers.WorkerPool` (closed when this generator is closed or collected). Either way a result's arrays
    are the unit's own (with workers, views of its own buffer): batches may be views of them, no copy."""
    if workers < 0:
        raise ValueError(f"workers={workers}: expected 0 (in-thread) or more worker processes")
    if workers == 0:
        fn = host_kernels.KERNELS[kernel]
        for payload in payloads:
            yield fn(split.tokens, split.lengths, payload, **options)
        return
    from sbs_jax.data.input_pipeline import host_workers

    arrays = {**{f"tokens/{k}": v for k, v in split.tokens.items()},
              **{f"lengths/{k}": v for k, v in split.lengths.items()}}
    with host_workers.WorkerPool(arrays, kernel, options, workers=workers, slot_bytes=slot_bytes) as pool:
        yield from pool.map(payloads)


def _index_units(order: IndexStream, batch_size: int, batches_per_unit: int) -> Iterator[np.ndarray]:
    """Example indices of `batches_per_unit` whole batches per unit (fewer in a finite stream's last unit)."""
    while True:
        parts = []
        while len(parts) < batches_per_unit and (idx := order.take(batch_size)) is not None:
            parts.append(idx)
        if parts:
            yield np.concatenate(parts)
        if len(parts) < batches_per_unit:
            return


def unpacked_batches(split: TokenizedSplit, order: IndexStream, *, streams: tuple[str, ...],
                     lengths: Mapping[str, int], batch_size: int, bos_id: int = 0, workers: int = 0) -> Iterator[dict]:
    """`{stream: {encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights}}`
    batches, as `feature_converter` + `batch(drop_remainder=True)` + `nest` give them. `workers` > 0 builds
    them in that many processes (units of several batches); the batches are the same for every count."""
    per_unit = 1 if workers == 0 else max(1, _UNIT_ROWS // batch_size)
    options = {"streams": tuple(streams), "feature_lengths": dict(lengths), "bos_id": bos_id}
    row_bytes = sum(4 * (lengths[STREAM_FEATURES[s][0]] + 3 * lengths[STREAM_FEATURES[s][1]]) for s in streams)
    slot_bytes = per_unit * batch_size * row_bytes + _ALIGN * 4 * len(streams)
    for rows in _units(split, "unpacked", options, _index_units(order, batch_size, per_unit), workers=workers,
                       slot_bytes=slot_bytes):
        arrays = [(*name.split("/", 1), array) for name, array in rows.items()]
        for start in range(0, arrays[0][2].shape[0], batch_size):
            batch: dict = {s: {} for s in streams}
            for stream, key, array in arrays:
                batch[stream][key] = array[start:start + batch_size]
            yield batch


def _windows(split: TokenizedSplit, order: IndexStream, streams: tuple[str, ...], window: int) -> Iterator[np.ndarray]:
    """seqio `trim_and_pack_dataset`'s windows: consecutive groups of `window` segments
    (`host_kernels.segments`), the short last one of finite data kept (as its padded_batch does)."""
    features = {f for s in streams for f in STREAM_FEATURES[s]}
    # seqio's packer keeps the first count_nonzero(tokens) tokens of a segment.
    nonzero = {f: np.count_nonzero(split.tokens[f], axis=1) for f in features}
    pending = np.zeros((0, 4), np.int32)
    while True:
        idx = order.take(_ORDER_CHUNK, partial=True)
        if idx is not None:
            pending = np.concatenate([pending, host_kernels.segments(nonzero, split.lengths, idx, streams)])
        start = 0
        while pending.shape[0] - start >= window:
            yield pending[start:start + window]
            start += window
        pending = pending[start:]
        if idx is None:
            if pending.shape[0]:
                yield pending
            return


def _window_units(windows: Iterator[np.ndarray], per_unit: int) -> Iterator[np.ndarray]:
    """`per_unit` consecutive windows per unit: their segment tables stacked, numbered in a 5th column."""
    while True:
        group = [w for _, w in zip(range(per_unit), windows)]
        if not group:
            return
        yield np.concatenate([np.concatenate([w, np.full((len(w), 1), k, w.dtype)], axis=1)
                              for k, w in enumerate(group)])


def packed_batches(split: TokenizedSplit, order: IndexStream, *, streams: tuple[str, ...],
                   packed_lengths: Mapping[str, int], batch_size: int, bos_id: int = 0,
                   workers: int = 0) -> Iterator[dict]:
    """`{"packed": rows}` batches in the layout of `packing` (what `pack_streams` + `batch` give). Each
    packing window (several per unit with workers) is packed independently (`host_kernels.packed_rows`; in
    `workers` processes when > 0); rows are concatenated into batches in window order, so the batches are the
    same for every worker count."""
    enc_len, dec_len = int(packed_lengths["inputs"]), int(packed_lengths["targets"])
    window = max(enc_len, dec_len)
    per_unit = 1 if workers == 0 else max(1, _UNIT_SEGMENTS // window)
    options = {"streams": tuple(streams), "enc_len": enc_len, "dec_len": dec_len, "bos_id": bos_id}
    # At most one row per segment, plus one per window (an empty first row, as seqio, if a segment overflows).
    slot_bytes = per_unit * (window + 1) * 4 * (3 * enc_len + 6 * dec_len) + _ALIGN * 9
    units = _window_units(_windows(split, order, tuple(streams), window), per_unit)
    held: dict | None = None  # the rows not yet batched (fewer than batch_size), views of their unit
    for rows in _units(split, "packed", options, units, workers=workers, slot_bytes=slot_bytes):
        n, start = next(iter(rows.values())).shape[0], 0
        if held is not None:  # the batch that spans the previous units and this one
            start = min(n, batch_size - next(iter(held.values())).shape[0])
            held = {k: np.concatenate([v, rows[k][:start]]) for k, v in held.items()}
            if next(iter(held.values())).shape[0] < batch_size:
                continue
            yield {schema.PACKED: held}
            held = None
        while n - start >= batch_size:
            yield {schema.PACKED: {k: v[start:start + batch_size] for k, v in rows.items()}}
            start += batch_size
        if start < n:
            held = {k: v[start:] for k, v in rows.items()}
