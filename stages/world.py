"""Stage `world@<name>`: generate the demo news world (images, items, gold labels, scene specs) into data.dir."""

import shutil
import sys
from pathlib import Path

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.demo.world import make_world
from mmkd.stage_io import read_params, write_json


def main(name: str) -> None:
    setup_logging()
    data = read_params()["data"]
    world = data["world"][name]
    out = Path(data["dir"])
    if out.exists():
        shutil.rmtree(out)  # a DVC output is rebuilt whole
    summary = make_world(
        out,
        seed=world["seed"],
        sizes=world["sizes"],
        image_size=world["image_size"],
        evidence_noise=world["evidence_noise"],
    )
    write_json(paths.metrics_file("world"), summary)


if __name__ == "__main__":
    main(sys.argv[1])
