"""The two rewrites that make a saved model directory load in vLLM and in plain transformers without mmkd.

Both are what real checkpoints look like:

- a processor class that only mmkd registers (the demo's image-only Qwen2-VL / InternVL processors) is renamed to
  its stock transformers parent, with the ``video_processor`` entry the stock class needs;
- a LLaVA / LLaVA-NeXT CLIP tower is saved as ``vision_tower.vision_model.*``, the layout of the llava-hf
  checkpoints, which vLLM expects and transformers still loads.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from mmkd.deploy import ExportError

# The video processor that the stock processor class of each family needs (mmkd's image-only ones drop it).
# transformers' own table of these cannot be read without torchvision, so the families mmkd rewrites are named here.
VIDEO_PROCESSORS = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "internvl": "InternVLVideoProcessor",
}

# Model types whose CLIP tower transformers 5.2x saves as ``vision_tower.{embeddings,encoder,...}`` while vLLM (and
# the llava-hf checkpoints) use ``vision_tower.vision_model.*``; transformers loads either.
VLLM_TOWER_RENAMES = {"llava": "clip_vision_model", "llava_next": "clip_vision_model"}
TOWER, VLLM_TOWER = "vision_tower.", "vision_tower.vision_model."


def stock_processor_class(out: Path, processor, model_type: str) -> str:
    """Name a stock transformers processor class in ``out`` where the processor is one only mmkd registers."""
    from transformers import ProcessorMixin

    cls = type(processor)
    if cls.__module__.startswith("transformers."):
        return cls.__name__
    stock = next(
        (c for c in cls.__mro__[1:] if c.__module__.startswith("transformers.") and issubclass(c, ProcessorMixin)),
        None,
    )
    if stock is None or stock is ProcessorMixin:
        raise ExportError(f"the processor {cls.__name__} has no stock transformers class to name instead")
    config_file = out / "processor_config.json"
    config = json.loads(config_file.read_text())
    if "video_processor" in inspect.signature(stock.__init__).parameters and "video_processor" not in config:
        if model_type not in VIDEO_PROCESSORS:
            raise ExportError(
                f"{cls.__name__} -> {stock.__name__}: no video processor known for {model_type!r} models "
                f"(known: {sorted(VIDEO_PROCESSORS)})"
            )
        video = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
        config["video_processor"] = video | {"video_processor_type": VIDEO_PROCESSORS[model_type]}
    config["processor_class"] = stock.__name__
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_file = out / "tokenizer_config.json"
    if tokenizer_file.is_file():
        tokenizer_config = json.loads(tokenizer_file.read_text())
        tokenizer_config["processor_class"] = stock.__name__
        tokenizer_file.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return stock.__name__


def rename_tower_for_vllm(out: Path, config) -> bool:
    """Rename the CLIP tower's tensors to ``vision_tower.vision_model.*`` in every weight file; False when this
    model type needs no renaming."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tower = getattr(getattr(config, "vision_config", None), "model_type", None)
    if VLLM_TOWER_RENAMES.get(config.model_type) != tower:
        return False

    def renamed(key: str) -> str:
        return VLLM_TOWER + key[len(TOWER) :] if key.startswith(TOWER) and not key.startswith(VLLM_TOWER) else key

    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            metadata = f.metadata()
            tensors = {renamed(k): f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(shard), metadata=metadata)
    index = out / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")
    return True
