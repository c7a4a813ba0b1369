"""Stage `stage2`: LoRA SFT + DPO on the selected (conflict) items, on top of merged Stage 1 -> models/stage2,
dvclive/stage2. With ``--baseline NAME`` (stage `baseline@NAME`), the same recipe on a baseline's selection
(data/baselines/NAME) -> models/baselines/NAME, dvclive/baselines/NAME. After training, the adapter's operating
threshold is chosen on val and recorded in it (mmkd.evaluation.thresholds)."""

# ruff: noqa: E402
from mmkd.numerics import pin_stage_numerics

if __name__ == "__main__":  # first: torch, MKL and oneDNN fix their kernels' ISA and threads as they load
    pin_stage_numerics()  # the `numerics` params (mmkd.numerics)
import argparse

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.evaluation.thresholds import calibrate_from_params
from mmkd.schema import read_items, read_pairs, read_sft_rows
from mmkd.stage_io import read_params, seed_everything
from mmkd.training.config import Stage2Settings, from_params
from mmkd.training.rows import with_prompts
from mmkd.training.trainers import is_main_process, run_stage2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", choices=paths.STAGE2_BASELINES, help="train a Stage-2 baseline instead")
    args = parser.parse_args()
    setup_logging()
    params = read_params()
    student, settings = params["student"], from_params(Stage2Settings, params["stage2"], "stage2")
    seed_everything(params["seed"])

    items = read_items(paths.items_file(params["data"]["dir"], "train"))
    _, sft_file, pairs_file = paths.split_tables(args.baseline)
    sft_rows = with_prompts(read_sft_rows(sft_file), items, student["prompt_version"])
    pairs = with_prompts(read_pairs(pairs_file), items, student["prompt_version"])
    out_dir, live_dir = paths.stage2_dirs(args.baseline)

    run_stage2(
        student["model"],
        str(paths.STAGE1_ADAPTER),
        sft_rows,
        pairs,
        settings=settings,
        seed=params["seed"],
        out_dir=out_dir,
        live_dir=live_dir,
        dtype=student["dtype"],
        prompt_version=student["prompt_version"],
    )
    if is_main_process():  # rank 0 alone, under accelerate launch (stages/launch.py): it wrote the adapter
        calibrate_from_params(out_dir, params)  # the val threshold, recorded in the adapter


if __name__ == "__main__":
    main()
