"""Stage `stage1`: LoRA SFT of the student on every teacher answer -> models/stage1 (adapter), dvclive/stage1."""

from pathlib import Path

from mmkd.conflict import stage1_rows
from mmkd.schema import read_answers, read_items
from mmkd.stage_io import read_params, seed_everything, setup_logging
from mmkd.training.config import LoraSettings, TrainSettings, from_params
from mmkd.training.rows import with_prompts
from mmkd.training.trainers import run_stage1


def main() -> None:
    setup_logging()
    params = read_params()
    student, stage1 = params["student"], params["stage1"]
    seed_everything(params["seed"])
    answers = {t: read_answers(f"data/answers/{t}/train.parquet") for t in params["teacher_names"]}
    items = read_items(Path(params["data"]["dir"]) / "train.parquet")
    rows = with_prompts(stage1_rows(answers, policy=stage1["targets"]), items, student["prompt_version"])
    run_stage1(
        student["model"],
        rows,
        lora=from_params(LoraSettings, stage1["lora"]),
        settings=from_params(TrainSettings, stage1["train"]),
        seed=params["seed"],
        out_dir="models/stage1",
        live_dir="dvclive/stage1",
        dtype=student["dtype"],
        prompt_version=student["prompt_version"],
    )


if __name__ == "__main__":
    main()
