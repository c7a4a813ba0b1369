"""Stage `stage1`: LoRA SFT of the student on the teachers' answers -> models/stage1 (adapter), dvclive/stage1."""

from mmkd import paths
from mmkd.conflict import stage1_rows
from mmkd.console import setup_logging
from mmkd.schema import read_answers, read_items
from mmkd.stage_io import read_params, seed_everything
from mmkd.training.config import Stage1Settings, from_params
from mmkd.training.rows import with_prompts
from mmkd.training.trainers import run_stage1


def main() -> None:
    setup_logging()
    params = read_params()
    student, settings = params["student"], from_params(Stage1Settings, params["stage1"], "stage1")
    seed_everything(params["seed"])

    answers = {t: read_answers(paths.answers_file(t, "train")) for t in params["teacher_names"]}
    items = read_items(paths.items_file(params["data"]["dir"], "train"))
    rows = with_prompts(stage1_rows(answers, policy=settings.targets), items, student["prompt_version"])

    run_stage1(
        student["model"],
        rows,
        lora=settings.lora,
        settings=settings.train,
        speedups=settings.cpu_speedups,
        seed=params["seed"],
        out_dir=paths.STAGE1_ADAPTER,
        live_dir=paths.DVCLIVE / "stage1",
        dtype=student["dtype"],
        prompt_version=student["prompt_version"],
    )


if __name__ == "__main__":
    main()
