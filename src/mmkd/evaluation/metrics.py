"""Scoring answers against gold labels with mmkd's own ``evaluate`` metric module, loaded by local path, with a
95 % confidence interval for each accuracy and paired comparisons (``mmkd.evaluation.significance``); and,
for systems whose answers carry a score, ranking and calibration (``mmkd.evaluation.ranking``) and accuracy at
the val-chosen threshold (``mmkd.evaluation.thresholds``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import polars as pl

from mmkd.evaluation.calibration import KEY as CALIBRATION_KEY
from mmkd.evaluation.calibration import calibrated_metrics
from mmkd.evaluation.outcomes import accuracy, correct, joined, predicted, scores_and_labels
from mmkd.evaluation.ranking import ranking_metrics, reliability_bins, roc_points
from mmkd.evaluation.significance import mcnemar_exact, paired_bootstrap, wilson_interval
from mmkd.evaluation.thresholds import thresholded
from mmkd.schema import FALSIFIED

METRIC_KEYS = ("accuracy", "accuracy_falsified", "accuracy_pristine", "macro_f1", "unparsed_rate", "n")
SYSTEM_KEYS = (*METRIC_KEYS, "accuracy_ci95", "coverage")  # what ``score`` reports for each system
# What ``score_ranked`` adds: ranking and calibration of the scores (null without scores), accuracy with the rule
# score >= 0.5 and at the val-chosen threshold (whose value and rule it also reports)
RANKING_KEYS = ("auroc", "auprc", "ece", "brier", "ece_calibrated", "brier_calibrated", "n_scored")
THRESHOLD_KEYS = ("accuracy_at_half", "accuracy_at_threshold", "threshold", "threshold_rule")
BOOTSTRAP_SAMPLES = 2000  # resamples of the test items for a paired accuracy difference
MODULE_DIR = Path(__file__).parent / "modules" / "ooc_accuracy"


@cache
def _metric():
    import evaluate

    return evaluate.load(str(MODULE_DIR))


def score(answers: pl.DataFrame, gold: pl.DataFrame) -> dict:
    """The metrics of one model's answers on the items in ``gold``: the ``ooc_accuracy`` module's, the Wilson 95 %
    interval of the accuracy (``accuracy_ci95``) and the coverage (the fraction of items given a label)."""
    table = joined(answers, gold)
    result = _metric().compute(predictions=table["prediction"].to_list(), references=table["gold_label"].to_list())
    metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items() if k in METRIC_KEYS}
    hits, n = int(correct(answers, gold).sum()), len(table)
    interval = wilson_interval(hits, n)
    metrics["accuracy_ci95"] = [round(x, 6) for x in interval] if interval else None
    metrics["coverage"] = round(1 - result["unparsed_rate"], 6) if n else None
    return metrics


def compare(
    system: pl.DataFrame, other: pl.DataFrame, gold: pl.DataFrame, *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES
) -> dict:
    """``system`` against ``other`` on the same items: the accuracy difference with its paired bootstrap 95 %
    interval, and McNemar's exact p-value with the discordant counts."""
    a, b = correct(system, gold), correct(other, gold)
    diff, low, high = paired_bootstrap(a, b, samples=samples, seed=seed)
    p, only_system, only_other = mcnemar_exact(a, b)
    return {
        "accuracy_diff": round(diff, 6),
        "diff_ci95": [round(low, 6), round(high, 6)],
        "mcnemar_p": float(f"{p:.4g}"),  # 4 significant digits: a p of 3e-9 must not read as 0
        "only_system_right": only_system,
        "only_other_right": only_other,
    }


def confusion_rows(answers: pl.DataFrame, gold: pl.DataFrame) -> pl.DataFrame:
    """Per-item (actual, predicted) rows for a DVC confusion-matrix plot."""
    return gold.join(predicted(answers), on="id", how="left").select(
        pl.col("gold_label").alias("actual"), pl.col("prediction").alias("predicted")
    )


def score_ranked(answers: pl.DataFrame, gold: pl.DataFrame, threshold: dict | None = None) -> dict:
    """``score``'s metrics plus the scores' ranking and calibration (AUROC, AUPRC, ECE, Brier over the scored
    items; null where none is scored; ECE and Brier again after the val-fitted score calibration), accuracy with
    the rule ``score >= 0.5`` and at ``threshold`` (a val calibration, mmkd.evaluation.thresholds.calibrate; chosen
    without these labels)."""
    metrics = score(answers, gold)
    scores, labels = scores_and_labels(answers, gold)
    metrics |= ranking_metrics(scores, labels)
    metrics |= calibrated_metrics(scores, labels, (threshold or {}).get(CALIBRATION_KEY))  # fitted on val
    scored = metrics["n_scored"] > 0
    value = (threshold or {}).get("value")
    metrics["accuracy_at_half"] = accuracy(thresholded(answers, 0.5), gold) if scored else None
    metrics["accuracy_at_threshold"] = accuracy(thresholded(answers, value), gold) if value is not None else None
    metrics["threshold"] = value
    metrics["threshold_rule"] = (threshold or {}).get("rule") if value is not None else None
    return metrics


def roc_rows(answers: pl.DataFrame, gold: pl.DataFrame) -> pl.DataFrame:
    """The ROC curve of one system's scores (fpr, tpr, threshold) for a DVC plot; no rows without scores."""
    points = roc_points(*scores_and_labels(answers, gold))
    return pl.DataFrame(points, schema={"fpr": pl.Float64, "tpr": pl.Float64, "threshold": pl.Float64}, orient="row")


def reliability_rows(answers: pl.DataFrame, gold: pl.DataFrame) -> pl.DataFrame:
    """The reliability diagram of one system's scores (one row per non-empty ECE bin) for a DVC plot."""
    schema = {
        "bin_low": pl.Float64,
        "bin_high": pl.Float64,
        "mean_score": pl.Float64,
        "fraction_falsified": pl.Float64,
        "n": pl.Int64,
    }
    return pl.DataFrame(reliability_bins(*scores_and_labels(answers, gold)), schema=schema)


def class_accuracies(answers: pl.DataFrame, gold: pl.DataFrame) -> dict:
    """Where the gold labels carry a finer class (``gold_class``, e.g. VERITE's ``true``, ``miscaptioned`` and
    ``out-of-context``): the accuracy on each class (``accuracy_by_class``) and, for each falsified class, on it
    together with the pristine classes (``accuracy_by_pair``, e.g. ``true_vs_out-of-context``: the usual
    per-pair reporting). Empty where there is no class column."""
    if "gold_class" not in gold.columns or gold["gold_class"].is_null().all():
        return {}
    hits = pl.Series("correct", correct(answers, gold))
    table = gold.with_columns(hits)
    by_class = {
        c: round(float(table.filter(pl.col("gold_class") == c)["correct"].mean()), 6)
        for c in sorted(table["gold_class"].drop_nulls().unique())
    }
    pristine = sorted(table.filter(pl.col("gold_label") != FALSIFIED)["gold_class"].drop_nulls().unique())
    lies = sorted(table.filter(pl.col("gold_label") == FALSIFIED)["gold_class"].drop_nulls().unique())
    by_pair = {
        f"{'+'.join(pristine)}_vs_{c}": round(
            float(table.filter(pl.col("gold_class").is_in([*pristine, c]))["correct"].mean()), 6
        )
        for c in lies
    }
    return {"accuracy_by_class": by_class, "accuracy_by_pair": by_pair}
