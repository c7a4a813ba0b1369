"""Processor classes that let Qwen2-VL and InternVL models run without torchvision.

The stock ``Qwen2VLProcessor`` and ``InternVLProcessor`` insist on a video processor, and video processors need
torchvision, which does not import beside the CPU torch wheel we pin. Images are all mmkd needs, so these
subclasses drop video and are registered with ``AutoProcessor`` under their own names (``register``, run by
``mmkd.modeling.load_model`` through the ``mmkd.processors`` entry point); a checkpoint whose
``processor_config.json`` names one then loads through the ordinary ``AutoProcessor.from_pretrained`` path. (A real
checkpoint names the stock class, which loads as usual wherever torchvision is installed.)
"""

from __future__ import annotations

from transformers import AutoProcessor, InternVLConfig, InternVLProcessor, Qwen2VLConfig, Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video processor (and so without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


class InternVLImageOnlyProcessor(InternVLProcessor):
    """``InternVLProcessor`` without the video processor (and so without torchvision)."""

    def __init__(
        self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs
    ):
        kwargs.pop("video_processor", None)
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_length=image_seq_length,
            chat_template=chat_template,
            **kwargs,
        )


IMAGE_ONLY_PROCESSORS = {Qwen2VLConfig: Qwen2VLImageOnlyProcessor, InternVLConfig: InternVLImageOnlyProcessor}


def register() -> None:
    """Make ``AutoProcessor`` aware of the image-only processors (idempotent)."""
    import transformers

    for config_cls, processor_cls in IMAGE_ONLY_PROCESSORS.items():
        AutoProcessor.register(config_cls, processor_cls, exist_ok=True)
        # AutoProcessor resolves ``processor_class`` names through the transformers namespace as a fallback.
        setattr(transformers, processor_cls.__name__, processor_cls)
