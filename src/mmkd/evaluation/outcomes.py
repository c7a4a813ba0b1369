"""One system's answers against gold, item by item: its prediction, whether it is right, its score and the 0/1 label.

The metrics (mmkd.evaluation.metrics) and the val threshold (mmkd.evaluation.thresholds) both start from these, so
that an item counts as right, and a score pairs with its label, the same way in both.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mmkd.schema import FALSIFIED


def predicted(answers: pl.DataFrame) -> pl.DataFrame:
    """id and ``prediction``: the parsed label, or the status (``unparsed``/``error``/``skipped``) when none."""
    return answers.select(
        "id", pl.when(pl.col("status") == "ok").then("label").otherwise("status").alias("prediction")
    )


def joined(answers: pl.DataFrame, gold: pl.DataFrame, split: str = "test") -> pl.DataFrame:
    """gold's items, in gold's order, with each one's prediction; every gold item of ``split`` must have an answer
    (a missing one means the answers are stale, and counting it as wrong would hide that)."""
    table = gold.join(predicted(answers), on="id", how="left", maintain_order="left")
    missing = table.filter(pl.col("prediction").is_null())["id"].to_list()
    if missing:
        raise ValueError(f"no answer for {len(missing)} {split} item(s), e.g. {missing[:3]}; re-run the labelling")
    return table


def correct(answers: pl.DataFrame, gold: pl.DataFrame, split: str = "test") -> np.ndarray:
    """Per gold item, in gold's order: whether the answer's label equals gold (no label counts as wrong)."""
    table = joined(answers, gold, split)
    return (table["prediction"] == table["gold_label"]).to_numpy()


def accuracy(answers: pl.DataFrame, gold: pl.DataFrame, split: str = "test") -> float | None:
    """The fraction of gold items whose answer's label equals gold, rounded to 6 digits (None without items)."""
    return round(float(correct(answers, gold, split).mean()), 6) if len(gold) else None


def scores_and_labels(answers: pl.DataFrame, gold: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per gold item, in gold's order: the answer's score (NaN without one) and 1 for falsified, 0 for pristine."""
    table = gold.join(answers.select("id", "score"), on="id", how="left", maintain_order="left")
    return (
        table["score"].fill_null(float("nan")).to_numpy().astype(float),
        (table["gold_label"] == FALSIFIED).to_numpy().astype(float),
    )
