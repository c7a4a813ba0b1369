"""How sure the test numbers are: a confidence interval for each accuracy, and paired comparisons of two systems
on the same test items.

- ``wilson_interval``: the Wilson score interval of a proportion (95 %: z = 1.959964), which unlike the normal
  approximation stays inside [0, 1] and is sound at accuracies near 0 or 1 and for small n.
- ``paired_bootstrap``: the difference of two systems' accuracies, with a percentile interval from resampling the
  test items with replacement (the same resampled items for both systems, so the pairing is kept); seeded.
- ``mcnemar_exact``: McNemar's exact test on the discordant items (one system right, the other wrong): the
  two-sided binomial p-value of the split, under the null that either system is as likely to be the right one;
  ``mcnemar_p`` is the same test from the two discordant counts (what ``mmkd summarize`` pools over seeds).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for ``correct`` successes out of ``n`` (None when n is 0)."""
    if n == 0:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """accuracy(a) - accuracy(b), and its percentile bootstrap interval; ``a`` and ``b`` are per-item 0/1
    correctness on the same items, in the same order."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(
            f"paired_bootstrap needs two equal-length, non-empty 0/1 vectors, got {a.shape} and {b.shape}"
        )
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """(two-sided exact p-value, items only ``a`` got right, items only ``b`` got right)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return mcnemar_p(only_a, only_b), only_a, only_b


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value from the discordant counts alone: twice the binomial(n, 1/2) tail at
    min(only_a, only_b), capped at 1 (1 when no item is discordant). Pooling seeds sums their counts."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
