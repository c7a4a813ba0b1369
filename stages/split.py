"""Stage `split`: the items that get a gold label (``split.select``; the paper's: those the teachers disagree on)
and the Stage-2 data -> data/split/, and the same for each Stage-2 baseline's selection -> data/baselines/<name>/;
every gold label read is counted in metrics/split.json."""

from mmkd import paths
from mmkd.conflict import Selection, conflict_split
from mmkd.console import setup_logging
from mmkd.schema import gold_path, read_answers
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
    *tables, metrics = conflict_split(answers, gold_file, unparsed=unparsed, selection=selection)
    write_tables(tables)

    # random_budget: as many gold labels as the method read, on a seeded random sample (what selection adds)
    random_budget = Selection("random", budget=metrics["gold_labels_read"], seed=selection.seed)
    *baseline_tables, baseline = conflict_split(answers, gold_file, unparsed=unparsed, selection=random_budget)
    write_tables(baseline_tables, "random_budget")
    metrics["baselines"] = {"random_budget": {k: baseline[k] for k in BASELINE_KEYS}}
    read = set(tables[0]["id"]) | set(baseline_tables[0]["id"])
    metrics["gold_labels_read_with_baselines"] = len(read)
    write_json(paths.metrics_file("split"), metrics)


if __name__ == "__main__":
    main()
