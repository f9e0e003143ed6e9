"""The statistics `sbs quickstart` prints, against numpy / scipy computed independently."""
import math

import numpy as np
import pytest
from scipy import stats

from sbs_jax import seed_comparison


def test_compare_matches_numpy_and_scipy():
    ft, sbs = [41.0, 43.5, 40.25], [47.0, 45.5, 49.0, 46.0]
    c = seed_comparison.compare(ft, sbs, test_examples=2000)
    assert c.baseline.mean == pytest.approx(np.mean(ft)) and c.method.mean == pytest.approx(np.mean(sbs))
    assert c.baseline.std == pytest.approx(np.std(ft, ddof=1)) and c.method.std == pytest.approx(np.std(sbs, ddof=1))
    assert c.difference == pytest.approx(np.mean(sbs) - np.mean(ft))
    # scipy's Welch interval of mean(sbs) - mean(ft).
    ci = stats.ttest_ind(sbs, ft, equal_var=False).confidence_interval(0.95)
    assert c.ci95 == pytest.approx((ci.low, ci.high))
    p = np.mean(sbs) / 100
    assert c.method.standard_error == pytest.approx(100 * math.sqrt(p * (1 - p) / 2000))
    assert (c.pairs_won, c.pairs) == (12, 12) and c.every_seed_beats_every_seed


def test_pairs_count_only_strict_wins():
    c = seed_comparison.compare([50.0, 60.0], [55.0, 60.0], test_examples=100)
    # 55 > 50; 60 > 50; 60 == 60 is not a win; 55 < 60.
    assert (c.pairs_won, c.pairs) == (2, 4) and not c.every_seed_beats_every_seed


def test_one_seed_has_no_interval_and_bad_input_is_an_error():
    c = seed_comparison.compare([50.0], [55.0], test_examples=100)
    assert c.baseline.std == 0.0 and all(math.isnan(x) for x in c.ci95)
    with pytest.raises(ValueError, match="no accuracies"):
        seed_comparison.compare([], [55.0], test_examples=100)
    with pytest.raises(ValueError, match="test_examples"):
        seed_comparison.compare([50.0], [55.0], test_examples=0)
