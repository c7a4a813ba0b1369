"""Scoring answers against gold labels with mmkd's own ``evaluate`` metric module, loaded by local path."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import polars as pl

METRIC_KEYS = ("accuracy", "accuracy_falsified", "accuracy_pristine", "macro_f1", "unparsed_rate", "n")
MODULE_DIR = Path(__file__).parent / "modules" / "ooc_accuracy"


@cache
def _metric():
    import evaluate

    return evaluate.load(str(MODULE_DIR))


def predicted(answers: pl.DataFrame) -> pl.DataFrame:
    """id and ``prediction``: the parsed label, or the status (``unparsed``/``error``/``skipped``) when none."""
    return answers.select(
        "id", pl.when(pl.col("status") == "ok").then("label").otherwise("status").alias("prediction")
    )


def score(answers: pl.DataFrame, gold: pl.DataFrame) -> dict:
    """The metrics of one model's answers on the items in ``gold`` (every gold item must have an answer)."""
    joined = gold.join(predicted(answers), on="id", how="left")
    missing = joined.filter(pl.col("prediction").is_null())["id"].to_list()
    if missing:
        raise ValueError(f"no answer for {len(missing)} test item(s), e.g. {missing[:3]}; re-run the labelling")
    result = _metric().compute(predictions=joined["prediction"].to_list(), references=joined["gold_label"].to_list())
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items() if k in METRIC_KEYS}


def confusion_rows(answers: pl.DataFrame, gold: pl.DataFrame) -> pl.DataFrame:
    """Per-item (actual, predicted) rows for a DVC confusion-matrix plot."""
    return gold.join(predicted(answers), on="id", how="left").select(
        pl.col("gold_label").alias("actual"), pl.col("prediction").alias("predicted")
    )
