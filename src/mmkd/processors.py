"""Processor classes that let Qwen2-VL-family models run without torchvision.

The stock ``Qwen2VLProcessor`` insists on a video processor, and the video processor needs torchvision, which
does not import beside the CPU torch wheel we pin. Images are all mmkd needs, so this subclass drops video and
is registered with ``AutoProcessor`` under its own name; a checkpoint whose ``processor_config.json`` names it
loads through the ordinary ``AutoProcessor.from_pretrained`` path.
"""

from __future__ import annotations

from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video processor (and so without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


def register() -> None:
    """Make ``AutoProcessor`` aware of the image-only processor (idempotent)."""
    AutoProcessor.register(Qwen2VLConfig, Qwen2VLImageOnlyProcessor, exist_ok=True)
    import transformers

    # AutoProcessor resolves ``processor_class`` names through the transformers namespace as a fallback.
    transformers.Qwen2VLImageOnlyProcessor = Qwen2VLImageOnlyProcessor


register()
