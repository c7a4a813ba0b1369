"""Stage `label@<teacher>`: one teacher answers every train and test item -> data/answers/<teacher>/<split>.parquet."""

import sys
from pathlib import Path

from mmkd.labelling import label_items
from mmkd.schema import read_items
from mmkd.stage_io import read_params, setup_logging
from mmkd.teachers import make_teacher

SPLITS = ("train", "test")  # test answers score the teacher itself at evaluation


def main(name: str) -> None:
    setup_logging()
    params = read_params()
    teacher_params = params["teachers"][name]
    backend = make_teacher(name, teacher_params)
    out = Path("data/answers") / name
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        items = read_items(Path(params["data"]["dir"]) / f"{split}.parquet")
        answers = label_items(backend, items, source=name, prompt_version=teacher_params["prompt_version"])
        answers.write_parquet(out / f"{split}.parquet")


if __name__ == "__main__":
    main(sys.argv[1])
