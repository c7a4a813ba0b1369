"""Stage `stage2`: LoRA SFT + DPO on the conflict set, on top of merged Stage 1 -> models/stage2, dvclive/stage2."""

from pathlib import Path

import polars as pl

from mmkd.schema import read_items
from mmkd.stage_io import read_params, seed_everything, setup_logging
from mmkd.training.config import Stage2Settings, from_params
from mmkd.training.rows import with_prompts
from mmkd.training.trainers import run_stage2


def main() -> None:
    setup_logging()
    params = read_params()
    student = params["student"]
    seed_everything(params["seed"])
    items = read_items(Path(params["data"]["dir"]) / "train.parquet")
    sft_rows = with_prompts(pl.read_parquet("data/split/sft.parquet"), items, student["prompt_version"])
    pairs = with_prompts(pl.read_parquet("data/split/pairs.parquet"), items, student["prompt_version"])
    run_stage2(
        student["model"],
        "models/stage1",
        sft_rows,
        pairs,
        settings=from_params(Stage2Settings, params["stage2"]),
        seed=params["seed"],
        out_dir="models/stage2",
        live_dir="dvclive/stage2",
        dtype=student["dtype"],
        prompt_version=student["prompt_version"],
    )


if __name__ == "__main__":
    main()
