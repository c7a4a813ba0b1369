"""Ranking and calibration of a detector's scores (``score`` = P(falsified)), and the choice of an operating
threshold on val. Falsified is the positive class throughout.

- ``auroc``: area under the ROC curve (scikit-learn's ``roc_auc_score``; tied scores count half), None when the
  items are all of one class (it is undefined there).
- ``auprc``: average precision (scikit-learn's ``average_precision_score``, the step-wise area under the
  precision-recall curve), None without a positive.
- ``expected_calibration_error``: ``bins`` equal-width bins of the score over [0, 1] (a score of exactly 1 falls in
  the last bin); the mean over items of |fraction falsified in its bin - mean score in its bin|, i.e. the bins'
  gaps weighted by their share of items. Empty bins do not count.
- ``brier``: mean squared difference between the score and the 0/1 label.
- ``choose_threshold``: on val, the threshold whose rule ``score >= t -> falsified`` maximises accuracy (or, with
  ``max_fpr``, maximises accuracy among those whose false-positive rate is at most ``max_fpr``); ties go to the
  higher threshold, the more conservative flag. The candidates are the distinct scores, plus one above them all
  (flag nothing).
- ``roc_points`` and ``reliability_bins``: the points of the ROC curve and of the reliability diagram (the same
  bins as the ECE), for DVC plots.
Items without a score (unparsed answers, a backend with no logprobs) are left out, and ``n_scored`` says how many
were used.
"""

from __future__ import annotations

import numpy as np

# scikit-learn's metrics are imported where they are used: loading sklearn.metrics costs about 1 s of CPU, and the
# training stages import this module only for ``choose_threshold``.

ECE_BINS = 10


def _arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels as float arrays, without the items that have no score."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be equal-length vectors, got {s.shape} and {y.shape}")
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    if ((s < 0) | (s > 1)).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("scores must be probabilities in [0, 1] and labels 0 or 1")
    return s, y


def auroc(scores, labels) -> float | None:
    from sklearn.metrics import roc_auc_score

    s, y = _arrays(scores, labels)
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def auprc(scores, labels) -> float | None:
    from sklearn.metrics import average_precision_score

    s, y = _arrays(scores, labels)
    return float(average_precision_score(y, s)) if y.sum() > 0 else None


def expected_calibration_error(scores, labels, bins: int = ECE_BINS) -> float | None:
    s, y = _arrays(scores, labels)
    if len(s) == 0:
        return None
    index = np.minimum((s * bins).astype(int), bins - 1)
    gaps = [
        abs(y[index == b].mean() - s[index == b].mean()) * (index == b).sum()
        for b in range(bins)
        if (index == b).any()
    ]
    return float(sum(gaps) / len(s))


def brier(scores, labels) -> float | None:
    s, y = _arrays(scores, labels)
    return float(((s - y) ** 2).mean()) if len(s) else None


def choose_threshold(scores, labels, *, max_fpr: float | None = None) -> float | None:
    """The val-chosen threshold (see the module docstring); None when no item has a score or none meets max_fpr."""
    s, y = _arrays(scores, labels)
    if len(s) == 0:
        return None
    best = None
    negatives = max(int((y == 0).sum()), 1)
    for t in sorted({*s.tolist(), float(np.nextafter(s.max(), np.inf))}, reverse=True):
        flagged = s >= t
        if max_fpr is not None and (flagged & (y == 0)).sum() / negatives > max_fpr:
            continue
        accuracy = float((flagged == (y == 1)).mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, t)
    return None if best is None else best[1]


def ranking_metrics(scores, labels) -> dict:
    """AUROC, AUPRC, ECE and Brier of one system's scores, rounded, with ``n_scored``."""
    s, _ = _arrays(scores, labels)
    values = {
        "auroc": auroc(scores, labels),
        "auprc": auprc(scores, labels),
        "ece": expected_calibration_error(scores, labels),
        "brier": brier(scores, labels),
    }
    return {k: (None if v is None else round(v, 6)) for k, v in values.items()} | {"n_scored": len(s)}


def roc_points(scores, labels) -> list[tuple[float, float, float]]:
    """(false-positive rate, true-positive rate, threshold) along the ROC curve; empty when it is undefined."""
    from sklearn.metrics import roc_curve

    s, y = _arrays(scores, labels)
    if len(np.unique(y)) < 2:
        return []
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return [(float(f), float(t), float(min(h, 1.0))) for f, t, h in zip(fpr, tpr, thresholds, strict=True)]


def reliability_bins(scores, labels, bins: int = ECE_BINS) -> list[dict]:
    """Per non-empty bin of the ECE: its range, its items' mean score and fraction falsified, and their count."""
    s, y = _arrays(scores, labels)
    index = np.minimum((s * bins).astype(int), bins - 1)
    return [
        {
            "bin_low": round(b / bins, 6),
            "bin_high": round((b + 1) / bins, 6),
            "mean_score": round(float(s[index == b].mean()), 6),
            "fraction_falsified": round(float(y[index == b].mean()), 6),
            "n": int((index == b).sum()),
        }
        for b in range(bins)
        if (index == b).any()
    ]
