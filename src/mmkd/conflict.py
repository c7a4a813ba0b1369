"""The conflict split: find the training items on which the teachers disagree, read gold labels for those only,
and turn them into Stage-2 data.

Rule (any number of teachers): an item is a *conflict* when its teachers' answers do not all carry the same
parsed label. With ``unparsed="conflict"`` (default) an unparsed or failed answer counts as disagreeing with
everyone, so an item that only one teacher could label is checked against gold too. With ``unparsed="ignore"``
such answers are left out and only parsed labels are compared; an item with fewer than two parsed labels is
then never a conflict. Items every teacher skipped (bad image, empty caption) are neither: they are unusable.

Stage-2 data for a conflict item, given its gold label:
- SFT rows: the answer of every teacher whose label equals gold (``chosen``);
- DPO pairs: every (agreeing teacher, other teacher) pair; the other teacher's raw text is ``rejected``, which for
  an unparsed answer teaches the format too. Failed answers with no text give no pair.
A conflict item on which no teacher matches gold has no ``chosen`` answer; it is counted, not invented.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import polars as pl

from mmkd.schema import CONFLICT_SCHEMA, PAIR_SCHEMA, SFT_ROW_SCHEMA, SchemaError, frame, read_gold

UNPARSED_POLICIES = ("conflict", "ignore")  # split.unparsed
STAGE1_TARGETS = ("all", "agreed", "majority")  # stage1.targets (stage1_rows)


def answers_wide(answers: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per item: ``<teacher>__label``, ``<teacher>__status`` and ``<teacher>__raw_text`` for every teacher."""
    if not answers:
        raise ValueError("no teachers: the conflict split needs the answers of at least one teacher")
    names = sorted(answers)
    wide = None
    for name in names:
        df = answers[name].select(
            "id",
            pl.col("label").alias(f"{name}__label"),
            pl.col("status").alias(f"{name}__status"),
            pl.col("raw_text").alias(f"{name}__raw_text"),
        )
        if wide is None:
            wide = df
            ids = set(df["id"])
            continue
        if set(df["id"]) != ids:
            raise SchemaError(
                f"teacher {name!r} answered a different set of items than {names[0]!r}; re-run labelling"
            )
        wide = wide.join(df, on="id", how="left", maintain_order="left")
    return wide


def find_conflicts(wide: pl.DataFrame, teachers: list[str], unparsed: str = "conflict") -> pl.DataFrame:
    """Add ``usable`` and ``conflict`` columns to the wide table (see the module docstring for the rule)."""
    if unparsed not in UNPARSED_POLICIES:
        raise ValueError(f"split.unparsed must be one of {UNPARSED_POLICIES}, got {unparsed!r}")
    labels = pl.concat_list([pl.col(f"{t}__label") for t in teachers]).list.drop_nulls()
    n_distinct = labels.list.unique().list.len()
    n_parsed = labels.list.len()
    n_answered = pl.sum_horizontal([(pl.col(f"{t}__status") != "skipped").cast(pl.Int32) for t in teachers])
    if unparsed == "conflict":
        conflict = (n_distinct > 1) | (n_parsed < len(teachers))
    else:
        conflict = n_distinct > 1
    usable = n_answered > 0
    return wide.with_columns(usable=usable, conflict=conflict & usable)


def conflict_split(
    answers: dict[str, pl.DataFrame], gold_file: str | Path, *, unparsed: str = "conflict"
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """Split the training items. Returns (conflicts, sft_rows, pairs, metrics); gold is read for conflicts only.

    The three tables have the schemas ``CONFLICT_SCHEMA``, ``SFT_ROW_SCHEMA`` and ``PAIR_SCHEMA`` (mmkd.schema).
    """
    teachers = sorted(answers)
    wide = find_conflicts(answers_wide(answers), teachers, unparsed)
    conflict_ids = wide.filter("conflict")["id"]
    gold_all = read_gold(gold_file)
    gold = gold_all.filter(pl.col("id").is_in(conflict_ids.implode()))  # the only gold labels we use
    missing = set(conflict_ids) - set(gold["id"])
    if missing:
        raise SchemaError(f"{gold_file}: no gold label for conflict item(s) {sorted(missing)[:5]}; label them")
    del gold_all

    rows = wide.filter("conflict").join(gold, on="id", how="left", maintain_order="left")
    conflicts, sft, pairs = [], [], []
    for row in rows.iter_rows(named=True):
        agree = [t for t in teachers if row[f"{t}__label"] == row["gold_label"]]
        others = [t for t in teachers if t not in agree and row[f"{t}__raw_text"]]
        conflicts.append({"id": row["id"], "gold_label": row["gold_label"], "n_agree": len(agree)})
        sft += [{"id": row["id"], "source": t, "completion": row[f"{t}__raw_text"]} for t in agree]
        pairs += [
            {
                "id": row["id"],
                "chosen_source": a,
                "chosen": row[f"{a}__raw_text"],
                "rejected_source": r,
                "rejected": row[f"{r}__raw_text"],
            }
            for a, r in itertools.product(agree, others)
        ]
    conflicts_df = frame(conflicts, CONFLICT_SCHEMA)
    sft_df, pairs_df = frame(sft, SFT_ROW_SCHEMA), frame(pairs, PAIR_SCHEMA)
    return conflicts_df, sft_df, pairs_df, split_metrics(wide, teachers, conflicts_df, sft_df, pairs_df)


def split_metrics(
    wide: pl.DataFrame, teachers: list[str], conflicts: pl.DataFrame, sft: pl.DataFrame, pairs: pl.DataFrame
) -> dict:
    """Counts and rates for ``metrics/split.json``."""
    n = len(wide)
    rate = (lambda k: round(k / n, 6)) if n else (lambda k: 0.0)
    per_teacher = {
        t: {s: rate(int((wide[f"{t}__status"] == s).sum())) for s in ("unparsed", "error", "skipped")}
        for t in teachers
    }
    agreement = {}
    for a, b in itertools.combinations(teachers, 2):
        both = wide.filter(pl.col(f"{a}__label").is_not_null() & pl.col(f"{b}__label").is_not_null())
        same = int((both[f"{a}__label"] == both[f"{b}__label"]).sum())
        agreement[f"{a}|{b}"] = {"rate": round(same / len(both), 6) if len(both) else None, "n_both_parsed": len(both)}
    return {
        "n_items": n,
        "n_usable": int(wide["usable"].sum()),
        "conflict_count": len(conflicts),
        "conflict_rate": rate(len(conflicts)),
        "gold_labels_read": len(conflicts),
        "labelled_fraction": rate(len(conflicts)),
        "conflicts_without_chosen": int((conflicts["n_agree"] == 0).sum()) if len(conflicts) else 0,
        "stage2_sft_rows": len(sft),
        "stage2_dpo_pairs": len(pairs),
        "unparsed_rate": {t: v["unparsed"] for t, v in per_teacher.items()},
        "error_rate": {t: v["error"] for t, v in per_teacher.items()},
        "skipped_rate": {t: v["skipped"] for t, v in per_teacher.items()},
        "agreement": agreement,
    }


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
