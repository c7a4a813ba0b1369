"""Stage `evaluate` (script named eval.py so it does not shadow the `evaluate` package): score the zero-shot
student, Stage 1, Stage 2, every teacher and the baselines on the test split, and on every extra test set
(`data.test_sets`: items in data/test_sets/<set>, gold in data/test_gold/<set>; e.g. the demo's
out-of-distribution set or VERITE), with a 95 % interval
for each accuracy and Stage 2 compared, item by item, with the best teacher, Stage 1 and each baseline. Every system
whose answers carry a score also gets AUROC, AUPRC, ECE, Brier and its accuracy at the threshold chosen on val: the
one recorded in its adapter by its training stage, or, for zero-shot and the teachers, chosen here from their val
answers, before any test label is read. Where a test set's gold has a finer class (`gold_class`, e.g. VERITE's
true / miscaptioned / out-of-context), accuracies per class and per pair of classes are added.

Writes metrics/evaluate.json (the test split's metrics at the top level, each extra set's, in the same shape, under
`test_sets.<set>`), per-item predictions (data/predictions/<model>.parquet, teachers under teachers/, baselines under
baselines/, an extra set's under test_sets/<set>/) and plot data per model, named likewise: confusion matrices
(metrics/confusion/), ROC curves (metrics/roc/) and reliability diagrams (metrics/reliability/).
"""

from pathlib import Path

import polars as pl

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.evaluation.metrics import class_accuracies, compare, confusion_rows, reliability_rows, roc_rows, score_ranked
from mmkd.evaluation.report import markdown_table
from mmkd.evaluation.thresholds import calibrate
from mmkd.inference.answering import label_items
from mmkd.inference.local import LocalBackend, LocalConfig
from mmkd.modeling import adapter_info
from mmkd.schema import gold_path, read_answers, read_gold, read_items
from mmkd.selection.conflicts import majority_vote
from mmkd.stage_io import read_params, write_json


def main() -> None:
    setup_logging()
    params = read_params()
    student, cfg, max_fpr = params["student"], params["evaluate"], params["calibration"]["max_fpr"]
    data_dir, teachers = params["data"]["dir"], params["teacher_names"]
    if problems := paths.missing_test_set_inputs(params["data"]["test_sets"], teachers, gold=True):
        raise SystemExit("evaluate: " + "\n".join(problems))  # before any system answers a test item

    def student_answers(name: str, adapter: str | None, items: pl.DataFrame) -> pl.DataFrame:
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
    # are calibrated here on their val answers. No test label has been read yet.
    val_file = paths.items_file(data_dir, "val")
    val_items, val_gold = read_items(val_file), read_gold(gold_path(val_file))
    thresholds = {name: adapter_info(a).get("threshold") for name, a in (variants | trained).items() if a}
    if "zero_shot" in variants:
        thresholds["zero_shot"] = calibrate(student_answers("zero_shot", None, val_items), val_gold, max_fpr=max_fpr)
    for t in teachers:
        thresholds[f"teachers/{t}"] = calibrate(read_answers(paths.answers_file(t, "val")), val_gold, max_fpr=max_fpr)
    del val_items, val_gold

    def evaluate_on(items_file: Path, gold_file: Path, teacher_answers: dict[str, pl.DataFrame], where: str) -> dict:
        """Every system on one test set: its metrics (evaluate.json's shape) and, under ``where``, its files."""
        items, gold = read_items(items_file), read_gold(gold_file)
        predictions = {name: student_answers(name, adapter, items) for name, adapter in variants.items()}
        baselines = {"majority_vote": majority_vote(teacher_answers)}  # a vote has no score
        baselines |= {name: student_answers(name, adapter, items) for name, adapter in trained.items()}
        systems = (
            predictions
            | {f"teachers/{t}": a for t, a in teacher_answers.items()}
            | {f"baselines/{b}": a for b, a in baselines.items()}
        )
        scored = {}
        for name, answers in systems.items():
            scored[name] = score_ranked(answers, gold, thresholds.get(name.removeprefix("baselines/")))
            scored[name] |= class_accuracies(answers, gold)  # nothing where the gold has no finer class
        metrics = {name: scored[name] for name in predictions}
        metrics["teachers"] = {t: scored[f"teachers/{t}"] for t in teacher_answers}
        metrics["baselines"] = {b: scored[f"baselines/{b}"] for b in baselines}

        # Stage 2 against the best teacher (by accuracy on this set: the strongest comparison), Stage 1 and every
        # baseline
        best = max(sorted(teacher_answers), key=lambda t: metrics["teachers"][t]["accuracy"])
        others = {f"best_teacher ({best})": teacher_answers[best], "stage1": predictions["stage1"]} | baselines
        metrics["significance"] = {
            f"stage2_vs_{name}": compare(predictions["stage2"], other, gold, seed=params["seed"])
            for name, other in others.items()
        }
        for name, answers in systems.items():
            name = f"{where}{name}"
            for d in (paths.PREDICTIONS, paths.CONFUSION, paths.ROC, paths.RELIABILITY):
                (d / name).parent.mkdir(parents=True, exist_ok=True)
            answers.write_parquet(paths.PREDICTIONS / f"{name}.parquet")
            confusion_rows(answers, gold).write_csv(paths.CONFUSION / f"{name}.csv")
            if answers["score"].is_not_null().any():  # a system without scores has no curve
                roc_rows(answers, gold).write_csv(paths.ROC / f"{name}.csv")
                reliability_rows(answers, gold).write_csv(paths.RELIABILITY / f"{name}.csv")
        return metrics

    for d in (paths.ROC, paths.RELIABILITY):
        d.mkdir(parents=True, exist_ok=True)  # outputs even when no system has a score
    main_answers = {t: read_answers(paths.answers_file(t, "test")) for t in teachers}
    test_file = paths.items_file(data_dir, "test")
    metrics = evaluate_on(test_file, gold_path(test_file), main_answers, "")
    extra = params["data"]["test_sets"]
    if extra:
        metrics["test_sets"] = {
            s: evaluate_on(
                paths.test_set_items(s),
                paths.test_set_gold(s),
                {t: read_answers(paths.test_set_answers(t, s)) for t in teachers},
                f"test_sets/{s}/",
            )
            for s in extra
        }
    write_json(paths.metrics_file("evaluate"), metrics)
    print(markdown_table(metrics))  # the run's result, as `mmkd report --markdown` prints it


if __name__ == "__main__":
    main()
