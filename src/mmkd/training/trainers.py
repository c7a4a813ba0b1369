"""TRL ``SFTTrainer`` / ``DPOTrainer`` with PEFT LoRA on vision-language models, logged with dvclive.

Stage 1 trains a LoRA on the student base. Stage 2 merges the Stage-1 LoRA into the base and trains a *new*
LoRA on top: first SFT on the gold-agreeing teacher answers, then DPO. DPO's reference is the policy as DPO starts
(TRL copies the adapter into a frozen ``ref`` adapter): Stage 1 plus the Stage-2 SFT, the textbook SFT-then-DPO
setup; with ``run_sft: false`` it is exactly Stage 1. Only the trained adapter is saved, not the ``ref`` copy.

Under ``accelerate launch`` every rank runs this code on its shard of the rows; only rank 0 writes the adapter and
the logs (mmkd.training.distributed). Each phase logs to dvclive and shows one progress bar (mmkd.training.callbacks).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import datasets
import polars as pl
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from mmkd.modeling import adapter_info, assistant_turn, load_model, load_student, user_turn, write_adapter_info
from mmkd.training.callbacks import live_callbacks, quiet_progress
from mmkd.training.config import DPOSettings, LoraSettings, Stage2Settings, TrainSettings
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.cpu_speedups.collate import ROW_KEY, CachedCollator
from mmkd.training.cpu_speedups.logprob_head import logprob_head
from mmkd.training.distributed import (
    finish_distributed,
    gathered_trainable,
    is_main_process,
    use_local_gpu,
    wait_for_all,
    world_size,
)

log = logging.getLogger(__name__)


def epoch_top_up(rows: int, batch_size: int, processes: int) -> int:
    """Rows that accelerate's sampler hands out twice per epoch: every rank takes the same number of full batches
    (``even_batches``), so the last step of an epoch is topped up with rows from its start; 0 when ``rows`` is a
    multiple of ``batch_size * processes`` (and always for one process, whose last batch is just shorter)."""
    if processes == 1:
        return 0
    per_step = batch_size * processes
    return math.ceil(rows / per_step) * per_step - rows


def _log_sharding(rows: int, s: TrainSettings, desc: str) -> None:
    """One line per multi-process training phase: how the rows are split and the effective batch."""
    n = world_size()
    if n == 1 or not is_main_process():
        return
    log.info(
        "%s: %d rows sharded over %d processes; effective batch %d x %d x %d = %d; the last step of each epoch "
        "repeats %d row(s) from its start (accelerate even_batches)",
        desc,
        rows,
        n,
        s.batch_size,
        s.grad_accum,
        n,
        s.batch_size * s.grad_accum * n,
        epoch_top_up(rows, s.batch_size, n),
    )


def _images(paths: list[str], *, decode: bool = True) -> datasets.Dataset:
    # Images are stored by path and decoded lazily by `datasets`, so memory does not grow with the data.
    # decode=False leaves them as {"path": ...}, for a dataset whose images are never looked at (row_index_dataset).
    ds = datasets.Dataset.from_dict({"images": [[p] for p in paths]})
    return ds.cast_column("images", datasets.List(datasets.Image(mode="RGB", decode=decode)))


def sft_dataset(rows: pl.DataFrame) -> datasets.Dataset:
    """A TRL prompt-completion vision dataset from rows with ``image_path``, ``prompt`` and ``completion``."""
    ds = _images(rows["image_path"].to_list())
    ds = ds.add_column("prompt", [user_turn(p) for p in rows["prompt"]])
    return ds.add_column("completion", [assistant_turn(c) for c in rows["completion"]])


def row_index_dataset(rows: pl.DataFrame) -> datasets.Dataset:
    """What ``CachedCollator`` trains on: each row's index (``ROW_KEY``) and its undecoded image, by which TRL tells a
    vision dataset; the collator reads the full example from ``sft_dataset(rows)`` on a cache miss."""
    return _images(rows["image_path"].to_list(), decode=False).add_column(ROW_KEY, list(range(len(rows))))


def dpo_dataset(rows: pl.DataFrame) -> datasets.Dataset:
    """A TRL preference vision dataset from rows with ``image_path``, ``prompt``, ``chosen`` and ``rejected``."""
    ds = _images(rows["image_path"].to_list())
    ds = ds.add_column("prompt", [user_turn(p) for p in rows["prompt"]])
    ds = ds.add_column("chosen", [assistant_turn(c) for c in rows["chosen"]])
    return ds.add_column("rejected", [assistant_turn(c) for c in rows["rejected"]])


def lora_config(lora: LoraSettings) -> LoraConfig:
    """PEFT config for a causal-LM LoRA."""
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=list(lora.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def _args(config_cls, s: TrainSettings, out_dir: str, seed: int, **extra):
    s.check_hardware()
    if world_size() > 1:  # only here: a one-process run logs no distributed setting it does not use
        # Every LoRA parameter gets a gradient each step, so DDP need not search the graph for unused ones (which
        # also clashes with gradient checkpointing).
        extra.setdefault("ddp_find_unused_parameters", False)
        if not torch.cuda.is_available():
            extra.setdefault("use_cpu", True)  # without it accelerate sees no devices and runs every rank alone
    return config_cls(
        output_dir=out_dir,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm,
        logging_steps=s.logging_steps,
        bf16=s.bf16,
        tf32=s.tf32,
        gradient_checkpointing=s.gradient_checkpointing,
        max_length=s.max_length,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,  # fixed, not derived from the log level, so the logged args do not depend on verbosity
        **extra,
    )


def train_sft(
    model,
    processor,
    rows: pl.DataFrame,
    settings: TrainSettings,
    *,
    lora: LoraSettings | None,
    seed: int,
    live_dir,
    callbacks: Sequence[TrainerCallback] = (),
    speedups: CpuSpeedups | None = None,
):
    """Run TRL SFT (loss on the completion only); wraps ``model`` in a new LoRA when ``lora`` is given.

    ``callbacks`` are extra transformers callbacks (e.g. the GPU benchmark's step timer); ``speedups`` the optional
    CPU speed-ups for tiny models (off by default)."""
    speedups = speedups or CpuSpeedups()
    with tempfile.TemporaryDirectory() as tmp, logprob_head(speedups.logprob_head):
        trainer = SFTTrainer(
            model=model,
            args=_args(SFTConfig, settings, tmp, seed, completion_only_loss=True),
            train_dataset=row_index_dataset(rows) if speedups.cache_collated else sft_dataset(rows),
            processing_class=processor,
            peft_config=lora_config(lora) if lora else None,
            callbacks=[
                *live_callbacks(live_dir, {"sft": asdict(settings), "lora": asdict(lora) if lora else None}),
                *callbacks,
            ],
        )
        if speedups.cache_collated:  # TRL's own collator, run once per example (mmkd.training.cpu_speedups.collate)
            trainer.data_collator = CachedCollator(
                trainer.data_collator, processor.tokenizer.pad_token_id, examples=sft_dataset(rows)
            )
        quiet_progress(trainer, live_dir)
        _log_sharding(len(rows), settings, "SFT")
        trainer.train()
    return trainer.model


def check_dpo_length(processor, rows: pl.DataFrame, max_length: int | None) -> None:
    """Refuse a ``max_length`` shorter than a prompt + response: DPO would then train nothing (loss stays ln 2)."""
    if max_length is None or rows.is_empty():
        return
    tok = processor.tokenizer
    for row in rows.iter_rows(named=True):
        prompt = processor.apply_chat_template(user_turn(row["prompt"]), add_generation_prompt=True, tokenize=False)
        longest = max(len(tok(prompt + row[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
        if longest > max_length:
            raise ValueError(
                f"stage2.dpo.max_length={max_length} is shorter than item {row['id']!r} (about {longest} text tokens "
                "before image tokens); DPO would truncate the responses and learn nothing. Set it to null or raise it."
            )


def train_dpo(
    model,
    processor,
    rows: pl.DataFrame,
    settings: DPOSettings,
    *,
    seed: int,
    live_dir,
    callbacks: Sequence[TrainerCallback] = (),
    speedups: CpuSpeedups | None = None,
):
    """Run TRL DPO on a PEFT model; the reference is a frozen copy of the policy as training starts. Of the CPU
    ``speedups`` only ``logprob_head`` applies: DPO collates on the fly."""
    check_dpo_length(processor, rows, settings.max_length)
    speedups = speedups or CpuSpeedups()
    with tempfile.TemporaryDirectory() as tmp, logprob_head(speedups.logprob_head):
        trainer = DPOTrainer(
            model=model,
            args=_args(DPOConfig, settings, tmp, seed, beta=settings.beta),
            train_dataset=dpo_dataset(rows),
            processing_class=processor,
            callbacks=[*live_callbacks(live_dir, {"dpo": asdict(settings)}), *callbacks],
        )
        quiet_progress(trainer, live_dir)
        _log_sharding(len(rows), settings, "DPO")
        trainer.train()
    return trainer.model


def _save_adapter(
    model: PeftModel,
    out_dir: str | Path,
    *,
    base: str,
    parent: str | None,
    max_image_pixels: int | None,
    prompt_version: str | None,
) -> None:
    state_dict = gathered_trainable(model)  # every rank takes part; only rank 0 writes
    finish_distributed()
    if is_main_process():
        out = Path(out_dir)
        if out.exists():
            shutil.rmtree(out)
        # Only a sharded model passes its gathered weights: PEFT reads a whole model's own, the same tensors.
        extra = {} if state_dict is None else {"state_dict": state_dict}
        model.save_pretrained(out, safe_serialization=True, selected_adapters=["default"], **extra)
        write_adapter_info(
            out, base=base, parent=parent, max_image_pixels=max_image_pixels, prompt_version=prompt_version
        )
    wait_for_all()  # so that on every rank the adapter is on disk when this returns


def run_stage1(
    base: str,
    rows: pl.DataFrame,
    *,
    lora: LoraSettings,
    settings: TrainSettings,
    seed: int,
    out_dir: str | Path,
    live_dir: str | Path,
    dtype: str = "float32",
    callbacks: Sequence[TrainerCallback] = (),
    prompt_version: str | None = None,
    speedups: CpuSpeedups | None = None,
    allow_empty: bool = False,
) -> None:
    """Stage 1: LoRA SFT of the student base on the teachers' answers; saves the adapter to ``out_dir``.

    With ``allow_empty`` (a baseline whose selection gave no target), no rows save an untrained LoRA (its B
    matrices are zero, so it answers as the base does) instead of failing."""
    if rows.is_empty() and not allow_empty:
        raise ValueError("Stage 1 has no training rows: no teacher answer parsed. Check data/answers/*/train.parquet")
    settings.check_hardware()  # before the (possibly 7B) model is loaded
    use_local_gpu()
    model, processor = load_model(base, dtype=dtype, max_image_pixels=settings.max_image_pixels)
    if rows.is_empty():
        log.warning("no training rows: saving an untrained adapter (the base model's answers) to %s", out_dir)
        if is_main_process():
            Path(live_dir).mkdir(parents=True, exist_ok=True)
        _save_adapter(
            get_peft_model(model, lora_config(lora)),
            out_dir,
            base=base,
            parent=None,
            max_image_pixels=settings.max_image_pixels,
            prompt_version=prompt_version,
        )
        return
    model = train_sft(
        model,
        processor,
        rows,
        settings,
        lora=lora,
        seed=seed,
        live_dir=live_dir,
        callbacks=callbacks,
        speedups=speedups,
    )
    _save_adapter(
        model,
        out_dir,
        base=base,
        parent=None,
        max_image_pixels=settings.max_image_pixels,
        prompt_version=prompt_version,
    )


def run_stage2(
    base: str,
    stage1: str,
    sft_rows: pl.DataFrame,
    pairs: pl.DataFrame,
    *,
    settings: Stage2Settings,
    seed: int,
    out_dir: str | Path,
    live_dir: str | Path,
    dtype: str = "float32",
    callbacks: Sequence[TrainerCallback] = (),
    prompt_version: str | None = None,
) -> bool:
    """Stage 2 on the conflict set. Returns False (and passes Stage 1 through unchanged) when there is nothing to
    train on. Images are capped as ``settings.max_image_pixels`` says, else as Stage 1 was."""
    do_sft = settings.run_sft and not sft_rows.is_empty()
    do_dpo = settings.run_dpo and not pairs.is_empty()
    if not (do_sft or do_dpo):
        log.warning(
            "Stage 2: the conflict set gives no training data (%d SFT rows, %d DPO pairs); passing Stage 1 through "
            "unchanged to %s",
            len(sft_rows),
            len(pairs),
            out_dir,
        )
        if is_main_process():
            out = Path(out_dir)
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(stage1, out)  # same adapter, same base, same (absent) parent
            Path(live_dir).mkdir(parents=True, exist_ok=True)
        return False
    for phase, run in ((settings.sft, do_sft), (settings.dpo, do_dpo)):
        if run:
            phase.check_hardware()  # before the model is loaded
    max_image_pixels = settings.max_image_pixels or adapter_info(stage1).get("max_image_pixels")
    use_local_gpu()
    model, processor = load_student(base, stage1, dtype=dtype, max_image_pixels=max_image_pixels)
    model = get_peft_model(model, lora_config(settings.lora))  # one new LoRA, trained by SFT then DPO
    if do_sft:
        model = train_sft(
            model,
            processor,
            sft_rows,
            settings.sft,
            lora=None,
            seed=seed,
            live_dir=Path(live_dir, "sft"),
            callbacks=callbacks,
            speedups=settings.cpu_speedups,
        )
    if do_dpo:
        model = train_dpo(
            model,
            processor,
            pairs,
            settings.dpo,
            seed=seed,
            live_dir=Path(live_dir, "dpo"),
            callbacks=callbacks,
            speedups=settings.cpu_speedups,
        )
    _save_adapter(
        model, out_dir, base=base, parent=stage1, max_image_pixels=max_image_pixels, prompt_version=prompt_version
    )
    return True
