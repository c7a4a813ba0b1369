"""Start a training stage as the ``launch`` params say: ``python stages/launch.py stages/stage1.py [--baseline X]``.

With ``launch.num_processes: 1`` and no ``launch.config_file`` (the default) the script replaces this process as
``python <script> [args]``, so the run is exactly the plain one. Otherwise this process becomes
``accelerate launch --config_file F --num_processes N <script> [args]``: one process per GPU, of which only rank 0
writes outputs (mmkd.training.trainers). docs/paper_scale.md#several-gpus-accelerate-launch.
"""

# ruff: noqa: E402
from mmkd.numerics import pin_stage_numerics

if __name__ == "__main__":  # first: torch, MKL and oneDNN fix their kernels' ISA and threads as they load
    pin_stage_numerics()  # the `numerics` params (mmkd.numerics)
import argparse
import logging
import os
import shlex
import sys

from mmkd.console import setup_logging
from mmkd.stage_io import read_params
from mmkd.training.config import from_params
from mmkd.training.launch import LaunchSettings, launch_command

log = logging.getLogger("launch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("script", help="the stage script, e.g. stages/stage1.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, e.g. --baseline gold_only")
    args = parser.parse_args()
    try:
        settings = from_params(LaunchSettings, read_params().get("launch"), "launch")
        command = launch_command(settings, args.script, args.args)
    except ValueError as exc:
        raise SystemExit(f"stages/launch.py: {exc}") from None
    if not settings.plain:  # (a plain run starts at once: setting up logging imports transformers)
        setup_logging()
        log.info("%s", shlex.join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # this process becomes the run: its exit status is the stage's


if __name__ == "__main__":
    main()
