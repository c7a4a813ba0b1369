"""A teacher (or student) run in-process with transformers: any ``AutoModelForImageTextToText`` directory."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.modeling import generate, load_model, load_student
from mmkd.teachers.base import TeacherReply, TeacherRequest


@dataclass
class LocalConfig:
    """Settings of the local transformers backend.

    model: a local model directory (track it with DVC so labels depend on the weights).
    adapter: an mmkd adapter directory applied on top (used for the student).
    """

    model: str
    adapter: str | None = None
    dtype: str = "float32"  # bfloat16 for large models on GPU
    device: str = "auto"  # auto: cuda when available
    device_map: str | None = None  # e.g. "auto" to shard a 72B model over GPUs
    batch_size: int = 16
    max_new_tokens: int = 64

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"batch_size and max_new_tokens must be >= 1, got {self.batch_size}, {self.max_new_tokens}"
            )


class LocalTeacher:
    """Generates greedily in batches with left padding through the model's own processor and chat template."""

    def __init__(self, config: LocalConfig, name: str = "local"):
        self.config = config
        self.name = name
        if config.adapter:
            self.model, self.processor = load_student(
                config.model, config.adapter, dtype=config.dtype, device=config.device
            )
        else:
            self.model, self.processor = load_model(
                config.model, dtype=config.dtype, device=config.device, device_map=config.device_map
            )

    def answer(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        texts = generate(
            self.model,
            self.processor,
            [r.prompt for r in requests],
            [r.image for r in requests],
            max_new_tokens=self.config.max_new_tokens,
            batch_size=self.config.batch_size,
            desc=self.name,
        )
        return [TeacherReply(item_id=r.item_id, text=t) for r, t in zip(requests, texts, strict=True)]
