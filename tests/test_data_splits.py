"""Seeded validation carve-out and nested training fractions."""
import pytest

from sbs_jax.data.records import data_dir as records
from sbs_jax.data.registry import splits
from sbs_jax.data.records.data_dir import DataError


@pytest.fixture(scope="module")
def cqa(datasets_dir):
    return records.read_split(datasets_dir, "cqa", "train").examples


def _ids(examples):
    return [id(ex) for ex in examples]


def test_fractions_are_nested_and_deterministic(cqa):
    kept = {}
    for fraction in (0.125, 0.25, 0.5, 1.0):
        a = splits.plan_splits({"train": cqa}, train_fraction=fraction, seed=7)["train"]
        b = splits.plan_splits({"train": cqa}, train_fraction=fraction, seed=7)["train"]
        assert _ids(a) == _ids(b)
        assert len(a) == round(fraction * len(cqa))
        kept[fraction] = set(_ids(a))
    assert kept[0.125] < kept[0.25] < kept[0.5] < kept[1.0]
    other = splits.plan_splits({"train": cqa}, train_fraction=0.25, seed=8)["train"]
    assert set(_ids(other)) != kept[0.25]


def test_validation_carve_out_is_disjoint_and_seeded(cqa):
    planned = splits.plan_splits({"train": cqa}, valid_from_train=0.1, seed=0)
    train, valid = set(_ids(planned["train"])), set(_ids(planned["validation"]))
    assert len(valid) == round(0.1 * len(cqa)) and not train & valid
    assert train | valid == set(_ids(cqa))
    again = splits.plan_splits({"train": cqa}, valid_from_train=0.1, seed=0)
    assert _ids(again["validation"]) == _ids(planned["validation"])
    # Subsets are taken after the carve-out, from what stays in train, and stay nested there.
    small = splits.plan_splits({"train": cqa}, valid_from_train=0.1, train_fraction=0.25, seed=0)
    large = splits.plan_splits({"train": cqa}, valid_from_train=0.1, train_fraction=0.5, seed=0)
    assert set(_ids(small["train"])) < set(_ids(large["train"])) <= train
    assert _ids(small["validation"]) == _ids(planned["validation"])


def test_other_splits_are_untouched(cqa):
    planned = splits.plan_splits({"train": cqa[:100], "test": cqa[100:150]}, valid_from_train=0.2, seed=1)
    assert sorted(planned) == ["test", "train", "validation"]
    assert _ids(planned["test"]) == _ids(cqa[100:150])


def test_carving_needs_a_train_split(cqa):
    with pytest.raises(DataError, match="no 'train' split to carve validation from"):
        splits.plan_splits({"valid": cqa[:10]}, valid_from_train=0.1, where="esnli")
    with pytest.raises(DataError, match="already has a 'validation' split"):
        splits.plan_splits({"train": cqa[:10], "validation": cqa[10:20]}, valid_from_train=0.1)
    with pytest.raises(ValueError, match="train_fraction must be in \\(0, 1\\]"):
        splits.plan_splits({"train": cqa[:10]}, train_fraction=1.5)
