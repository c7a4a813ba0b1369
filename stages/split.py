"""Stage `split`: the items that get a gold label (``split.select``; the paper's: those the teachers disagree on)
and the Stage-2 data -> data/split/, and each baseline's training data -> data/baselines/<name>/; every gold label
read is counted in metrics/split.json.

Gold comes from the dataset's train.gold.parquet and people's annotation/labels/train.jsonl (``annotation.prefer``
decides where both exist); missing labels stop the stage, naming the count and the commands (docs/annotation.md).
The baselines (``random_budget`` where ``baselines.stage2`` lists it, ``gold_only`` and ``full_supervision`` where
``baselines.supervised`` does) are described in mmkd.selection.baselines."""

from mmkd import paths
from mmkd.annotation.labels import split_gold
from mmkd.console import setup_logging
from mmkd.schema import SchemaError, read_answers
from mmkd.selection.baselines import split_with_baselines, unknown_supervised
from mmkd.selection.conflicts import Selection
from mmkd.stage_io import read_params, write_json


def main() -> None:
    setup_logging()
    params = read_params()
    answers = {t: read_answers(paths.answers_file(t, "train")) for t in params["teacher_names"]}
    gold = split_gold(params["data"]["dir"], "train", params["annotation"]["prefer"])
    try:
        selection = Selection(**params["split"]["select"])
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"split: split.select in params.yaml: {exc}") from None
    supervised, stage2 = params["baselines"]["supervised"], params["baselines"]["stage2"]
    if problem := unknown_supervised(supervised, stage2):
        raise SystemExit(f"split: {problem}")
    try:
        tables, metrics = split_with_baselines(
            answers,
            gold,
            unparsed=params["split"]["unparsed"],
            selection=selection,
            supervised=supervised,
            stage2=stage2,
        )
    except SchemaError as exc:  # gold labels missing: before any training, with what to do
        raise SystemExit(f"split: {exc}") from None
    paths.BASELINE_SPLITS.mkdir(parents=True, exist_ok=True)  # an output even when every baseline is switched off
    for baseline, written in tables.items():
        for table, path in zip(written, paths.split_tables(baseline), strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            table.write_parquet(path)
    write_json(paths.metrics_file("split"), metrics)


if __name__ == "__main__":
    main()
