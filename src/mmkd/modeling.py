"""Load vision-language models through the Auto classes and generate answers in batches.

Everything here is the real-model path: ``AutoModelForImageTextToText``, ``AutoProcessor`` and the processor's
own chat template. The tiny demo models go through exactly the same calls.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

# Entry-point group of functions that register extra ``AutoProcessor`` classes before a model is loaded. mmkd's demo
# registers its image-only Qwen2-VL / InternVL processors here (pyproject.toml), so this loader never imports it.
PROCESSOR_PLUGINS = "mmkd.processors"

# Written next to every adapter mmkd saves: which base model it belongs to and which adapter (if any) must be
# merged into the base first. This is how a Stage-2 adapter (trained on top of merged Stage 1) is found again.
ADAPTER_INFO = "mmkd_adapter.json"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def register_processor_plugins() -> None:
    """Run every function registered under the ``mmkd.processors`` entry point, once per process."""
    for entry_point in importlib.metadata.entry_points(group=PROCESSOR_PLUGINS):
        entry_point.load()()


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when there is one, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    path: str | Path,
    *,
    dtype: str = "float32",
    device: str = "auto",
    device_map: str | None = None,
    attn_implementation: str | None = None,
    max_image_pixels: int | None = None,
):
    """Load a model and its processor from a local directory (or any name ``from_pretrained`` accepts).

    ``device_map`` (e.g. ``auto``) shards a model too large for one GPU and replaces ``device``;
    ``attn_implementation`` (``sdpa``, ``flash_attention_2``, ``eager``) is passed to transformers as is (None: its
    default); ``max_image_pixels`` caps the image resolution (``cap_image_pixels``).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    kwargs = {"dtype": DTYPES[dtype]}
    if device_map:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    if not device_map:
        model.to(resolve_device(device))
    register_processor_plugins()
    processor = AutoProcessor.from_pretrained(str(path))
    if max_image_pixels is not None:
        cap_image_pixels(model, processor, max_image_pixels)
    return model, processor


def cap_image_pixels(model, processor, max_pixels: int) -> None:
    """Limit how many pixels of one image reach the vision tower, and so its image tokens, per model family.

    - Qwen2-VL / Qwen2.5-VL: images are resized to at most ``max_pixels`` (the processor's ``max_pixels``).
    - LLaVA-NeXT: only the any-resolution grids of at most ``max_pixels`` are kept (processor and model config
      agree on them; the base tile of the whole image is always there).
    - InternVL: at most ``max_pixels // tile_area`` tiles (at least 1; a thumbnail is added when there are more).
    - LLaVA (fixed resolution): nothing to cap; refused if the fixed size is above ``max_pixels``.
    Any other family is refused with a message, rather than silently ignoring the setting.
    """
    kind = model.config.model_type
    image_processor = processor.image_processor
    size = image_processor.size
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        image_processor.size = replace(
            size, longest_edge=max_pixels, shortest_edge=min(size.shortest_edge or max_pixels, max_pixels)
        )
    elif kind == "llava_next":
        grids = [g for g in model.config.image_grid_pinpoints if g[0] * g[1] <= max_pixels]
        if not grids:
            smallest = min(model.config.image_grid_pinpoints, key=lambda g: g[0] * g[1])
            raise ValueError(
                f"max_image_pixels={max_pixels} is below the smallest LLaVA-NeXT grid {smallest[0]}x{smallest[1]} "
                f"({smallest[0] * smallest[1]} pixels); raise it or set it to null"
            )
        model.config.image_grid_pinpoints = grids
        image_processor.image_grid_pinpoints = grids
    elif kind == "internvl":
        image_processor.max_patches = max(1, max_pixels // (size.height * size.width))
    elif kind == "llava":
        crop = image_processor.crop_size
        if crop.height * crop.width > max_pixels:
            raise ValueError(
                f"max_image_pixels={max_pixels}: a LLaVA model always sees {crop.height}x{crop.width} pixels; "
                "raise max_image_pixels or set it to null"
            )
    else:
        raise ValueError(f"max_image_pixels is not supported for {kind!r} models yet; set it to null")


def write_adapter_info(
    adapter_dir: str | Path,
    *,
    base: str,
    parent: str | None,
    max_image_pixels: int | None = None,
    prompt_version: str | None = None,
) -> None:
    """Record the base model and the parent adapter that ``adapter_dir`` was trained on top of, the prompt version
    it was trained with (so ``mmkd predict`` asks the same way), and the image cap (only when there was one)."""
    info = {"base": str(base), "parent": str(parent) if parent else None}
    if prompt_version is not None:
        info["prompt_version"] = prompt_version
    if max_image_pixels is not None:
        info["max_image_pixels"] = max_image_pixels
    (Path(adapter_dir) / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")


def adapter_info(adapter_dir: str | Path) -> dict:
    """What ``write_adapter_info`` recorded for ``adapter_dir``."""
    info_path = Path(adapter_dir) / ADAPTER_INFO
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{adapter_dir} is not an mmkd adapter (no {ADAPTER_INFO}); pass a stage1/stage2 output"
        )
    return json.loads(info_path.read_text())


def adapter_chain(adapter_dir: str | Path) -> tuple[str | None, list[str]]:
    """The base model the chain records (None if none) and the adapters to apply in order (oldest first) for
    ``adapter_dir``. A link that is missing or not an mmkd adapter is a ``FileNotFoundError``, a chain that loops a
    ``ValueError``; both name the link and the adapter that names it."""
    chain: list[str] = []
    current: str | None = str(adapter_dir)
    base = None
    while current:
        child = f" (the parent named in {Path(chain[0]) / ADAPTER_INFO})" if chain else ""
        if not Path(current).is_dir():
            raise FileNotFoundError(f"adapter directory {current}{child} does not exist")
        if not (Path(current) / ADAPTER_INFO).is_file():
            raise FileNotFoundError(
                f"{current}{child} is not an mmkd adapter (no {ADAPTER_INFO}); pass a stage1/stage2 output"
            )
        if current in chain:
            raise ValueError(f"{current}/{ADAPTER_INFO}: the adapter chain loops back to {current}")
        info = adapter_info(current)
        chain.insert(0, current)
        base = info.get("base")
        current = info.get("parent")
    return base, chain


def load_student(
    base: str | Path | None,
    adapter: str | Path | None,
    *,
    dtype: str = "float32",
    device: str = "auto",
    max_image_pixels: int | None = None,
):
    """Load a base model with an mmkd adapter chain merged in; ``base=None`` takes the base the adapter records.

    ``max_image_pixels=None`` takes the image cap the adapter was trained with (if any).
    """
    from peft import PeftModel

    chain: list[str] = []
    if adapter:
        recorded, chain = adapter_chain(adapter)
        base = base or recorded
        if max_image_pixels is None:
            max_image_pixels = adapter_info(adapter).get("max_image_pixels")
    if base is None:
        raise ValueError("no base model: pass a base model path or an adapter directory")
    model, processor = load_model(base, dtype=dtype, device=device, max_image_pixels=max_image_pixels)
    for step in chain:
        model = PeftModel.from_pretrained(model, step).merge_and_unload()
    return model, processor


def user_turn(prompt: str) -> list[dict]:
    """One user message holding the image, then the prompt text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def assistant_turn(text: str) -> list[dict]:
    """One assistant message holding ``text``."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


@torch.inference_mode()
def generate(
    model,
    processor,
    prompts: list[str],
    images: list[Image.Image],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    desc: str = "generate",
    score: Callable | None = None,
) -> list[str] | list[tuple[str, float | None]]:
    """Greedy answers for (image, prompt) pairs, in batches with left padding; returns the decoded new text, or
    with ``score`` (text, score) pairs: ``score(tokenizer, new_ids, step_logits)`` computed from generation's own
    logits, e.g. mmkd.scoring.generated_score (P(falsified) at the answer's label slot)."""

    chats = [processor.apply_chat_template(user_turn(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    out: list = []
    model.eval()
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(chats), batch_size), desc=desc, unit="batch", disable=len(chats) <= batch_size):
        enc = processor(
            text=chats[start : start + batch_size],
            images=images[start : start + batch_size],
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(device)
        result = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=score is not None,
            return_dict_in_generate=True,
        )
        new = result.sequences[:, enc["input_ids"].shape[1] :]
        answers = [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
        if score is None:
            out.extend(answers)
            continue
        for row, text in enumerate(answers):
            steps = [step[row] for step in result.logits]
            out.append((text, score(processor.tokenizer, new[row].tolist(), steps)))
    return out
