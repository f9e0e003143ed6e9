"""Worker processes of the numpy back end (`host_workers`): the same batches as in-thread for every worker count,
errors surface, nothing is left running."""
import gc
import itertools
import os
import pathlib
import threading
import time

import numpy as np
import pytest

from sbs_jax import tasks
from sbs_jax.data.input_pipeline import host_pipeline
from sbs_jax.data.input_pipeline import host_workers
from sbs_jax.data.input_pipeline import pipeline
from sbs_jax.data.vocab import sentencepiece_vocab as vocab
from sbs_jax.train import inputs

LENGTHS = {"cqa": {"inputs": 64, "targets": 8, "rationales": 32},  # trims CQA's inputs and rationales
           "arith": {"inputs": 48, "targets": 4, "rationales": 20}}


@pytest.fixture(scope="module")
def cqa(tmp_path_factory, datasets_dir):
    from sbs_jax.data.records import data_dir as records
    texts = vocab.model_texts(records.read_split(datasets_dir, "cqa", "train").examples[:1000])
    spiece = vocab.train_vocabulary(texts, tmp_path_factory.mktemp("vocab"), vocab_size=600, seed=0)
    tasks.register_paper_tasks(str(datasets_dir), datasets=["cqa"], train_fraction=0.06, vocabulary=str(spiece),
                               variants=("sbs",))
    return "cqa_sbs"


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    tasks.register_arith_tasks(vocab_cache_dir=str(tmp_path_factory.mktemp("arith_vocab")), train_fraction=0.15,
                               variants=("sbs",))
    return "arith_sbs"


@pytest.fixture
def small_units(monkeypatch):
    # Units of 64 rows (2 batches of 32) or 2-3 packing windows: many units per epoch, each slot reused often.
    monkeypatch.setattr(host_pipeline, "_UNIT_ROWS", 64)
    monkeypatch.setattr(host_pipeline, "_UNIT_SEGMENTS", 300)


def _assert_same(reference, candidate, n: int) -> list:
    # Every batch is taken before any is compared: a batch must stay intact while later ones are produced.
    got_all = list(itertools.islice(candidate, n))
    for i, (want, got) in enumerate(zip(itertools.islice(reference, n), got_all)):
        assert sorted(want) == sorted(got), i
        for stream in want:
            assert list(want[stream]) == list(got[stream]), (i, stream)
            for key in want[stream]:
                assert got[stream][key].dtype == want[stream][key].dtype, (i, stream, key)
                np.testing.assert_array_equal(got[stream][key], want[stream][key], err_msg=f"batch {i} {stream}/{key}")
    assert len(got_all) == n
    return got_all


def _examples(batch: dict) -> int:
    if "packed" in batch:
        rows = batch["packed"]
        return int(np.sum((rows["decoder_positions"] == 0) & (rows["decoder_stream_ids"] == 1)))
    return batch["label"]["encoder_input_tokens"].shape[0]


def _worker_pids() -> set[int]:
    """Live children of this process running the host pipeline worker."""
    pids = set()
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"sbs_jax.data.input_pipeline.host_worker" in cmd:
            pids.add(int(proc.name))
    return pids


@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("task", ["arith", "cqa"])
def test_worker_batches_equal_in_thread_batches_across_epochs(request, small_units, task, pack):
    name = request.getfixturevalue(task)
    kw = dict(task_feature_lengths=LENGTHS[task], batch_size=32, seed=7, pack=pack, backend="numpy")
    n = 40 if pack else 45  # ~600 examples per epoch: past the first epoch boundary (checked below)
    got = _assert_same(pipeline.train_batches(name, **kw), pipeline.train_batches(name, workers=2, **kw), n)
    import seqio
    assert sum(_examples(b) for b in got) > seqio.get_mixture_or_task(name).num_input_examples("train")
    gc.collect()
    assert not _worker_pids()  # both iterators were dropped: their workers are gone


def test_worker_batches_of_a_finite_epoch_equal_in_thread(arith):
    for pack in (False, True):
        kw = dict(task_feature_lengths=LENGTHS["arith"], batch_size=16, shuffle=False, num_epochs=1, pack=pack,
                  backend="numpy")
        want, got = list(pipeline.train_batches(arith, **kw)), list(pipeline.train_batches(arith, workers=3, **kw))
        assert len(want) == len(got) > 0
        _assert_same(want, got, len(want))


def test_packed_finite_epoch_equals_the_tf_data_path(arith):
    # A finite stream's last, partial chunk of example indices is packed too (as the tf.data path does).
    kw = dict(task_feature_lengths=LENGTHS["arith"], batch_size=16, shuffle=False, num_epochs=1, pack=True)
    want, got = list(pipeline.train_batches(arith, backend="tf.data", **kw)), list(
        pipeline.train_batches(arith, backend="numpy", **kw))
    assert len(got) == len(want) > 0
    _assert_same(want, got, len(want))


def test_trainer_input_shards_and_resume_with_workers(arith):
    kw = dict(task_feature_lengths=LENGTHS["arith"], batch_size=16, seed=2, streams=("label", "rationale"),
              num_input_shards=2, start_batch=5, pack=True)
    _assert_same(inputs.train_batches(arith, **kw), inputs.train_batches(arith, workers=1, **kw), n=30)


def _order_threads() -> set:
    return {t for t in threading.enumerate() if t.name == "sbs-example-order"}


def _ended(threads: set, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("workers", [0, 2])
def test_closing_or_dropping_the_iterator_stops_its_workers_and_order_thread(arith, workers):
    kw = dict(task_feature_lengths=LENGTHS["arith"], batch_size=16, seed=0, backend="numpy", workers=workers)
    before = _order_threads()
    it = pipeline.train_batches(arith, **kw)
    next(it)
    mine = _order_threads() - before
    assert len(_worker_pids()) == workers and len(mine) == 1
    it.close()
    assert not _worker_pids() and _ended(mine)
    before = _order_threads()
    it = pipeline.train_batches(arith, pack=True, **kw)
    next(it)
    mine = _order_threads() - before
    assert len(_worker_pids()) == workers and len(mine) == 1
    del it
    gc.collect()
    assert not _worker_pids() and _ended(mine)


def test_a_worker_error_is_raised_here_and_leaves_no_process():
    arrays = {"tokens/inputs": np.ones((4, 3), np.int32), "tokens/targets": np.ones((4, 2), np.int32),
              "lengths/inputs": np.full(4, 3), "lengths/targets": np.full(4, 2)}
    options = {"streams": ("label",), "feature_lengths": {"inputs": 3, "targets": 2}, "bos_id": 0}
    pool = host_workers.WorkerPool(arrays, "unpacked", options, workers=2, slot_bytes=4096)
    folder = pool._folder  # noqa: SLF001
    results = pool.map([np.array([0, 1]), np.array([2, 3]), np.array([3, 9])])  # example 9 does not exist
    np.testing.assert_array_equal(next(results)["label/decoder_target_tokens"], np.ones((2, 2), np.int32))
    next(results)
    with pytest.raises(host_workers.WorkerError, match=r"worker 0 failed:(.|\n)*IndexError: index 9 is out of bounds"):
        next(results)
    pool.close()
    assert all(p.poll() is not None for p in pool.processes) and not _worker_pids()
    assert not os.path.exists(folder)


def test_workers_must_be_a_non_negative_int(arith):
    with pytest.raises(ValueError, match="workers=-1"):
        pipeline.train_batches(arith, task_feature_lengths=LENGTHS["arith"], batch_size=8, workers=-1)


def test_train_config_input_workers_reaches_the_input_pipeline(monkeypatch):
    import types

    from sbs_jax.train import trainer as trainer_lib

    seen = {}
    monkeypatch.setattr(inputs, "train_batches", lambda task, **kw: seen.update(kw, task=task) or iter(()))
    config = types.SimpleNamespace(task_feature_lengths=LENGTHS["arith"], batch_size=8, seed=0, num_input_shards=None,
                                   objective=types.SimpleNamespace(streams=("label",)), pack=False, packed_lengths=None,
                                   input_workers=3)
    trainer_lib.Trainer.train_batches(types.SimpleNamespace(config=config, task="arith_sbs", layout=None), 4)
    assert seen["workers"] == 3 and seen["start_batch"] == 4 and seen["task"] == "arith_sbs"
    assert trainer_lib.TrainConfig.__dataclass_fields__["input_workers"].default == 0


def test_folders_of_dead_pools_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from sbs_jax.data.input_pipeline import host_workers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"sbs_host_pipeline_{dead.pid}_abc").mkdir()
    (tmp_path / f"sbs_host_pipeline_{os.getpid()}_def").mkdir()
    (tmp_path / "unrelated_123_x").mkdir()
    assert host_workers.remove_orphaned_folders(str(tmp_path)) == [f"sbs_host_pipeline_{dead.pid}_abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"sbs_host_pipeline_{os.getpid()}_def", "unrelated_123_x"])


def _pool_folders() -> set[pathlib.Path]:
    """The shared folders of this process's live pools."""
    return set(pathlib.Path("/dev/shm").glob(f"sbs_host_pipeline_{os.getpid()}_*"))


def _unit_files(ignore: set) -> int:
    """Unit buffer files in the shared folders of this process's pools, except those in `ignore`."""
    return sum(1 for folder in _pool_folders() - ignore for f in folder.glob("unit*"))


@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
def test_batches_handed_out_stay_intact_and_unit_buffers_are_recycled(arith, small_units, pack):
    # Batches are views of unit buffers (no copy): one that is kept must never see a later unit's rows, and
    # buffers nobody views any more must be reused, so a long iteration leaves a bounded number of files.
    kw = dict(task_feature_lengths=LENGTHS["arith"], batch_size=16, seed=3, backend="numpy", pack=pack)
    others = _pool_folders()  # of pools other tests left to the garbage collector
    it = pipeline.train_batches(arith, workers=2, **kw)
    kept, copies, most_files = [], [], 0
    for i, batch in enumerate(itertools.islice(it, 600)):  # ~150-300 units of 2-4 batches
        if i % 100 == 0:
            kept.append(batch)
            copies.append({s: {k: np.array(v) for k, v in rows.items()} for s, rows in batch.items()})
        most_files = max(most_files, _unit_files(others))

    def assert_kept_intact():
        for i, (batch, copy) in enumerate(zip(kept, copies)):
            for stream, rows in copy.items():
                for key, want in rows.items():
                    np.testing.assert_array_equal(batch[stream][key], want, err_msg=f"kept batch {i} {stream}/{key}")

    assert_kept_intact()
    # In flight (2 workers x depth 2), the unit being batched and the next, a packed batch's spanning unit,
    # and one unit per kept batch; without recycling this would be one file per unit.
    assert 0 < most_files <= 2 * 2 + 3 + len(kept), most_files
    it.close()
    assert _unit_files(others) == 0
    assert_kept_intact()  # kept batches outlive their pool: the mapping stays while they are referenced
