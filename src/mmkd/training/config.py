"""Typed, documented training settings. Each field is a pipeline param (see params.yaml); defaults are ours, the
paper publishes none."""

from __future__ import annotations

from dataclasses import dataclass, field

# LoRA on the language model only (the vision tower and projector stay frozen), on every attention and MLP
# projection. The regex is matched against full module names (``model.language_model.layers.0.self_attn.q_proj``),
# so it works for Qwen2-VL, LLaVA, LLaVA-NeXT and InternVL; the ``language_model`` part matters, since the CLIP and
# InternViT towers have q/k/v projections of the same names (tests/test_architectures.py checks both).
LANGUAGE_MODEL_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

LOGPROB_HEADS = ("chunked", "full")  # see mmkd.training.logprob_head

MIN_IMAGE_PIXELS = 28 * 28  # the smallest image any supported family can take (one merged Qwen2-VL patch)


@dataclass
class LoraSettings:
    """PEFT LoRA settings."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = LANGUAGE_MODEL_PROJECTIONS  # a regex, or a list of module-name suffixes
    # Modules trained in full beside the LoRA (PEFT ``modules_to_save``), e.g. ["lm_head"]. Empty for real models,
    # whose output layer already knows every word; the demo's tiny student base has never written the answer
    # format's words, and LoRA alone cannot raise their logits far enough (measured: loss stalls near 1.9).
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainSettings:
    """Optimiser and loop settings shared by SFT and DPO (TRL/transformers names where they exist).

    The defaults are the CPU demo's. The GPU settings (``bf16``, ``tf32``, ``gradient_checkpointing``,
    ``max_image_pixels``) are off/unset by default and turned on in the paper-scale profiles (conf/*/paper.yaml,
    docs/paper_scale.md). The effective batch is ``batch_size * grad_accum * number of GPUs``.
    """

    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 8  # per device (transformers' per_device_train_batch_size)
    grad_accum: int = 1  # optimiser step every grad_accum batches
    lr_scheduler: str = "cosine"
    warmup_steps: float = 0.0  # steps, or a fraction of all steps when < 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    bf16: bool = False  # TRL defaults to True, which fails on CPU; turn on for GPU runs (needs a bf16 GPU)
    tf32: bool | None = None  # None: leave torch's setting; True: TF32 matmuls for what is left in fp32 (Ampere+)
    gradient_checkpointing: bool = False  # TRL defaults to True; on for large models, off for tiny ones
    max_length: int | None = None  # None: never truncate (a too-short max_length silently trains nothing in DPO)
    # Cap on the pixels of one image as the processor sees it, so on its image tokens (mmkd.modeling.cap_image_pixels
    # says how each model family applies it). None: the processor's own default. Recorded in the adapter, so
    # evaluation and `mmkd predict` use the same resolution.
    max_image_pixels: int | None = None
    # How per-token log-probabilities are computed (mmkd.training.logprob_head): "chunked" is TRL's fused LM head,
    # which never builds the logits (what a large vocabulary on a GPU needs); "full" builds them, 2-4x faster on
    # a CPU for a small vocabulary (the demo profiles use it). Same loss and gradients either way.
    logprob_head: str = "chunked"
    # SFT only: collate each example once (TRL's collator) and pad later batches from the cache
    # (mmkd.training.collate). Same batches, so the same weights; it keeps every example's pixels in memory, which a
    # tiny demo model affords (a quarter of its step is collation) and a real model's data does not. DPO: false.
    cache_collated: bool = False

    def __post_init__(self):
        if self.logprob_head not in LOGPROB_HEADS:
            raise ValueError(f"logprob_head must be one of {LOGPROB_HEADS}, got {self.logprob_head!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {self.batch_size}, {self.grad_accum}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_image_pixels is not None and self.max_image_pixels < MIN_IMAGE_PIXELS:
            raise ValueError(
                f"max_image_pixels must be null or >= {MIN_IMAGE_PIXELS} (28x28 pixels), got {self.max_image_pixels}"
            )

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
    learning_rate: float = 5e-5  # DPO wants a smaller step than SFT

    def __post_init__(self):
        super().__post_init__()
        if self.cache_collated:
            raise ValueError("cache_collated is an SFT setting; DPO collates on the fly: set dpo.cache_collated: false")
        if self.beta <= 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}")


@dataclass
class Stage2Settings:
    """Stage 2: a fresh LoRA on the merged Stage-1 model, first SFT on the gold-agreeing answers, then DPO."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    sft: TrainSettings = field(default_factory=TrainSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    run_sft: bool = True
    run_dpo: bool = True

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


def from_params(cls, params: dict | None):
    """Build a settings dataclass from a params mapping, with an error that names the unknown key."""
    params = dict(params or {})
    known = cls.__dataclass_fields__
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown setting(s) {unknown}; known: {sorted(known)}")
    if cls is Stage2Settings:
        params = {
            "lora": from_params(LoraSettings, params.get("lora")),
            "sft": from_params(TrainSettings, params.get("sft")),
            "dpo": from_params(DPOSettings, params.get("dpo")),
            **{k: v for k, v in params.items() if k not in ("lora", "sft", "dpo")},
        }
    return cls(**params)
