"""Tiny teachers that write the answer format: a tiny model from ``mmkd.demo.tiny`` fine-tuned for a few seconds
on label-first answers (a given label, a quoted rationale) to given items: the demo world's bootstrap items
(the ``answering_models`` fixture), or a test's own.

A randomly initialised model never writes a ``Label:`` field, so its answers are all unparsed: nothing to score, no
Stage-1 row. These answer in the format with either label likely at the slot (60 steps teach the format, not which
label is right), which is what a test of serving or of the whole pipeline on non-demo data needs. Quoted rationales
let a JSON string end (the model's closing quote ends the value).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from mmkd.modeling import load_model
from mmkd.parsing import format_answer
from mmkd.schema import FALSIFIED, PRISTINE
from mmkd.training.config import TrainSettings
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.rows import with_prompts
from mmkd.training.trainers import train_sft

PROMPT_VERSION = "v1"
RATIONALES = {PRISTINE: '"the caption fits"', FALSIFIED: '"the caption does not fit"'}
TRAIN = TrainSettings(max_steps=60, batch_size=8, learning_rate=5e-3, logging_steps=20)


def trained_like(
    base: Path,
    items: pl.DataFrame,
    labels: pl.DataFrame,
    out: Path,
    prompt_version: str = PROMPT_VERSION,
    train: TrainSettings = TRAIN,
) -> Path:
    """A copy of the tiny model ``base`` in ``out``, fine-tuned (in full, no LoRA) on ``items`` with label-first
    answers giving each item's label in ``labels`` (``id``, ``gold_label``); returns ``out``."""
    shutil.copytree(base, out)
    rows = pl.DataFrame(
        {"id": labels["id"], "completion": [format_answer(g, RATIONALES[g]) for g in labels["gold_label"]]}
    )
    rows = with_prompts(rows, items, prompt_version)
    model, processor = load_model(out, device="cpu")
    speedups = CpuSpeedups(logprob_head="full", cache_collated=True)
    model = train_sft(model, processor, rows, train, lora=None, seed=0, live_dir=out / "live", speedups=speedups)
    shutil.rmtree(out / "live")
    model.save_pretrained(out)
    return out
