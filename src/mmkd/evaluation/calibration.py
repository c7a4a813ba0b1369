"""Calibrated scores: Platt scaling of the label-slot logit, fitted on val, so that a score of 0.8 means that about
80 % of such items are falsified.

The raw score is P(falsified) at the answer's label slot (mmkd.label_slot); a distilled student's raw scores sit
within 1e-3 of 0 or 1, so its ECE equals its error rate. The calibrated score is ``sigmoid(a * z + b)`` with
``z = logit(raw score)``, the label-slot logit difference. ``a`` and ``b`` minimise the val negative log-likelihood
against Platt's smoothed targets, ``(n_falsified + 1) / (n_falsified + 2)`` for a falsified item and
``1 / (n_pristine + 2)`` for a pristine one: without them, val items that the scores separate perfectly would push
``a`` to infinity and leave the scores saturated.

Why Platt and not temperature scaling (``b = 0``, ``a = 1 / T``): the students' errors are one-sided (the demo's
Stage 2 is right on every pristine item and on 46 % of the falsified ones), so their well-calibrated score at
``z = 0`` is not 0.5; the bias ``b`` moves it there, and a single temperature cannot. Both keep the ranking: ``a`` is
positive (a fit with ``a <= 0`` is refused), so AUROC is unchanged and the val threshold maps onto the calibrated
scale (``calibrated_threshold``) with the same decisions.

A raw score of exactly 0 or 1 (a logit beyond what float64 resolves) is clipped to ``EPS`` from it first. The fit is
recorded with the adapter's val threshold (``with_score_calibration``; mmkd.evaluation.thresholds) and read by
``mmkd predict``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mmkd.evaluation.ranking import brier, expected_calibration_error

METHOD = "platt"
KEY = "score_calibration"  # in a val calibration (mmkd.evaluation.thresholds.calibrate's result)
EPS = 1e-15  # float64 resolves a score's distance from 1 down to about 1e-16: |logit| <= 34.5 after clipping
MAX_NEWTON_STEPS = 100


def logit(scores) -> np.ndarray:
    """log(p / (1 - p)) of each score, clipped to ``EPS`` from 0 and 1; NaN stays NaN."""
    p = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -u))


def _nll(a: float, b: float, z: np.ndarray, t: np.ndarray) -> float:
    u = a * z + b
    return float((t * np.logaddexp(0.0, -u) + (1 - t) * np.logaddexp(0.0, u)).sum())


def _newton(z: np.ndarray, t: np.ndarray, a: float, b: float) -> tuple[float, float]:
    """The (a, b) that minimise the NLL of ``sigmoid(a z + b)`` against targets ``t``: Newton steps, each halved
    until the NLL does not rise (the NLL is convex, so this converges)."""
    loss = _nll(a, b, z, t)
    for _ in range(MAX_NEWTON_STEPS):
        p = _sigmoid(a * z + b)
        w = p * (1 - p)
        grad = np.array([((p - t) * z).sum(), (p - t).sum()])
        hess = np.array([[(w * z * z).sum(), (w * z).sum()], [(w * z).sum(), w.sum()]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10:
            new = (a - scale * step[0], b - scale * step[1])
            new_loss = _nll(*new, z, t)
            if new_loss <= loss:
                break
            scale /= 2
        else:
            break
        (a, b), loss = new, new_loss
        if np.abs(scale * step).max() < 1e-12:
            break
    return a, b


def fit_platt(scores, labels) -> dict | None:
    """The Platt fit of raw ``scores`` (NaN: not scored, left out) against 0/1 ``labels`` (1: falsified) with the
    raw and calibrated ECE and Brier on these items; None when there is nothing to fit (no scored item of one
    class, a single distinct score) or the fit would reverse the ranking (``a <= 0``)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    z = logit(s)
    if positives == 0 or negatives == 0 or np.ptp(z) == 0:
        return None
    t = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = _newton(z, t, a=1.0, b=0.0)
    if not a > 0:
        return None
    fit = {"method": METHOD, "a": float(a), "b": float(b), "n": len(s)}
    calibrated = apply(s, fit)
    return fit | {
        "ece_raw": round(expected_calibration_error(s, y), 6),
        "ece": round(expected_calibration_error(calibrated, y), 6),
        "brier_raw": round(brier(s, y), 6),
        "brier": round(brier(calibrated, y), 6),
    }


def apply(scores, fit: dict | None) -> np.ndarray:
    """The calibrated scores ``sigmoid(a * logit(score) + b)`` (``fit`` None: the raw scores); NaN stays NaN."""
    s = np.asarray(scores, dtype=float)
    if fit is None:
        return s
    if fit.get("method") != METHOD:
        raise ValueError(f"unknown score calibration {fit.get('method')!r}; this mmkd applies {METHOD!r}")
    with np.errstate(invalid="ignore"):  # NaN (not scored) in, NaN out
        return _sigmoid(fit["a"] * logit(s) + fit["b"])


def calibrated_threshold(threshold: float | None, fit: dict | None) -> float | None:
    """A raw-score threshold on the calibrated scale: the same items pass it (``a > 0`` keeps the order)."""
    return None if threshold is None else float(apply([threshold], fit)[0])


def calibrate_answers(answers: pl.DataFrame, fit: dict | None) -> pl.DataFrame:
    """``answers`` with ``score`` calibrated by ``fit`` (None: as is) and the raw score kept in ``raw_score``."""
    raw = answers["score"].cast(pl.Float64)
    calibrated = apply(raw.fill_null(float("nan")).to_numpy(), fit)
    score = pl.Series("score", calibrated, dtype=pl.Float64).fill_nan(None)
    return answers.with_columns(score.cast(answers.schema["score"]), raw.alias("raw_score"))


def with_score_calibration(calibration: dict, val_answers: pl.DataFrame, val_gold: pl.DataFrame) -> dict:
    """A val calibration (mmkd.evaluation.thresholds.calibrate's result) with the Platt fit of the same val answers
    under ``score_calibration`` (null where there is nothing to fit)."""
    from mmkd.evaluation.outcomes import scores_and_labels

    return calibration | {KEY: fit_platt(*scores_and_labels(val_answers, val_gold))}


def calibrated_metrics(scores, labels, fit: dict | None) -> dict:
    """ECE and Brier of the calibrated scores (``ece_calibrated``, ``brier_calibrated``; null without a fit or a
    scored item), beside the raw ones that mmkd.evaluation.ranking reports."""
    calibrated = apply(scores, fit) if fit is not None else np.full(len(np.asarray(scores)), np.nan)
    ece, score = expected_calibration_error(calibrated, labels), brier(calibrated, labels)
    return {
        "ece_calibrated": None if ece is None else round(ece, 6),
        "brier_calibrated": None if score is None else round(score, 6),
    }
