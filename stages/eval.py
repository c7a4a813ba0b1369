"""Stage `evaluate` (script named eval.py so it does not shadow the `evaluate` package): score the zero-shot
student, Stage 1, Stage 2, every teacher and the baselines on the test split, with a 95 % interval for each
accuracy and Stage 2 compared, item by item, with the best teacher, Stage 1 and each baseline.

Writes per-item predictions (data/predictions/<model>.parquet, teachers under teachers/, baselines under
baselines/), metrics/evaluate.json and confusion-matrix plot data (metrics/confusion/<model>.csv, likewise).
"""

from mmkd import paths
from mmkd.conflict import majority_vote
from mmkd.console import setup_logging
from mmkd.evaluation import compare, confusion_rows, score
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

    def student_answers(name: str, adapter: str | None):
        config = LocalConfig(
            model=student["model"],
            adapter=adapter,
            dtype=student["dtype"],
            batch_size=cfg["batch_size"],
            max_new_tokens=cfg["max_new_tokens"],
        )
        backend = LocalBackend(config, name=name)
        return label_items(backend, items, source=name, prompt_version=student["prompt_version"])

    variants = {"zero_shot": None} if cfg["zero_shot"] else {}
    variants |= {"stage1": str(paths.STAGE1_ADAPTER), "stage2": str(paths.STAGE2_ADAPTER)}
    predictions = {name: student_answers(name, adapter) for name, adapter in variants.items()}
    teachers = {t: read_answers(paths.answers_file(t, "test")) for t in params["teacher_names"]}
    baselines = {"majority_vote": majority_vote(teachers)}
    for name in (*paths.STAGE2_BASELINES, *params["baselines"]["supervised"]):
        baselines[name] = student_answers(name, str(paths.baseline_dirs(name)[0]))

    out, plots = paths.PREDICTIONS, paths.CONFUSION
    for d in (out / "teachers", plots / "teachers", out / "baselines", plots / "baselines"):
        d.mkdir(parents=True, exist_ok=True)
    metrics = {name: score(answers, gold) for name, answers in predictions.items()}
    metrics["teachers"] = {t: score(answers, gold) for t, answers in teachers.items()}
    metrics["baselines"] = {b: score(answers, gold) for b, answers in baselines.items()}

    # Stage 2 against the best teacher (by test accuracy: the strongest comparison), Stage 1 and every baseline
    best = max(sorted(teachers), key=lambda t: metrics["teachers"][t]["accuracy"])
    others = {f"best_teacher ({best})": teachers[best], "stage1": predictions["stage1"]} | baselines
    final = predictions["stage2"]
    metrics["significance"] = {
        f"stage2_vs_{name}": compare(final, other, gold, seed=params["seed"]) for name, other in others.items()
    }

    files = (
        predictions
        | {f"teachers/{t}": a for t, a in teachers.items()}
        | {f"baselines/{b}": a for b, a in baselines.items()}
    )
    for name, answers in files.items():
        answers.write_parquet(out / f"{name}.parquet")
        confusion_rows(answers, gold).write_csv(plots / f"{name}.csv")
    write_json(paths.metrics_file("evaluate"), metrics)
    print(markdown_table(metrics))  # the run's result, as `mmkd report --markdown` prints it


if __name__ == "__main__":
    main()
