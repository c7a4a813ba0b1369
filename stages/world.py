"""Stage `world@<name>`: generate the demo news world (images, items, gold labels, scene specs) into data.dir, and
its out-of-distribution test set (unseen caption wordings) into data/test_sets/ood (gold in data/test_gold/ood)."""

import shutil
import sys
from pathlib import Path

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.demo.world import make_ood_split, make_world
from mmkd.stage_io import read_params, write_json


def main(name: str) -> None:
    setup_logging()
    data = read_params()["data"]
    world = data["world"][name]
    out, ood, ood_gold = Path(data["dir"]), paths.TEST_SETS / "ood", paths.TEST_GOLD / "ood"
    for folder in (out, ood, ood_gold):
        if folder.exists():
            shutil.rmtree(folder)  # a DVC output is rebuilt whole
    summary = make_world(
        out,
        seed=world["seed"],
        sizes=world["sizes"],
        image_size=world["image_size"],
        evidence_noise=world["evidence_noise"],
    )
    summary["ood"] = make_ood_split(
        ood,
        ood_gold,
        n=world["ood_size"],
        seed=world["seed"],
        image_size=world["image_size"],
        evidence_noise=world["evidence_noise"],
    )
    write_json(paths.metrics_file("world"), summary)


if __name__ == "__main__":
    main(sys.argv[1])
