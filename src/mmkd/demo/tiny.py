"""Tiny vision-language models built from config, for tests and the offline demo.

Nothing can be downloaded here, so every model the tests and the default pipeline use is built from a config
with random weights and a BPE tokenizer trained locally on the texts it will see. The classes are the real ones
(``Qwen2VLForConditionalGeneration``, ``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
``InternVLForConditionalGeneration``: every architecture class of the demo and of the paper-scale profiles),
saved with ``save_pretrained`` and loaded back through ``AutoModelForImageTextToText`` / ``AutoProcessor``: the
same code path as a 7B or 78B model. Each one's image processing is its family's own (LLaVA-NeXT's any-resolution
tiles, InternVL's dynamic tiles and pixel shuffle, Qwen2-VL's merged patches), only smaller.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

# The PIL ("slow") image processors: the fast ones need torchvision, which does not import here.
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmkd.demo.processors import InternVLImageOnlyProcessor, Qwen2VLImageOnlyProcessor

# qwen2_vl: the paper's Qwen2-VL teacher; llava: the demo student; llava_next: the paper's student (LLaVA-v1.6);
# internvl: the paper's InternVL-2.5 teacher.
ARCHITECTURES = ("qwen2_vl", "llava", "llava_next", "internvl")

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
# InternVL-2.5 on a Qwen2.5 language model: ChatML turns, and an image is <img><IMG_CONTEXT>...</img>.
INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]

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
# LLaVA-v1.6-Vicuna: Vicuna-v1 turns ("USER: <image>\n... ASSISTANT: ...</s>").
VICUNA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}</s>{% else %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# InternVL in transformers' format: ChatML, the image as one <IMG_CONTEXT> that the processor expands.
INTERNVL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
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


def _llava_tokenizer(corpus: Iterable[str], vocab_size: int) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    tok = train_tokenizer(corpus, LLAVA_SPECIALS, vocab_size)
    tokenizer = _fast_tokenizer(tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}


def _clip_config(width: int, depth: int, image_size: int, patch_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=depth,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )


def _llama_config(vocab: int, ids: dict[str, int], hidden: int, layers: int, heads: int, ffn: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )


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
    tokenizer, ids = _llava_tokenizer(corpus, vocab_size)
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
        vision_config=_clip_config(vision_width, vision_depth, image_size, patch_size),
        text_config=_llama_config(len(tokenizer), ids, hidden_size, num_layers, num_heads, intermediate_size),
        image_token_id=ids["<image>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _set_generation_defaults(model, eos=ids["</s>"], pad=ids["<pad>"])
    return _save(model, processor, out_dir)


def llava_next_pinpoints(tile: int) -> list[list[int]]:
    """LLaVA-v1.6's any-resolution grids (1x2, 2x1, 2x2, 3x1, 1x3 tiles) for a vision tower of ``tile`` pixels."""
    return [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile], [3 * tile, tile], [tile, 3 * tile]]


def build_llava_next(
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
    """Build and save a tiny LLaVA-NeXT (LLaVA-v1.6) model + processor: CLIP tower, Llama, any-resolution tiles.

    As in LLaVA-v1.6-Vicuna: the second-to-last CLIP layer without its class token ("default"), a base tile of the
    whole image plus the grid tiles of the best-fitting resolution, and Vicuna chat turns.
    """
    tokenizer, ids = _llava_tokenizer(corpus, vocab_size)
    pinpoints = llava_next_pinpoints(image_size)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=VICUNA_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's class token (dropped again by the "default" strategy)
    )
    config = LlavaNextConfig(
        vision_config=_clip_config(vision_width, vision_depth, image_size, patch_size),
        text_config=_llama_config(len(tokenizer), ids, hidden_size, num_layers, num_heads, intermediate_size),
        image_token_id=ids["<image>"],
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    _set_generation_defaults(model, eos=ids["</s>"], pad=ids["<pad>"])
    return _save(model, processor, out_dir)


def build_internvl(
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
    max_tiles: int = 4,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """Build and save a tiny InternVL model (InternViT + Qwen2 language model, as InternVL-2.5-78B) + processor.

    Images are cut into up to ``max_tiles`` tiles of ``image_size`` pixels by aspect ratio (plus a thumbnail when
    there is more than one), and each tile becomes ``(image_size / patch_size / 2)²`` tokens after the 2x2 pixel
    shuffle (``downsample_ratio`` 0.5).
    """
    tok = train_tokenizer(corpus, INTERNVL_SPECIALS, vocab_size)
    tokenizer = _fast_tokenizer(
        tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        # InternVLProcessor reads these names from the tokenizer, as on a real InternVL checkpoint.
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in INTERNVL_SPECIALS}
    tokens_per_tile = (image_size // patch_size // 2) ** 2
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_tiles,
        image_mean=[0.485, 0.456, 0.406],  # ImageNet statistics, as InternViT
        image_std=[0.229, 0.224, 0.225],
    )
    processor = InternVLImageOnlyProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=tokens_per_tile,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=vision_width,
            intermediate_size=vision_width * 2,
            num_hidden_layers=vision_depth,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=1024,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    _set_generation_defaults(model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    return _save(model, processor, out_dir)


def _mrope_section(head_dim: int) -> list[int]:
    """Split the rotary half-dimension over (time, height, width) in Qwen2-VL's 2:3:3 proportion."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


BUILDERS = {
    "qwen2_vl": build_qwen2_vl,
    "llava": build_llava,
    "llava_next": build_llava_next,
    "internvl": build_internvl,
}


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
