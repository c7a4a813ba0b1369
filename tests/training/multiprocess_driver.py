"""What stages/stage1.py and stages/stage2.py do, on a tiny model and tables the test writes: Stage 1 (with both CPU
speed-ups), its val threshold on the main process, then Stage 2 (SFT + DPO, TRL's plain path) on top.

Run by tests/training/test_multiprocess.py through stages/launch.py, as one plain process and as two under
``accelerate launch``. Every rank writes its outputs under ``--out``, relative to its working directory; ranks other
than 0 first move into ``--sandbox``/rank<R>, so anything they write lands there (the test wants it empty), while every
rank reads Stage 1 from rank 0's folder. ``--trace DIR`` records, per rank, the rows each Stage-1 batch holds
(``rank<R>.jsonl``), which is how the test sees the sharding.
"""

import argparse
import json
import os
from pathlib import Path

import polars as pl
import torch

from mmkd.console import setup_logging
from mmkd.evaluation.thresholds import calibrate_adapter
from mmkd.schema import read_gold, read_items
from mmkd.stage_io import seed_everything
from mmkd.training.config import DPOSettings, LoraSettings, Stage2Settings, TrainSettings
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.cpu_speedups.collate import ROW_KEY, CachedCollator
from mmkd.training.trainers import is_main_process, run_stage1, run_stage2

# No dropout: each rank draws its own masks, so with dropout two processes could not match one.
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def trace_batches(trace_dir: Path) -> None:
    """Append the row indices of every batch this rank collates to ``trace_dir/rank<R>.jsonl``."""
    path = trace_dir / f"rank{os.environ.get('RANK', '0')}.jsonl"
    collate = CachedCollator.__call__

    def recording(self, batch):
        with path.open("a") as f:
            f.write(json.dumps([example[ROW_KEY] for example in batch]) + "\n")
        return collate(self, batch)

    CachedCollator.__call__ = recording


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--base", "--sft-rows", "--pairs", "--val-items", "--val-gold", "--out", "--trace", "--sandbox"):
        parser.add_argument(name, required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="rows per process per step")
    args = parser.parse_args()
    setup_logging()
    seed_everything(0)
    out, trace, rank = Path(args.out), Path(args.trace).resolve(), int(os.environ.get("RANK", "0"))
    stage1 = (out / "stage1").resolve()  # rank 0's, which every rank reads
    if rank != 0:
        sandbox = Path(args.sandbox, f"rank{rank}")
        sandbox.mkdir(parents=True)
        os.chdir(sandbox)
    trace.mkdir(parents=True, exist_ok=True)
    trace_batches(trace)
    val_items, val_gold = read_items(args.val_items), read_gold(args.val_gold)

    def calibrate(adapter: Path) -> None:
        if is_main_process():  # as the stage scripts do
            calibrate_adapter(adapter, val_items, val_gold, base=args.base, prompt_version="v1", max_new_tokens=8)
        if torch.distributed.is_initialized():  # in the pipeline, Stage 2 is a later stage: wait as if it were
            torch.distributed.barrier()

    train = dict(batch_size=args.batch_size, learning_rate=1e-2, logging_steps=1)
    run_stage1(
        args.base,
        pl.read_parquet(args.sft_rows),
        lora=LORA,
        settings=TrainSettings(max_steps=3, **train),
        seed=0,
        out_dir=out / "stage1",  # relative: each rank's own working directory
        live_dir=out / "dvclive" / "stage1",
        speedups=CpuSpeedups(logprob_head="full", cache_collated=True),
        prompt_version="v1",
    )
    calibrate(out / "stage1")
    pairs = pl.read_parquet(args.pairs)
    run_stage2(
        args.base,
        str(stage1),
        pairs.select("id", "image_path", "prompt", pl.col("chosen").alias("completion")),
        pairs,
        settings=Stage2Settings(
            lora=LORA, sft=TrainSettings(max_steps=2, **train), dpo=DPOSettings(max_steps=2, beta=0.1, **train)
        ),
        seed=0,
        out_dir=out / "stage2",
        live_dir=out / "dvclive" / "stage2",
        prompt_version="v1",
    )


if __name__ == "__main__":
    main()
