"""Stage `bootstrap@<group>`: build the group's demo models from config and pre-train them, `jobs` at a time, into
models/<group>/<model> (see mmkd.demo.bootstrap)."""

# ruff: noqa: E402
from mmkd.numerics import pin_stage_numerics

if __name__ == "__main__":  # first: torch, MKL and oneDNN fix their kernels' ISA and threads as they load
    pin_stage_numerics()  # the `numerics` params (mmkd.numerics)
import sys

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.demo.bootstrap import BootstrapGroup, bootstrap_group
from mmkd.stage_io import read_params


def main(group: str) -> None:
    setup_logging()
    params = read_params()
    models_dir, live_dir = paths.bootstrap_dirs(group)
    bootstrap_group(
        BootstrapGroup(**params["bootstrap"][group]), params["data"]["dir"], out_root=models_dir, live_root=live_dir
    )


if __name__ == "__main__":
    main(sys.argv[1])
