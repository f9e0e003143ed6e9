"""How sure a comparison of two methods over several seeds is: the numbers `sbs quickstart` prints.

Pure functions of per-seed test accuracies (in %) and the test-set size; no JAX, so they test in
milliseconds and can serve any command that compares methods over seeds.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class MethodSummary:
    accuracies: tuple[float, ...]
    mean: float
    std: float                 # sample standard deviation over seeds (ddof = 1; 0 for a single seed)
    standard_error: float      # binomial standard error of one run's accuracy on the test set, at the mean


@dataclasses.dataclass(frozen=True)
class Comparison:
    baseline: MethodSummary
    method: MethodSummary
    pairs_won: int             # (baseline seed, method seed) pairs where the method's accuracy is higher
    pairs: int
    difference: float          # method mean - baseline mean, in points
    ci95: tuple[float, float]  # Welch t-interval of the difference (nan with fewer than 2 seeds a side)
    test_examples: int

    @property
    def every_seed_beats_every_seed(self) -> bool:
        return self.pairs > 0 and self.pairs_won == self.pairs


def summarize(accuracies: Sequence[float], test_examples: int) -> MethodSummary:
    if not accuracies:
        raise ValueError("no accuracies to summarize")
    if test_examples < 1:
        raise ValueError(f"test_examples must be positive, got {test_examples}")
    acc = tuple(float(a) for a in accuracies)
    mean = sum(acc) / len(acc)
    std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)) if len(acc) > 1 else 0.0
    p = min(max(mean / 100.0, 0.0), 1.0)
    return MethodSummary(acc, mean, std, 100.0 * math.sqrt(p * (1 - p) / test_examples))


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of mean(b) - mean(a) without assuming equal variances."""
    if len(a) < 2 or len(b) < 2:
        return (math.nan, math.nan)
    from scipy import stats  # a dependency of jax

    sa, sb = summarize(a, 1), summarize(b, 1)
    va, vb = sa.std ** 2 / len(a), sb.std ** 2 / len(b)
    diff = sb.mean - sa.mean
    se = math.sqrt(va + vb)
    if se == 0.0:
        return (diff, diff)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return (diff - half, diff + half)


def compare(baseline: Sequence[float], method: Sequence[float], test_examples: int) -> Comparison:
    """Per-seed accuracies (%) of a baseline and a method, each evaluated on the same test set."""
    b, m = summarize(baseline, test_examples), summarize(method, test_examples)
    won = sum(1 for x in b.accuracies for y in m.accuracies if y > x)
    return Comparison(b, m, won, len(b.accuracies) * len(m.accuracies), m.mean - b.mean,
                      welch_interval(b.accuracies, m.accuracies), test_examples)
