"""The baselines' training data, built beside the method's split so that each one isolates one ingredient:

- ``random_budget``: Stage-2 data of a seeded random sample of as many items as the method read gold for (what the
  selection rule adds over reading the same number of labels at random);
- ``gold_only``: the method's own gold labels as SFT targets from the base model (what Stage 1 and the teachers'
  other answers add);
- ``full_supervision``: the gold label of every train item (the upper bound; it reads them all).

``random_budget`` is built only when ``baselines.stage2`` lists it, ``gold_only`` and ``full_supervision`` only
when ``baselines.supervised`` does: each costs gold labels of its own when people provide them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mmkd.annotation.labels import GoldSource
from mmkd.parsing import format_answer
from mmkd.paths import STAGE2_BASELINES, SUPERVISED_BASELINES
from mmkd.schema import PAIR_SCHEMA, SFT_ROW_SCHEMA, frame
from mmkd.selection.conflicts import Selection, conflict_split

# What metrics/split.json reports for each baseline: the labels it read and the Stage-2 data they gave
BASELINE_KEYS = (
    "gold_labels_read",
    "human_labels_read",
    "labelled_fraction",
    "selected_without_chosen",
    "stage2_sft_rows",
    "stage2_dpo_pairs",
)

Tables = tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]  # selected items, Stage-2 SFT rows, DPO pairs


def unknown_supervised(supervised: list[str], stage2: tuple[str, ...] | list[str] = STAGE2_BASELINES) -> str | None:
    """What is wrong with ``baselines.supervised`` or ``baselines.stage2`` (a name that is no such baseline)."""
    for key, given, known in (("supervised", supervised, SUPERVISED_BASELINES), ("stage2", stage2, STAGE2_BASELINES)):
        if unknown := sorted(set(given) - set(known)):
            return f"baselines.{key}: unknown {unknown}; use {list(known)}"
    return None


def gold_sft_rows(selected: pl.DataFrame, sft: pl.DataFrame) -> pl.DataFrame:
    """SFT targets for training on the selected items' gold labels alone, from the base model (the ``gold_only``
    and ``full_supervision`` baselines): the answers of the teachers that match gold (the label is gold's, the
    wording a teacher's, so the target keeps the answer format the student is scored on), and for an item no
    teacher got right, the bare answer ``Label: <gold>. Rationale:`` (there is no wording to borrow)."""
    bare = [
        {"id": r["id"], "source": "gold", "completion": format_answer(r["gold_label"], "").strip()}
        for r in selected.filter(pl.col("n_agree") == 0).iter_rows(named=True)
    ]
    return frame(sft.to_dicts() + bare, SFT_ROW_SCHEMA).sort("id", "source")


def split_with_baselines(
    answers: dict[str, pl.DataFrame],
    gold_file: str | Path | GoldSource,
    *,
    unparsed: str,
    selection: Selection,
    supervised: list[str],
    stage2: tuple[str, ...] = STAGE2_BASELINES,
) -> tuple[dict[str | None, Tables], dict]:
    """The method's split (key None) and every baseline's (key: its name), and metrics/split.json: the method's
    metrics, each baseline's ``BASELINE_KEYS`` under ``baselines``, and ``gold_labels_read_with_baselines``, the
    distinct train items whose gold label any of them read."""
    selected, sft, pairs, metrics = conflict_split(answers, gold_file, unparsed=unparsed, selection=selection)
    tables: dict[str | None, Tables] = {None: (selected, sft, pairs)}
    no_pairs = pl.DataFrame(schema=PAIR_SCHEMA)
    baselines, read = {}, set(selected["id"])

    if "random_budget" in stage2:  # it costs as many labels again, unless they all exist already
        random_budget = Selection("random", budget=metrics["gold_labels_read"], seed=selection.seed)
        *sample, baselines["random_budget"] = conflict_split(
            answers, gold_file, unparsed=unparsed, selection=random_budget
        )
        tables["random_budget"] = tuple(sample)
        read |= set(sample[0]["id"])
    if "gold_only" in supervised:
        rows = gold_sft_rows(selected, sft)
        tables["gold_only"] = (selected, rows, no_pairs)
        baselines["gold_only"] = metrics | {"stage2_sft_rows": len(rows), "stage2_dpo_pairs": 0}
    if "full_supervision" in supervised:
        every, every_sft, _, every_metrics = conflict_split(
            answers, gold_file, unparsed=unparsed, selection=Selection("all")
        )
        rows = gold_sft_rows(every, every_sft)
        tables["full_supervision"] = (every, rows, no_pairs)
        baselines["full_supervision"] = every_metrics | {"stage2_sft_rows": len(rows), "stage2_dpo_pairs": 0}
        read |= set(every["id"])
    metrics["baselines"] = {name: {k: m[k] for k in BASELINE_KEYS} for name, m in baselines.items()}
    metrics["gold_labels_read_with_baselines"] = len(read)
    return tables, metrics
