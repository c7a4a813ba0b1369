"""Typed, documented training settings: the ``stage1`` and ``stage2`` params (and each demo model's ``train``).

Every field is a pipeline param with a one-line docstring under it (docs/config.md lists them all). The paper
publishes no training settings, so the defaults are ours; the profiles in conf/stage1 and conf/stage2 set the
values a run uses, and docs/demo.md and docs/paper_scale.md say how they were chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import get_type_hints

from mmkd.items import check_max_image_pixels
from mmkd.selection.targets import STAGE1_TARGETS
from mmkd.training.cpu_speedups import CpuSpeedups

# LoRA on the language model only (the vision tower and projector stay frozen), on every attention and MLP
# projection. The regex is matched against full module names (``model.language_model.layers.0.self_attn.q_proj``),
# so it works for Qwen2-VL, LLaVA, LLaVA-NeXT and InternVL; the ``language_model`` part matters, since the CLIP and
# InternViT towers have q/k/v projections of the same names (tests/test_architectures.py checks both).
LANGUAGE_MODEL_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class LoraSettings:
    """PEFT LoRA settings."""

    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = LANGUAGE_MODEL_PROJECTIONS
    """A regex over full module names, or a list of module-name suffixes; the default is the language model's
    attention and MLP projections."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full beside the LoRA (PEFT ``modules_to_save``), e.g. ``[lm_head]``; empty for pretrained
    students, whose output layer already knows every word."""

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainSettings:
    """Optimiser and loop settings shared by SFT and DPO (TRL/transformers names where they exist).

    Where a default differs from TRL's, the field says so. The effective batch is ``batch_size * grad_accum *
    number of GPUs``.
    """

    epochs: float = 1.0
    """Passes over the training rows (ignored when ``max_steps > 0``)."""
    max_steps: int = -1
    """Optimiser steps; > 0 overrides ``epochs``."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    batch_size: int = 8
    """Rows per device per forward pass (transformers' ``per_device_train_batch_size``)."""
    grad_accum: int = 1
    """Forward passes per optimiser step."""
    lr_scheduler: str = "cosine"
    """A transformers scheduler name (``cosine``, ``linear``, ``constant``, ...)."""
    warmup_steps: float = 0.0
    """Warm-up steps, or a fraction of all steps when < 1."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    logging_steps: int = 5
    """Log loss and learning rate every this many steps (dvclive)."""
    bf16: bool = False
    """bfloat16 mixed precision. TRL defaults to true, which fails on a CPU; the paper profiles turn it on."""
    tf32: bool | None = None
    """TF32 matmuls for what stays in fp32 (Ampere+ GPUs); null leaves torch's setting."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (TRL defaults to true); on for large models, off for tiny ones."""
    max_length: int | None = None
    """Truncate rows to this many tokens; null never truncates (a DPO value shorter than prompt + response would
    train nothing, so it is refused)."""
    max_image_pixels: int | None = None
    """Cap on one image's pixels, so on its image tokens (``mmkd.modeling.cap_image_pixels``); null: the
    processor's default. Recorded in the adapter, so evaluation and ``mmkd predict`` use it too."""

    def __post_init__(self):
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {self.batch_size}, {self.grad_accum}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        check_max_image_pixels(self.max_image_pixels)

    def check_hardware(self) -> None:
        """Refuse settings this machine cannot run, before any model is loaded (TRL fails later and less clearly)."""
        import torch  # here, so that reading settings does not import torch

        if self.bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
            raise ValueError(
                "bf16: true needs a CUDA GPU with bfloat16 support, and there is none here. For a CPU run set "
                "bf16: false in stage1.train / stage2.sft / stage2.dpo (the demo profiles do)."
            )
        if self.tf32 and not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8):
            raise ValueError("tf32: true needs an Ampere or newer CUDA GPU; set tf32: null (or false) here.")


@dataclass
class DPOSettings(TrainSettings):
    """DPO settings: ``TrainSettings`` plus the DPO temperature."""

    beta: float = 0.1
    """DPO temperature: how far the policy may move from the reference."""
    learning_rate: float = 5e-5
    """Peak learning rate (smaller than SFT's: DPO wants a smaller step)."""

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}")


@dataclass
class Stage1Settings:
    """Stage 1: LoRA SFT of the student base on the teachers' answers to every training item."""

    targets: str = "all"
    """Which teacher answers are targets: ``all`` (every parsed answer), ``agreed`` (items all teachers agree on),
    ``majority`` (the answers that carry an item's strict majority label; all of them on a tie)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The Stage-1 LoRA."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """The Stage-1 SFT loop."""
    cpu_speedups: CpuSpeedups = field(default_factory=CpuSpeedups)
    """Optional CPU speed-ups for tiny models (mmkd.training.cpu_speedups); off unless set."""

    def __post_init__(self):
        if self.targets not in STAGE1_TARGETS:
            raise ValueError(f"stage1.targets must be one of {STAGE1_TARGETS}, got {self.targets!r}")


@dataclass
class Stage2Settings:
    """Stage 2: a fresh LoRA on the merged Stage-1 model, first SFT on the gold-agreeing answers, then DPO."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    """The Stage-2 LoRA (one adapter, trained by SFT then DPO)."""
    sft: TrainSettings = field(default_factory=TrainSettings)
    """The SFT loop on the teachers' answers that match gold."""
    dpo: DPOSettings = field(default_factory=DPOSettings)
    """The DPO loop on (gold-matching, other) answer pairs."""
    run_sft: bool = True
    """Run the SFT phase."""
    run_dpo: bool = True
    """Run the DPO phase."""
    cpu_speedups: CpuSpeedups = field(default_factory=CpuSpeedups)
    """Optional CPU speed-ups for tiny models (``cache_collated`` applies to SFT only); off unless set."""

    def __post_init__(self):
        caps = (self.sft.max_image_pixels, self.dpo.max_image_pixels)
        if None not in caps and caps[0] != caps[1]:
            raise ValueError(
                f"stage2.sft.max_image_pixels={caps[0]} and stage2.dpo.max_image_pixels={caps[1]} differ; one adapter "
                "sees images at one resolution: set them equal (or set one and leave the other null)"
            )

    @property
    def max_image_pixels(self) -> int | None:
        """The Stage-2 image cap (SFT's or DPO's, whichever is set); None: keep the one Stage 1 recorded."""
        return self.sft.max_image_pixels or self.dpo.max_image_pixels


def from_params(cls, params: dict | None, where: str | None = None):
    """Build a settings dataclass from a params mapping, nested settings included, with an error that names the
    unknown key and where it is (``where``, e.g. ``stage2.dpo``)."""
    where = where or cls.__name__
    params = dict(params or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    hints = get_type_hints(cls)
    for name, value in params.items():
        if is_dataclass(hints[name]) and not is_dataclass(value):
            params[name] = from_params(hints[name], value, f"{where}.{name}")
    return cls(**params)
