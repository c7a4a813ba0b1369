"""Tiny vision-language models built from config, for tests and the offline demo.

Nothing can be downloaded here, so every model the tests and the default pipeline use is built from a config
with random weights and a BPE tokenizer trained locally on the texts it will see. The classes are the real ones
(``Qwen2VLForConditionalGeneration``, ``LlavaForConditionalGeneration``), saved with ``save_pretrained`` and
loaded back through ``AutoModelForImageTextToText`` / ``AutoProcessor``: the same code path as a 7B model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmkd.processors import Qwen2VLImageOnlyProcessor

ARCHITECTURES = ("qwen2_vl", "llava")

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# Chat templates in the style of each family. They are prefix-consistent (the prompt rendered with
# add_generation_prompt is a prefix of the prompt+answer rendering), which completion-only training relies on.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


def train_tokenizer(corpus: Iterable[str], specials: list[str], vocab_size: int = 1000) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``corpus``; ``specials`` become single, never-split tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def _fast_tokenizer(tok: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    # Batched generation needs left padding; trainers choose their own side.
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **special)


def build_qwen2_vl(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    vision_depth: int = 2,
    vision_width: int = 64,
    image_size: int = 56,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """Build and save a tiny Qwen2-VL model + processor; ``image_size``² pixels give (image_size/28)² image tokens."""
    tok = train_tokenizer(corpus, QWEN_SPECIALS, vocab_size)
    tokenizer = _fast_tokenizer(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=image_size * image_size, max_pixels=image_size * image_size, patch_size=14, merge_size=2
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=1024,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": _mrope_section(hidden_size // num_heads),
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=vision_depth,
            embed_dim=vision_width,
            hidden_size=hidden_size,
            num_heads=4,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    _set_generation_defaults(model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    return _save(model, processor, out_dir)


def build_llava(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    vision_depth: int = 2,
    vision_width: int = 64,
    image_size: int = 56,
    patch_size: int = 14,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """Build and save a tiny LLaVA model (CLIP vision tower + Llama) + processor."""
    tok = train_tokenizer(corpus, LLAVA_SPECIALS, vocab_size)
    tokenizer = _fast_tokenizer(tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's class token
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_width,
            intermediate_size=vision_width * 2,
            num_hidden_layers=vision_depth,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=1024,
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
        ),
        image_token_id=ids["<image>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _set_generation_defaults(model, eos=ids["</s>"], pad=ids["<pad>"])
    return _save(model, processor, out_dir)


def _mrope_section(head_dim: int) -> list[int]:
    """Split the rotary half-dimension over (time, height, width) in Qwen2-VL's 2:3:3 proportion."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


BUILDERS = {"qwen2_vl": build_qwen2_vl, "llava": build_llava}


def build_tiny(arch: str, out_dir: str | Path, corpus: Iterable[str], **kwargs) -> Path:
    """Build a tiny model of family ``arch`` (one of ``ARCHITECTURES``) into ``out_dir``."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of {ARCHITECTURES}")
    return BUILDERS[arch](out_dir, corpus, **kwargs)


def _set_generation_defaults(model, *, eos: int, pad: int) -> None:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False


def _save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
