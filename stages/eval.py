"""Stage `evaluate` (script named eval.py so it does not shadow the `evaluate` package): score the zero-shot
student, Stage 1, Stage 2, every teacher and the baselines on the test split, with a 95 % interval for each
accuracy and Stage 2 compared, item by item, with the best teacher, Stage 1 and each baseline. Every system whose
answers carry a score also gets AUROC, AUPRC, ECE, Brier and its accuracy at the threshold chosen on val: the one
recorded in its adapter by its training stage, or, for zero-shot and the teachers, chosen here from their val
answers, before the test labels are read.

Writes per-item predictions (data/predictions/<model>.parquet, teachers under teachers/, baselines under
baselines/), metrics/evaluate.json and plot data per model, named likewise: confusion matrices
(metrics/confusion/), ROC curves (metrics/roc/) and reliability diagrams (metrics/reliability/).
"""

from mmkd import paths
from mmkd.calibration import calibrate
from mmkd.conflict import majority_vote
from mmkd.console import setup_logging
from mmkd.evaluation import compare, confusion_rows, reliability_rows, roc_rows, score_ranked
from mmkd.inference.local import LocalBackend, LocalConfig
from mmkd.labelling import label_items
from mmkd.modeling import adapter_info
from mmkd.report import markdown_table
from mmkd.schema import gold_path, read_answers, read_gold, read_items
from mmkd.stage_io import read_params, write_json


def main() -> None:
    setup_logging()
    params = read_params()
    student, cfg, max_fpr = params["student"], params["evaluate"], params["calibration"]["max_fpr"]
    val_file = paths.items_file(params["data"]["dir"], "val")
    test_file = paths.items_file(params["data"]["dir"], "test")
    items = read_items(test_file)

    def student_answers(name: str, adapter: str | None, items=items):
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
    trained = {
        name: str(paths.baseline_dirs(name)[0])
        for name in (*paths.STAGE2_BASELINES, *params["baselines"]["supervised"])
    }

    # Thresholds first, from val only: an adapter's was recorded by its training stage; zero-shot and the teachers
    # are calibrated here on their val answers. The test labels are read after this.
    val_items, val_gold = read_items(val_file), read_gold(gold_path(val_file))
    thresholds = {name: adapter_info(a).get("threshold") for name, a in (variants | trained).items() if a}
    if "zero_shot" in variants:
        thresholds["zero_shot"] = calibrate(student_answers("zero_shot", None, val_items), val_gold, max_fpr=max_fpr)
    for t in params["teacher_names"]:
        thresholds[f"teachers/{t}"] = calibrate(read_answers(paths.answers_file(t, "val")), val_gold, max_fpr=max_fpr)
    del val_items, val_gold

    gold = read_gold(gold_path(test_file))
    predictions = {name: student_answers(name, adapter) for name, adapter in variants.items()}
    teachers = {t: read_answers(paths.answers_file(t, "test")) for t in params["teacher_names"]}
    baselines = {"majority_vote": majority_vote(teachers)}  # a vote has no score
    baselines |= {name: student_answers(name, adapter) for name, adapter in trained.items()}

    metrics = {name: score_ranked(answers, gold, thresholds.get(name)) for name, answers in predictions.items()}
    metrics["teachers"] = {t: score_ranked(a, gold, thresholds[f"teachers/{t}"]) for t, a in teachers.items()}
    metrics["baselines"] = {b: score_ranked(a, gold, thresholds.get(b)) for b, a in baselines.items()}

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
    out = paths.PREDICTIONS
    for d in (paths.ROC, paths.RELIABILITY):
        d.mkdir(parents=True, exist_ok=True)  # outputs even when no system has a score
    for name, answers in files.items():
        for d in (out, paths.CONFUSION, paths.ROC, paths.RELIABILITY):
            (d / name).parent.mkdir(parents=True, exist_ok=True)
        answers.write_parquet(out / f"{name}.parquet")
        confusion_rows(answers, gold).write_csv(paths.CONFUSION / f"{name}.csv")
        if answers["score"].is_not_null().any():  # a system without scores has no curve
            roc_rows(answers, gold).write_csv(paths.ROC / f"{name}.csv")
            reliability_rows(answers, gold).write_csv(paths.RELIABILITY / f"{name}.csv")
    write_json(paths.metrics_file("evaluate"), metrics)
    print(markdown_table(metrics))  # the run's result, as `mmkd report --markdown` prints it


if __name__ == "__main__":
    main()
