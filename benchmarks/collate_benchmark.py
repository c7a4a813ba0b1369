"""Time SFT steps with TRL's on-the-fly collation against ``cpu_speedups.cache_collated: true``
(mmkd.training.cpu_speedups.collate).

Two measurements on the demo's committed data (run ``dvc repro`` or ``dvc pull`` first):

- **collation alone**: fetching and collating every batch of ``--epochs`` epochs of the Stage-1 rows (both
  teachers' train answers) for the student base, in milliseconds per batch: the first epoch (the cache fills) and
  the mean of the later ones (every batch from the cache);
- **training**: ``--steps`` Stage-1 SFT steps (the committed ``params.yaml`` settings, LoRA included) with the cache
  off and on, alternating ``--rounds`` times, in seconds per 100 steps (model building excluded).

    python benchmarks/collate_benchmark.py
    python benchmarks/collate_benchmark.py --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

from mmkd.modeling import load_model
from mmkd.schema import read_answers, read_items
from mmkd.selection.targets import stage1_rows
from mmkd.stage_io import seed_everything
from mmkd.training import trainers
from mmkd.training.config import LoraSettings, Stage1Settings, TrainSettings, from_params
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.cpu_speedups.collate import CachedCollator
from mmkd.training.rows import with_prompts

ROOT = Path(__file__).resolve().parent.parent


class _StepClock(TrainerCallback):
    """Wall time from the first optimiser step's start to the end of training (model building excluded)."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.wall = time.perf_counter() - self.start


def collation_ms(rows, base: str, epochs: int, batch_size: int) -> dict[str, list[float]]:
    """Milliseconds per batch (fetch + collate), epoch by epoch, for TRL's collator and the cached one."""
    model, processor = load_model(base, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        args = trainers.SFTConfig(
            output_dir=tmp, report_to=[], remove_unused_columns=False, completion_only_loss=True, bf16=False
        )
        trl_collate = trainers.SFTTrainer(
            model=model, args=args, train_dataset=trainers.sft_dataset(rows), processing_class=processor
        ).data_collator
    out = {}
    for name, ds, collate in (
        ("trl", trainers.sft_dataset(rows), trl_collate),
        (
            "cached",
            trainers.row_index_dataset(rows),
            CachedCollator(trl_collate, processor.tokenizer.pad_token_id, examples=trainers.sft_dataset(rows)),
        ),
    ):
        generator = torch.Generator().manual_seed(0)
        out[name] = []
        for _ in range(epochs):
            order = torch.randperm(len(ds), generator=generator).tolist()
            starts = range(0, len(order), batch_size)
            start = time.perf_counter()
            for i in starts:
                collate(ds.__getitems__(order[i : i + batch_size]))  # how the DataLoader fetches a batch
            out[name].append(1000 * (time.perf_counter() - start) / len(starts))
    return out


def training_s_per_100(
    rows, base: str, settings: TrainSettings, lora: LoraSettings, steps: int, speedups: CpuSpeedups
) -> float:
    seed_everything(0)
    model, processor = load_model(base, device="cpu")
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainers.train_sft(
            model,
            processor,
            rows,
            replace(settings, max_steps=steps, logging_steps=steps),
            lora=lora,
            seed=0,
            live_dir=Path(tmp, "live"),
            callbacks=[clock],
            speedups=speedups,
        )
    return 100 * clock.wall / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of batches for the collation-only timing")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    world = ROOT / params["data"]["dir"]
    answers = {t: read_answers(ROOT / f"data/answers/{t}/train.parquet") for t in params["teacher_names"]}
    rows = with_prompts(
        stage1_rows(answers, policy=params["stage1"]["targets"]),
        read_items(world / "train.parquet"),
        params["student"]["prompt_version"],
    )
    base = str(ROOT / params["student"]["model"])
    stage1 = from_params(Stage1Settings, params["stage1"], "stage1")
    settings, lora = stage1.train, stage1.lora
    print(f"Stage-1 rows: {len(rows)}, batch {settings.batch_size}, {torch.get_num_threads()} torch threads")
    ms = collation_ms(rows, base, args.epochs, settings.batch_size)
    print(f"\n{'collation':<10}{'ms per batch, epoch 1':>23}{'later epochs (mean)':>21}")
    for name, values in ms.items():
        print(f"{name:<10}{values[0]:>23.1f}{sum(values[1:]) / len(values[1:]):>21.1f}")
    print(f"\n{'round':<7}{'cache_collated':>15}{'s per 100 steps':>17}")
    for r in range(args.rounds):
        for cached in (False, True):
            speedups = replace(stage1.cpu_speedups, cache_collated=cached)
            wall = training_s_per_100(rows, base, settings, lora, args.steps, speedups)
            print(f"{r:<7}{str(cached).lower():>15}{wall:>17.1f}", flush=True)


if __name__ == "__main__":
    main()
