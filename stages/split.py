"""Stage `split`: the items that get a gold label (``split.select``; the paper's: those the teachers disagree on)
and the Stage-2 data -> data/split/, and each baseline's training data -> data/baselines/<name>/; every gold label
read is counted in metrics/split.json.

Baselines: ``random_budget``, the Stage-2 data of a seeded random sample of as many items as the method read;
``gold_only``, the method's own gold labels as SFT targets from the base model (no Stage 1); and, when
``baselines.supervised`` lists it, ``full_supervision``, the gold label of every train item (it reads them all)."""

import polars as pl

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.schema import PAIR_SCHEMA, gold_path, read_answers
from mmkd.selection.conflicts import Selection, conflict_split, gold_sft_rows
from mmkd.stage_io import read_params, write_json

BASELINE_KEYS = (
    "gold_labels_read",
    "labelled_fraction",
    "selected_without_chosen",
    "stage2_sft_rows",
    "stage2_dpo_pairs",
)


def write_tables(tables, baseline: str | None = None) -> None:
    for table, path in zip(tables, paths.split_tables(baseline), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        table.write_parquet(path)


def main() -> None:
    setup_logging()
    params = read_params()
    answers = {t: read_answers(paths.answers_file(t, "train")) for t in params["teacher_names"]}
    gold_file = gold_path(paths.items_file(params["data"]["dir"], "train"))
    unparsed = params["split"]["unparsed"]
    try:
        selection = Selection(**params["split"]["select"])
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"split: split.select in params.yaml: {exc}") from None
    supervised = params["baselines"]["supervised"]
    unknown = sorted(set(supervised) - set(paths.SUPERVISED_BASELINES))
    if unknown:
        raise SystemExit(f"split: baselines.supervised: unknown {unknown}; use {list(paths.SUPERVISED_BASELINES)}")

    selected, sft, pairs, metrics = conflict_split(answers, gold_file, unparsed=unparsed, selection=selection)
    write_tables((selected, sft, pairs))
    no_pairs = pl.DataFrame(schema=PAIR_SCHEMA)
    baselines, read = {}, set(selected["id"])

    # random_budget: as many gold labels as the method read, on a seeded random sample (what selection adds)
    random_budget = Selection("random", budget=metrics["gold_labels_read"], seed=selection.seed)
    *tables, baselines["random_budget"] = conflict_split(
        answers, gold_file, unparsed=unparsed, selection=random_budget
    )
    write_tables(tables, "random_budget")
    read |= set(tables[0]["id"])
    if "gold_only" in supervised:  # the method's gold labels, without the teachers' other answers
        rows = gold_sft_rows(selected, sft)
        write_tables((selected, rows, no_pairs), "gold_only")
        baselines["gold_only"] = metrics | {"stage2_sft_rows": len(rows), "stage2_dpo_pairs": 0}
    if "full_supervision" in supervised:  # every train item's gold label: the upper bound
        everything = Selection("all")
        every, every_sft, _, baselines["full_supervision"] = conflict_split(
            answers, gold_file, unparsed=unparsed, selection=everything
        )
        rows = gold_sft_rows(every, every_sft)
        write_tables((every, rows, no_pairs), "full_supervision")
        baselines["full_supervision"] |= {"stage2_sft_rows": len(rows), "stage2_dpo_pairs": 0}
        read |= set(every["id"])
    metrics["baselines"] = {name: {k: m[k] for k in BASELINE_KEYS} for name, m in baselines.items()}
    metrics["gold_labels_read_with_baselines"] = len(read)
    write_json(paths.metrics_file("split"), metrics)


if __name__ == "__main__":
    main()
