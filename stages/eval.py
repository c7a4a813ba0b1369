"""Stage `evaluate` (script named eval.py so it does not shadow the `evaluate` package): score the zero-shot
student, Stage 1, Stage 2 and every teacher on the test split.

Writes per-item predictions (data/predictions/<model>.parquet, teachers under teachers/), metrics/evaluate.json
and confusion-matrix plot data (metrics/confusion/<model>.csv, teachers under teachers/).
"""

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.evaluation import confusion_rows, score
from mmkd.inference.local import LocalBackend, LocalConfig
from mmkd.labelling import label_items
from mmkd.report import markdown_table
from mmkd.schema import gold_path, read_answers, read_gold, read_items
from mmkd.stage_io import read_params, write_json


def main() -> None:
    setup_logging()
    params = read_params()
    student, cfg = params["student"], params["evaluate"]
    test_file = paths.items_file(params["data"]["dir"], "test")
    items, gold = read_items(test_file), read_gold(gold_path(test_file))

    variants = {"zero_shot": None} if cfg["zero_shot"] else {}
    variants |= {"stage1": str(paths.STAGE1_ADAPTER), "stage2": str(paths.STAGE2_ADAPTER)}
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
            LocalBackend(config, name=name), items, source=name, prompt_version=student["prompt_version"]
        )
    teachers = {t: read_answers(paths.answers_file(t, "test")) for t in params["teacher_names"]}

    out, plots = paths.PREDICTIONS, paths.CONFUSION
    for d in (out / "teachers", plots / "teachers"):
        d.mkdir(parents=True, exist_ok=True)
    metrics = {name: score(answers, gold) for name, answers in predictions.items()}
    metrics["teachers"] = {t: score(answers, gold) for t, answers in teachers.items()}
    for name, answers in (predictions | {f"teachers/{t}": a for t, a in teachers.items()}).items():
        answers.write_parquet(out / f"{name}.parquet")
        confusion_rows(answers, gold).write_csv(plots / f"{name}.csv")
    write_json(paths.metrics_file("evaluate"), metrics)
    print(markdown_table(metrics))  # the run's result, as `mmkd report --markdown` prints it


if __name__ == "__main__":
    main()
