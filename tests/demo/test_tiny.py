"""Tests for the tiny models: they load through the Auto classes like a real checkpoint, their chat templates put
the image where the processor expects it, and batched generation pads on the left."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    InternVLForConditionalGeneration,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    Qwen2VLForConditionalGeneration,
)

from mmkd.demo.processors import InternVLImageOnlyProcessor, Qwen2VLImageOnlyProcessor
from mmkd.demo.tiny import ARCHITECTURES, build_tiny
from mmkd.modeling import assistant_turn, generate, load_model, user_turn

EXPECTED = {
    "qwen2_vl": (
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageOnlyProcessor,
        "<|vision_start|><|image_pad|><|vision_end|>",
    ),
    "llava": (LlavaForConditionalGeneration, LlavaProcessor, "<image>"),
    "llava_next": (LlavaNextForConditionalGeneration, LlavaNextProcessor, "<image>"),
    "internvl": (InternVLForConditionalGeneration, InternVLImageOnlyProcessor, "<IMG_CONTEXT>"),
}
# Image tokens one 56x56 image becomes: Qwen2-VL merges 2x2 patches of 14 px (4 tokens); LLaVA keeps all 16 CLIP
# patches plus the class token ("full" feature strategy); LLaVA-NeXT takes the 16 patches of the base tile (no class
# token) plus the best grid (1x2 tiles: 4x8 patches, of which the unpadded 4x4 = 16) and one newline per row (4);
# InternVL makes one tile (square image) of 16 patches, pixel-shuffled 2x2 into 4 tokens.
IMAGE_TOKENS = {"qwen2_vl": 4, "llava": 17, "llava_next": 36, "internvl": 4}


def image(world_dir, i: int = 0) -> Image.Image:
    return Image.open(sorted((world_dir / "images").glob("test-*.png"))[i]).convert("RGB")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_through_auto_classes(tiny_models, arch):
    model_cls, processor_cls, _ = EXPECTED[arch]
    model = AutoModelForImageTextToText.from_pretrained(tiny_models[arch])
    processor = AutoProcessor.from_pretrained(tiny_models[arch])
    assert type(model) is model_cls
    assert type(processor) is processor_cls
    assert processor.tokenizer.padding_side == "left"
    assert model.generation_config.do_sample is False


@pytest.mark.parametrize(
    ("arch", "cls"), [("qwen2_vl", Qwen2VLImageOnlyProcessor), ("internvl", InternVLImageOnlyProcessor)]
)
def test_image_only_processors_have_no_video_processor(tiny_models, arch, cls):
    processor = AutoProcessor.from_pretrained(tiny_models[arch])
    assert isinstance(processor, cls)
    assert getattr(processor, "video_processor", None) is None


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt2'"):
        build_tiny("gpt2", tmp_path, ["some text"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chat_template_renders_the_image_placeholder(tiny_models, world_dir, arch):
    model, processor = load_model(tiny_models[arch], device="cpu")
    placeholder = EXPECTED[arch][2]
    prompt = processor.apply_chat_template(user_turn("Is this red?"), add_generation_prompt=True, tokenize=False)
    assert prompt.count(placeholder) == 1
    assert prompt.index(placeholder) < prompt.index("Is this red?")  # the image comes before the question

    enc = processor(text=[prompt], images=[image(world_dir)], return_tensors="pt")
    n_image = int((enc["input_ids"] == model.config.image_token_id).sum())
    assert n_image == IMAGE_TOKENS[arch]
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chat_template_is_prefix_consistent(tiny_models, arch):
    """Completion-only SFT finds the answer by rendering the prompt alone: it must be a prefix of the full turn."""
    processor = AutoProcessor.from_pretrained(tiny_models[arch])
    prompt = processor.apply_chat_template(user_turn("Q?"), add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(user_turn("Q?") + assistant_turn("Label: pristine."), tokenize=False)
    assert full.startswith(prompt)
    assert "Label: pristine." in full[len(prompt) :]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_pads_on_the_left_and_returns_one_string_per_input(tiny_models, world_dir, arch):
    model, processor = load_model(tiny_models[arch], device="cpu")
    prompts = ["Hi.", "Does the caption match the image, or is it out of context?", "A red circle in the city."]
    images = [image(world_dir, i) for i in range(3)]

    calls = []
    original = model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    model.generate = spy
    batched = generate(model, processor, prompts, images, max_new_tokens=4, batch_size=3)
    assert len(calls) == 1
    mask = calls[0]["attention_mask"]
    assert mask[:, -1].all(), "the last position of every row must be a real token (left padding)"
    lengths = mask.sum(dim=1)
    assert len(set(lengths.tolist())) == 3, "prompts of different lengths"
    for row, n in zip(mask, lengths, strict=True):
        assert row[-n:].all() and not row[:-n].any(), "padding must all be on the left"

    assert isinstance(batched, list) and len(batched) == 3
    assert all(isinstance(t, str) for t in batched)
    # Greedy answers must not depend on the batch: padding is masked out.
    alone = [generate(model, processor, [p], [im], max_new_tokens=4)[0] for p, im in zip(prompts, images, strict=True)]
    assert batched == alone


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_answers_every_batch_from_its_own_prompts(tiny_models, world_dir, arch):
    """Three prompts at batch_size=2 are two batches; the second must see its own prompt, not the first's answers."""
    model, processor = load_model(tiny_models[arch], device="cpu")
    prompts = ["Hi.", "Does the caption match the image, or is it out of context?", "A red circle in the city."]
    images = [image(world_dir, i) for i in range(3)]
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"].shape[0])
        return original(**kwargs)

    model.generate = spy
    batched = generate(model, processor, prompts, images, max_new_tokens=4, batch_size=2)
    assert seen == [2, 1]
    alone = [generate(model, processor, [p], [im], max_new_tokens=4)[0] for p, im in zip(prompts, images, strict=True)]
    assert batched == alone
