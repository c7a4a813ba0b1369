"""A teacher (or student) run in-process with transformers: any ``AutoModelForImageTextToText`` directory."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mmkd.inference.answer_cache import file_sha256
from mmkd.inference.base import BackendUsage, InferenceReply, InferenceRequest, ReplyCallback
from mmkd.items import check_max_image_pixels


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
    attn_implementation: str | None = None  # sdpa, flash_attention_2, eager; None: transformers' default (sdpa)
    # Cap on one image's pixels, so on its image tokens (mmkd.modeling.cap_image_pixels). None: the processor's
    # default, or for an adapter the cap it was trained with.
    max_image_pixels: int | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"batch_size and max_new_tokens must be >= 1, got {self.batch_size}, {self.max_new_tokens}"
            )
        check_max_image_pixels(self.max_image_pixels)


class LocalBackend:
    """Generates greedily in batches with left padding through the model's own processor and chat template; each
    reply carries its score (P(falsified) at the label slot, mmkd.scoring)."""

    def __init__(self, config: LocalConfig, name: str = "local"):
        self.config = config
        self.name = name
        self.usage = BackendUsage()
        self._loaded = None

    def _load(self):
        """The model and processor, loaded on first use: a run whose answers all come from the cache loads none."""
        if self._loaded is not None:
            return self._loaded
        from mmkd.modeling import load_model, load_student  # torch + transformers: only when a local model runs

        config = self.config
        if config.adapter:
            self._loaded = load_student(
                config.model,
                config.adapter,
                dtype=config.dtype,
                device=config.device,
                max_image_pixels=config.max_image_pixels,
            )
        else:
            self._loaded = load_model(
                config.model,
                dtype=config.dtype,
                device=config.device,
                device_map=config.device_map,
                attn_implementation=config.attn_implementation,
                max_image_pixels=config.max_image_pixels,
            )
        return self._loaded

    @property
    def model(self):
        return self._load()[0]

    @property
    def processor(self):
        return self._load()[1]

    def answer(
        self, requests: Iterable[InferenceRequest], on_reply: ReplyCallback | None = None
    ) -> list[InferenceReply]:
        replies: list[InferenceReply] = []
        size = self.config.batch_size
        # One batch at a time, taken from the stream as it is needed and reported when done.
        stream = iter(requests)
        while batch := list(itertools.islice(stream, size)):
            # torch + transformers (about 2 s of CPU) only once there is something to ask: a run whose answers all
            # come from the cache or the previous outputs never imports them
            from mmkd.modeling import generate
            from mmkd.scoring import generated_score

            answers = generate(
                self.model,
                self.processor,
                [r.prompt for r in batch],
                [r.image for r in batch],
                max_new_tokens=self.config.max_new_tokens,
                batch_size=size,
                desc=self.name,
                score=generated_score,
            )
            for r, (text, score) in zip(batch, answers, strict=True):
                replies.append(InferenceReply(item_id=r.item_id, text=text, score=score))
                self.usage.requests += 1
                if on_reply is not None:
                    on_reply(replies[-1])
        return replies

    def score_answer(self, request: InferenceRequest, text: str) -> float | None:
        """The score of an answer this model gave before (e.g. cached before scores were kept), by one
        teacher-forced pass (mmkd.scoring.label_score): the score generation would have read."""
        from mmkd.scoring import label_score

        return label_score(self.model, self.processor, request.prompt, request.image, text)

    def identity(self) -> dict:
        # The score is read from the same answer, so it is not part of the key: answers cached before scores were
        # kept stay valid, and get their score from ``score_answer``.
        return self._identity

    @cached_property
    def _identity(self) -> dict:
        # The weights' content, not their path: new weights under the same path must not reuse old answers.
        return {
            "backend": "local",
            "weights_sha256": _dir_sha256(self.config.model),
            "adapter_sha256": _dir_sha256(self.config.adapter) if self.config.adapter else None,
            "dtype": self.config.dtype,
            "max_new_tokens": self.config.max_new_tokens,
            # The image cap changes what the model sees; only when set, so that uncapped keys stay as they were.
            **({"max_image_pixels": self.config.max_image_pixels} if self.config.max_image_pixels else {}),
        }


def _dir_sha256(path: str | Path) -> str:
    """SHA-256 over the names and bytes of every file in a model directory (or of one file)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.relative_to(root) if root.is_dir() else p.name}\0{file_sha256(p)}\0".encode())
    return digest.hexdigest()
