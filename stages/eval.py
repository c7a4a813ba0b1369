"""Stage `evaluate` (eval.py, so as not to shadow the `evaluate` package): every system on the test split and each
extra test set (`data.test_sets`) at its val-chosen threshold, with Stage 2's paired comparisons (what is scored
and how: mmkd.evaluation.systems) -> metrics/evaluate.json, data/predictions/, metrics/{confusion,roc,reliability}/.
"""

# ruff: noqa: E402
from mmkd.numerics import pin_stage_numerics

if __name__ == "__main__":  # first: torch, MKL and oneDNN fix their kernels' ISA and threads as they load
    pin_stage_numerics()  # the `numerics` params (mmkd.numerics)
from functools import partial

from mmkd import paths
from mmkd.annotation.labels import ORIGIN, split_gold
from mmkd.console import setup_logging
from mmkd.evaluation.report import markdown_table
from mmkd.evaluation.systems import StudentAnswerer, evaluate_test_set, students, val_thresholds
from mmkd.schema import read_answers, read_items
from mmkd.stage_io import read_params, write_json


def main() -> None:
    setup_logging()
    params = read_params()
    student, cfg, teachers = params["student"], params["evaluate"], params["teacher_names"]
    data_dir, extra = params["data"]["dir"], params["data"]["test_sets"]
    if problems := paths.missing_test_set_inputs(extra, teachers, gold=True):
        raise SystemExit("evaluate: " + "\n".join(problems))  # before any system answers a test item
    answer = StudentAnswerer(
        student["model"], student["dtype"], student["prompt_version"], cfg["batch_size"], cfg["max_new_tokens"]
    )
    baselines = [*params["baselines"]["stage2"], *params["baselines"]["supervised"]]
    systems = students(zero_shot=cfg["zero_shot"], baselines=baselines)

    val_file = paths.items_file(data_dir, "val")  # thresholds from val, before any test label is read
    val_answers = {t: read_answers(paths.answers_file(t, "val")) for t in teachers}
    prefer, max_fpr = params["annotation"]["prefer"], params["calibration"]["max_fpr"]
    val_gold = split_gold(data_dir, "val", prefer).require("val").drop(ORIGIN)  # the dataset's and people's
    thresholds = val_thresholds(systems, val_answers, read_items(val_file), val_gold, answer, max_fpr=max_fpr)

    run = partial(
        evaluate_test_set,
        data_dir=data_dir,
        teachers=teachers,
        systems=systems,
        thresholds=thresholds,
        answer=answer,
        seed=params["seed"],
        prefer=prefer,
    )
    metrics = run(None)  # the test split, at the top level
    if extra:
        metrics["test_sets"] = {s: run(s) for s in extra}
    write_json(paths.metrics_file("evaluate"), metrics)
    print(markdown_table(metrics))  # the run's result, as `mmkd report --markdown` prints it


if __name__ == "__main__":
    main()
