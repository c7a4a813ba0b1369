"""Stage `world`: generate the demo news world (images, items, gold labels, scene specs) into data.dir."""

import shutil
from pathlib import Path

from mmkd.demo.world import make_world
from mmkd.stage_io import read_params, setup_logging, write_json


def main() -> None:
    setup_logging()
    data = read_params()["data"]
    out = Path(data["dir"])
    if out.exists():
        shutil.rmtree(out)  # a DVC output is rebuilt whole
    summary = make_world(
        out,
        seed=data["seed"],
        sizes=data["sizes"],
        image_size=data["image_size"],
        evidence_noise=data["evidence_noise"],
    )
    write_json("metrics/world.json", summary)


if __name__ == "__main__":
    main()
