"""The single-rationale layouts give the same bytes as before several rationales per example existed.

The hashes below were computed on main at commit 11ad5a6 (before `Example.rationales`, the rationale filters
and per-epoch rationale picking were added), by this very file's `_batch_digest`. A change that alters one
batch of a single-rationale task (paper layout `llm/<split>_CoT_<i>.json`, or the embedded task with its
default teacher) changes a hash.
"""
import hashlib
import itertools

import numpy as np
import pytest

from sbs_jax import tasks
from sbs_jax.data.input_pipeline import pipeline
from sbs_jax.data.vocab import sentencepiece_vocab as vocab

LENGTHS = {"inputs": 40, "targets": 8, "rationales": 24}
GOLDEN = {
    ("svamp_sbs", "numpy", False):
        "cf50ea6d9bd52d0db9fd605f174a2ebb47fa34c5d48d2fc78318892c0e2c3d26",
    ("svamp_sbs", "numpy", True):
        "e62cd65e5f967dee855b9273d659055273136280a6ecaf4cdb7156ae92f2d808",
    ("svamp_sbs", "tf.data", False):
        "cf50ea6d9bd52d0db9fd605f174a2ebb47fa34c5d48d2fc78318892c0e2c3d26",
    ("arith_sbs", "numpy", False):
        "2a729639a70ac9d16230579a3101ee111a7b301e02ac1fe6c1fdd4e44fca4f77",
    ("arith_sbs", "numpy", True):
        "b0c5a5ad2215ff6f129267f38614b88ddf71ed944b948b4b092fb2cdeba6ca6c",
}


def _batch_digest(batches, n: int) -> str:
    h = hashlib.sha256()
    for batch in itertools.islice(batches, n):
        for stream in sorted(batch):
            for key in sorted(batch[stream]):
                array = np.ascontiguousarray(batch[stream][key])
                h.update(f"{stream}/{key}/{array.dtype}/{array.shape}".encode())
                h.update(array.tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def registered(tmp_path_factory, datasets_dir):
    from sbs_jax.data.records import data_dir as records
    texts = vocab.model_texts(records.read_split(datasets_dir, "svamp", "train").examples)
    spiece = vocab.train_vocabulary(texts, tmp_path_factory.mktemp("vocab"), vocab_size=600, seed=0)
    tasks.register_paper_tasks(str(datasets_dir), datasets=["svamp"], valid_from_train=0.1, vocabulary=str(spiece))
    tasks.register_arith_tasks(train_fraction=0.0625, vocab_cache_dir=str(tmp_path_factory.mktemp("arith")))


def digest(task: str, backend: str, pack: bool) -> str:
    batches = pipeline.train_batches(task, task_feature_lengths=LENGTHS, batch_size=8, seed=3, pack=pack,
                                     backend=backend)
    return _batch_digest(batches, 60)


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_single_rationale_batches_are_byte_identical_to_main(registered, key):
    assert digest(*key) == GOLDEN[key], key
