"""Stage `stage1`: LoRA SFT of the student on the teachers' answers -> models/stage1, dvclive/stage1. With
``--baseline NAME`` (`supervised@NAME`), the same recipe from the base model on data/baselines/NAME/sft.parquet ->
models/baselines/NAME. Its threshold is then chosen on val and recorded in it (mmkd.evaluation.thresholds)."""

# ruff: noqa: E402
from mmkd.numerics import pin_stage_numerics

if __name__ == "__main__":  # first: torch, MKL and oneDNN fix their kernels' ISA and threads as they load
    pin_stage_numerics()  # the `numerics` params (mmkd.numerics)
import argparse

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.evaluation.thresholds import calibrate_from_params
from mmkd.schema import read_answers, read_items, read_sft_rows
from mmkd.selection.targets import stage1_rows
from mmkd.stage_io import read_params, seed_everything
from mmkd.training.config import Stage1Settings, from_params
from mmkd.training.rows import with_prompts
from mmkd.training.trainers import is_main_process, run_stage1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", choices=paths.SUPERVISED_BASELINES, help="train a supervised baseline instead")
    args = parser.parse_args()
    setup_logging()
    params = read_params()
    student, settings = params["student"], from_params(Stage1Settings, params["stage1"], "stage1")
    seed_everything(params["seed"])
    items = read_items(paths.items_file(params["data"]["dir"], "train"))
    if args.baseline is None:
        answers = {t: read_answers(paths.answers_file(t, "train")) for t in params["teacher_names"]}
        targets = stage1_rows(answers, policy=settings.targets)
        out_dir, live_dir = paths.STAGE1_ADAPTER, paths.DVCLIVE / "stage1"
    else:
        targets = read_sft_rows(paths.split_tables(args.baseline)[1])
        out_dir, live_dir = paths.baseline_dirs(args.baseline)
    rows = with_prompts(targets, items, student["prompt_version"])

    run_stage1(
        student["model"],
        rows,
        lora=settings.lora,
        settings=settings.train,
        speedups=settings.cpu_speedups,
        seed=params["seed"],
        out_dir=out_dir,
        live_dir=live_dir,
        dtype=student["dtype"],
        prompt_version=student["prompt_version"],
        allow_empty=args.baseline is not None,  # e.g. gold_only when no item was selected
    )
    if is_main_process():  # rank 0 alone, under accelerate launch (stages/launch.py): it wrote the adapter
        calibrate_from_params(out_dir, params)  # the val threshold, recorded in the adapter


if __name__ == "__main__":
    main()
