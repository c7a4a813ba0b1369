"""Stage `stage2`: LoRA SFT + DPO on the conflict set, on top of merged Stage 1 -> models/stage2, dvclive/stage2."""

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.schema import read_items, read_pairs, read_sft_rows
from mmkd.stage_io import read_params, seed_everything
from mmkd.training.config import Stage2Settings, from_params
from mmkd.training.rows import with_prompts
from mmkd.training.trainers import run_stage2


def main() -> None:
    setup_logging()
    params = read_params()
    student, settings = params["student"], from_params(Stage2Settings, params["stage2"], "stage2")
    seed_everything(params["seed"])

    items = read_items(paths.items_file(params["data"]["dir"], "train"))
    sft_rows = with_prompts(read_sft_rows(paths.STAGE2_SFT), items, student["prompt_version"])
    pairs = with_prompts(read_pairs(paths.STAGE2_PAIRS), items, student["prompt_version"])

    run_stage2(
        student["model"],
        str(paths.STAGE1_ADAPTER),
        sft_rows,
        pairs,
        settings=settings,
        seed=params["seed"],
        out_dir=paths.STAGE2_ADAPTER,
        live_dir=paths.DVCLIVE / "stage2",
        dtype=student["dtype"],
        prompt_version=student["prompt_version"],
    )


if __name__ == "__main__":
    main()
