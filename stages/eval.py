"""Stage `evaluate` (script named eval.py so it does not shadow the `evaluate` package): score the zero-shot
student, Stage 1, Stage 2 and every teacher on the test split.

Writes per-item predictions (data/predictions/<model>.parquet, teachers under teachers/), metrics/evaluate.json
and confusion-matrix plot data (metrics/confusion/<model>.csv, teachers under teachers/).
"""

from pathlib import Path

from mmkd.evaluation import confusion_rows, score
from mmkd.labelling import label_items
from mmkd.schema import gold_path, read_answers, read_gold, read_items
from mmkd.stage_io import read_params, setup_logging, write_json
from mmkd.teachers.local import LocalConfig, LocalTeacher


def main() -> None:
    setup_logging()
    params = read_params()
    student, cfg = params["student"], params["evaluate"]
    test_file = Path(params["data"]["dir"]) / "test.parquet"
    items, gold = read_items(test_file), read_gold(gold_path(test_file))

    variants = {"zero_shot": None} if cfg["zero_shot"] else {}
    variants |= {"stage1": "models/stage1", "stage2": "models/stage2"}
    predictions = {}
    for name, adapter in variants.items():
        config = LocalConfig(
            model=student["model"],
            adapter=adapter,
            dtype=student["dtype"],
            batch_size=cfg["batch_size"],
            max_new_tokens=cfg["max_new_tokens"],
        )
        predictions[name] = label_items(
            LocalTeacher(config, name=name), items, source=name, prompt_version=student["prompt_version"]
        )
    teachers = {t: read_answers(f"data/answers/{t}/test.parquet") for t in params["teacher_names"]}

    out, plots = Path("data/predictions"), Path("metrics/confusion")
    for d in (out / "teachers", plots / "teachers"):
        d.mkdir(parents=True, exist_ok=True)
    metrics = {name: score(answers, gold) for name, answers in predictions.items()}
    metrics["teachers"] = {t: score(answers, gold) for t, answers in teachers.items()}
    for name, answers in (predictions | {f"teachers/{t}": a for t, a in teachers.items()}).items():
        answers.write_parquet(out / f"{name}.parquet")
        confusion_rows(answers, gold).write_csv(plots / f"{name}.csv")
    write_json("metrics/evaluate.json", metrics)


if __name__ == "__main__":
    main()
