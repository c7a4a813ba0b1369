"""The gold-label split: choose the training items that get a gold label (the paper: those on which the teachers
disagree), read gold for those only, and turn them into Stage-2 data.

Selection (``split.select``, ``Selection``): ``rule`` picks the candidates among the usable items:
- ``conflict`` (the paper's, the default): the conflict items below;
- ``no_majority``: items whose teachers' labels have no strict majority (more than half of the teachers; with
  ``unparsed="ignore"``, more than half of the parsed labels). With two teachers this is ``conflict``; with three
  or more it reads fewer labels (a 2-1 item has a majority);
- ``random``: every usable item, so that the budget below takes a seeded random sample of them;
- ``all``: every usable item;
- ``uncertain`` (needs a budget): the conflicts first, then, to fill the budget, the items the teachers agree on
  whose scores are nearest 0.5 (query by committee's second signal: a confident agreement needs no person). An
  item's uncertainty is its least confident teacher's, 1 - |2 * score - 1|; agreements without scores come last.
An optional ``budget`` caps the gold labels read: a count (an int), or a fraction of the usable items (a float in
(0, 1], rounded down). When the rule selects more, the kept items are those first in the order of
SHA-256(``"<seed>:<item id>"``): a seeded sub-sample that is the same on every machine and library version and
that, for a larger budget, keeps every item a smaller one kept.

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

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mmkd.annotation.labels import ORIGIN, GoldSource
from mmkd.schema import CONFLICT_SCHEMA, LABELS, PAIR_SCHEMA, SFT_ROW_SCHEMA, SchemaError, frame

UNPARSED_POLICIES = ("conflict", "ignore")  # split.unparsed
SELECTION_RULES = ("conflict", "no_majority", "random", "all", "uncertain")  # split.select.rule


def answers_wide(answers: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per item: ``<teacher>__label``, ``__status``, ``__raw_text`` and ``__score`` for every teacher."""
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
            (pl.col("score") if "score" in answers[name].columns else pl.lit(None, pl.Float64)).alias(
                f"{name}__score"
            ),
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


def majority_label(teachers: list[str], unparsed: str = "conflict") -> pl.Expr:
    """On a wide table: the label more than half of the voters gave, else null (a tie, or too few parsed labels).

    The voters are all the teachers (an unparsed, failed or skipped answer is a vote for neither label) with
    ``unparsed="conflict"``, and only the parsed labels with ``"ignore"``."""
    votes = {
        label: pl.sum_horizontal([(pl.col(f"{t}__label") == label).fill_null(False).cast(pl.Int32) for t in teachers])
        for label in LABELS
    }
    voters = pl.lit(len(teachers)) if unparsed == "conflict" else pl.sum_horizontal(list(votes.values()))
    out = pl.lit(None, dtype=pl.String)
    for label, n in votes.items():
        out = pl.when(n * 2 > voters).then(pl.lit(label)).otherwise(out)
    return out


@dataclass(frozen=True)
class Selection:
    """Which training items get a gold label (``split.select``); see the module docstring."""

    rule: str = "conflict"
    budget: int | float | None = None  # gold labels at most: a count, or a fraction of the usable items
    seed: int = 0  # orders the sub-sample when the rule selects more than the budget

    def __post_init__(self):
        if self.rule not in SELECTION_RULES:
            raise ValueError(f"split.select.rule must be one of {SELECTION_RULES}, got {self.rule!r}")
        budget = self.budget
        if isinstance(budget, bool) or not (budget is None or isinstance(budget, int | float)):
            raise ValueError(f"split.select.budget must be a count, a fraction or null, got {budget!r}")
        if isinstance(budget, int) and budget < 0:
            raise ValueError(f"split.select.budget must be >= 0 items, got {budget}")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(f"split.select.budget as a fraction must be in (0, 1], got {budget}")
        if self.rule in ("random", "uncertain") and budget is None:
            raise ValueError(
                f"split.select.rule {self.rule} needs a budget (a count or a fraction of the train items)"
            )

    def cap(self, n_usable: int) -> int | None:
        """The most gold labels this selection may read from ``n_usable`` items (None: no cap)."""
        if self.budget is None:
            return None
        return self.budget if isinstance(self.budget, int) else int(self.budget * n_usable)


def sample_order(ids: list[str], seed: int) -> list[str]:
    """``ids`` in the seeded order the budget keeps them in (the same on every machine)."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def select_items(wide: pl.DataFrame, teachers: list[str], selection: Selection, unparsed: str) -> pl.DataFrame:
    """Add ``candidate`` (chosen by the rule) and ``selected`` (within the budget) columns to the table that
    ``find_conflicts`` returns."""
    if selection.rule in ("conflict", "uncertain"):
        candidate = pl.col("conflict")
    elif selection.rule == "no_majority":
        candidate = pl.col("usable") & majority_label(teachers, unparsed).is_null()
    else:  # random, all
        candidate = pl.col("usable")
    wide = wide.with_columns(candidate=candidate & pl.col("usable"))
    cap = selection.cap(int(wide["usable"].sum()))
    ids = wide.filter("candidate")["id"].to_list()
    if cap is not None and len(ids) > cap:
        ids = sample_order(ids, selection.seed)[:cap]
    if selection.rule == "uncertain" and cap is not None and len(ids) < cap:
        ids += most_uncertain_agreements(wide, teachers, selection.seed)[: cap - len(ids)]
    return wide.with_columns(selected=pl.col("id").is_in(pl.Series(ids, dtype=pl.String).implode()))


def most_uncertain_agreements(wide: pl.DataFrame, teachers: list[str], seed: int) -> list[str]:
    """The usable items that are not conflicts, the least confident first: by the largest 1 - |2 * score - 1| over
    the teachers; ties in seeded order, unscored items last."""
    agreed = wide.filter(pl.col("usable") & ~pl.col("conflict"))
    uncertainty = pl.max_horizontal([1 - (2 * pl.col(f"{t}__score") - 1).abs() for t in teachers])
    ranked = agreed.select("id", uncertainty.alias("u"))
    order = {i: n for n, i in enumerate(sample_order(ranked["id"].to_list(), seed))}
    rows = sorted(ranked.iter_rows(), key=lambda r: (r[1] is None, -(r[1] or 0.0), order[r[0]]))
    return [r[0] for r in rows]


def conflict_split(
    answers: dict[str, pl.DataFrame],
    gold_file: str | Path | GoldSource,
    *,
    unparsed: str = "conflict",
    selection: Selection | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """Split the training items. Returns (selected, sft_rows, pairs, metrics); gold is read for the selected items
    only (by default the conflict items), from ``gold_file`` (a gold table) or a ``GoldSource`` (the dataset's gold
    and people's labels, mmkd.annotation.labels).

    The three tables have the schemas ``CONFLICT_SCHEMA``, ``SFT_ROW_SCHEMA`` and ``PAIR_SCHEMA`` (mmkd.schema).
    A selected item on which every teacher agrees with gold gives SFT rows and no pair.
    """
    selection = selection or Selection()
    teachers = sorted(answers)
    wide = select_items(find_conflicts(answers_wide(answers), teachers, unparsed), teachers, selection, unparsed)
    conflict_ids = wide.filter("selected")["id"]
    source = gold_file if isinstance(gold_file, GoldSource) else GoldSource(Path(gold_file))
    gold_all = source.read()
    gold = gold_all.filter(pl.col("id").is_in(conflict_ids.implode()))  # the only gold labels we use
    missing = sorted(set(conflict_ids) - set(gold["id"]))
    if missing:
        raise SchemaError(
            f"{source.describe()}: {len(missing)} of the {len(conflict_ids)} selected item(s) have no gold label "
            f"(e.g. {missing[:5]}). Have people label them: `mmkd annotate export`, label the queue, "
            "`mmkd annotate import <file>`, then `dvc repro` (docs/annotation.md)"
        )
    human = int((gold[ORIGIN] == "human").sum())
    gold = gold.drop(ORIGIN)
    del gold_all

    rows = wide.filter("selected").join(gold, on="id", how="left", maintain_order="left")
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
    metrics = split_metrics(wide, teachers, conflicts_df, sft_df, pairs_df, selection)
    metrics["human_labels_read"] = human  # of gold_labels_read: people's (mmkd.annotation), the rest the dataset's
    return conflicts_df, sft_df, pairs_df, metrics


def split_metrics(
    wide: pl.DataFrame,
    teachers: list[str],
    selected: pl.DataFrame,
    sft: pl.DataFrame,
    pairs: pl.DataFrame,
    selection: Selection,
) -> dict:
    """Counts and rates for ``metrics/split.json``: every gold label read is counted (``gold_labels_read``)."""
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
    n_conflicts = int(wide["conflict"].sum())
    return {
        "n_items": n,
        "n_usable": int(wide["usable"].sum()),
        "conflict_count": n_conflicts,
        "conflict_rate": rate(n_conflicts),
        "selection": {
            "rule": selection.rule,
            "budget": selection.budget,
            "seed": selection.seed,
            "candidates": int(wide["candidate"].sum()),
        },
        "gold_labels_read": len(selected),
        "labelled_fraction": rate(len(selected)),
        "selected_without_chosen": int((selected["n_agree"] == 0).sum()) if len(selected) else 0,
        "stage2_sft_rows": len(sft),
        "stage2_dpo_pairs": len(pairs),
        "unparsed_rate": {t: v["unparsed"] for t, v in per_teacher.items()},
        "error_rate": {t: v["error"] for t, v in per_teacher.items()},
        "skipped_rate": {t: v["skipped"] for t, v in per_teacher.items()},
        "agreement": agreement,
    }
