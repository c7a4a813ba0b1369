"""Stage `split`: the conflict set (teachers disagree) and its gold labels -> data/split/, metrics/split.json."""

from mmkd import paths
from mmkd.conflict import conflict_split
from mmkd.console import setup_logging
from mmkd.schema import gold_path, read_answers
from mmkd.stage_io import read_params, write_json


def main() -> None:
    setup_logging()
    params = read_params()
    answers = {t: read_answers(paths.answers_file(t, "train")) for t in params["teacher_names"]}
    gold_file = gold_path(paths.items_file(params["data"]["dir"], "train"))
    conflicts, sft_rows, pairs, metrics = conflict_split(answers, gold_file, unparsed=params["split"]["unparsed"])
    paths.SPLIT.mkdir(parents=True, exist_ok=True)
    conflicts.write_parquet(paths.CONFLICTS)
    sft_rows.write_parquet(paths.STAGE2_SFT)
    pairs.write_parquet(paths.STAGE2_PAIRS)
    write_json(paths.metrics_file("split"), metrics)


if __name__ == "__main__":
    main()
