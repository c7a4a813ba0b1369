"""Stage `split`: the conflict set (teachers disagree) and its gold labels -> data/split/, metrics/split.json."""

from pathlib import Path

from mmkd.conflict import conflict_split
from mmkd.schema import gold_path, read_answers
from mmkd.stage_io import read_params, setup_logging, write_json


def main() -> None:
    setup_logging()
    params = read_params()
    answers = {t: read_answers(f"data/answers/{t}/train.parquet") for t in params["teacher_names"]}
    gold_file = gold_path(Path(params["data"]["dir"]) / "train.parquet")
    conflicts, sft_rows, pairs, metrics = conflict_split(answers, gold_file, unparsed=params["split"]["unparsed"])
    out = Path("data/split")
    out.mkdir(parents=True, exist_ok=True)
    conflicts.write_parquet(out / "conflicts.parquet")
    sft_rows.write_parquet(out / "sft.parquet")
    pairs.write_parquet(out / "pairs.parquet")
    write_json("metrics/split.json", metrics)


if __name__ == "__main__":
    main()
