"""Stage-1 targets: which parsed teacher answers the student imitates (``stage1.targets``); no gold label is read."""

from __future__ import annotations

import polars as pl

from mmkd.selection.conflicts import answers_wide, find_conflicts

STAGE1_TARGETS = ("all", "agreed", "majority")  # stage1.targets (stage1_rows)


def stage1_rows(answers: dict[str, pl.DataFrame], *, policy: str = "all") -> pl.DataFrame:
    """Stage-1 targets: one row per kept parsed teacher answer (id, source, completion).

    ``all``: every parsed answer of every teacher, so an item the teachers disagree on appears once per teacher
    with conflicting targets (the paper's Stage 1 learns from all teacher outputs; Stage 2 resolves conflicts).
    ``agreed``: only items on which every teacher parsed and agreed.
    ``majority``: every parsed answer whose label is the strict majority of the item's parsed labels; an item with
    no strict majority (a tie, e.g. two teachers that disagree) keeps all its parsed answers, as under ``all``. With
    two teachers this is ``all``; with three, a 2-1 item keeps the two agreeing answers. No gold label is read.
    """
    if policy not in STAGE1_TARGETS:
        raise ValueError(f"stage1.targets must be one of {STAGE1_TARGETS}, got {policy!r}")
    teachers = sorted(answers)
    frames = [
        answers[t]
        .filter(pl.col("status") == "ok")
        .select("id", pl.lit(t).alias("source"), "label", pl.col("raw_text").alias("completion"))
        for t in teachers
    ]
    rows = pl.concat(frames)
    if policy == "agreed":
        wide = find_conflicts(answers_wide(answers), teachers, "conflict")
        keep = wide.filter(pl.col("usable") & ~pl.col("conflict"))["id"]
        rows = rows.filter(pl.col("id").is_in(keep.implode()))
    elif policy == "majority":
        votes, n_parsed = pl.len().over("id", "label"), pl.len().over("id")
        has_majority = votes.max().over("id") * 2 > n_parsed
        rows = rows.filter((votes * 2 > n_parsed) | ~has_majority)
    return rows.drop("label").sort("id", "source")
