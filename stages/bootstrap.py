"""Stage `bootstrap@<model>`: build one demo model from config and pre-train it (see mmkd.demo.bootstrap)."""

import sys

from mmkd.demo.bootstrap import BootstrapSettings, bootstrap_model
from mmkd.stage_io import read_params, seed_everything, setup_logging


def main(name: str) -> None:
    setup_logging()
    params = read_params()
    settings = BootstrapSettings(**params["bootstrap"][name])
    seed_everything(settings.seed)
    bootstrap_model(name, params["data"]["dir"], f"models/{name}", settings, live_dir=f"dvclive/bootstrap/{name}")


if __name__ == "__main__":
    main(sys.argv[1])
