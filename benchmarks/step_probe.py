"""How fast does this machine train a demo model right now? A probe to read cold-repro timings against.

Bootstraps ``teacher_qwen`` alone (not beside the group's other models), with its settings in ``conf/`` composed
with ``bootstrap=<group>`` (the default config ships the models and trains none), for a fixed number of steps on
the world in ``data.dir`` (run ``dvc repro world@demo`` or ``dvc pull`` first) and prints
the wall time (building the model included, about 2 s) for each torch thread count asked for.
Shared hosts change speed from hour to hour; the cold ``dvc repro`` time (see
``repro_benchmark.py``) moves with this number, since training is most of it.

    python benchmarks/step_probe.py                      # 100 steps, 2 threads
    python benchmarks/step_probe.py --steps 200 --threads 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mmkd.cli import compose
from mmkd.demo.bootstrap import BootstrapSettings, bootstrap_model
from mmkd.stage_io import seed_everything

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--model", default="teacher_qwen", help="a model of params.yaml's bootstrap.<group>.models")
    parser.add_argument("--group", default="demo", help="the bootstrap group it is in (conf/bootstrap/<group>.yaml)")
    args = parser.parse_args()
    params = compose([f"bootstrap={args.group}"], ROOT / "conf")
    world = ROOT / params["data"]["dir"]
    if not (world / "bootstrap.parquet").exists():
        raise SystemExit(f"{world}/bootstrap.parquet is missing: run `dvc repro world@demo` (or `dvc pull`) first")
    config = params["bootstrap"][args.group]["models"][args.model]
    config["train"] = config["train"] | {"max_steps": args.steps, "logging_steps": args.steps}
    print(f"{'model':<14}{'threads':>8}{'steps':>7}{'wall s':>9}{'s/100 steps':>13}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        settings = BootstrapSettings(**config)
        seed_everything(settings.seed)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            bootstrap_model(args.model, world, Path(tmp, "model"), settings, live_dir=Path(tmp, "live"))
            wall = time.perf_counter() - start
        print(f"{args.model:<14}{threads:>8}{args.steps:>7}{wall:>9.1f}{100 * wall / args.steps:>13.1f}")


if __name__ == "__main__":
    main()
