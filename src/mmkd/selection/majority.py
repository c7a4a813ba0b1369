"""The teachers' majority vote as a system of its own (the ``majority_vote`` baseline at evaluation): what the
teachers say together, without a student, so that a student is measured against simply asking them all."""

from __future__ import annotations

import polars as pl

from mmkd.schema import ANSWER_SCHEMA, frame
from mmkd.selection.conflicts import answers_wide, majority_label


def majority_vote(answers: dict[str, pl.DataFrame], unparsed: str = "conflict") -> pl.DataFrame:
    """The teachers' vote as an answers table (the ``majority_vote`` baseline: no student). An item with a strict
    majority (``majority_label``) gets that label; any other item abstains: status ``abstain``, no label, which
    scores as wrong (the honest default; the metrics report the coverage)."""
    teachers = sorted(answers)
    wide = answers_wide(answers).with_columns(label=majority_label(teachers, unparsed))
    rows = wide.select(
        "id",
        pl.lit("majority_vote").alias("source"),
        "label",
        pl.when(pl.col("label").is_null()).then(pl.lit("abstain")).otherwise(pl.lit("ok")).alias("status"),
        pl.when(pl.col("label").is_null())
        .then(pl.lit(f"no strict majority among {len(teachers)} teachers"))
        .alias("error"),
    )
    return frame(rows.to_dicts(), ANSWER_SCHEMA)
