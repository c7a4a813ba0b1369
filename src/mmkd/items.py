"""Checks on single news items, so that one bad item is recorded and skipped instead of sinking a whole run."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError


class BadItem(ValueError):
    """An item that cannot be used; the message names the item and the fix."""


def load_image(item_id: str, path: str | Path) -> Image.Image:
    """Open an item's image as RGB, or raise ``BadItem`` naming the item, the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise BadItem(f"item {item_id!r}: image file {path} does not exist; fix image_path or remove the item")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadItem(
            f"item {item_id!r}: image file {path} is not a readable image ({exc}); replace the file"
        ) from exc


def check_caption(item_id: str, caption: str | None) -> str:
    """Return the caption, or raise ``BadItem`` when it is missing or blank."""
    if caption is None or not caption.strip():
        raise BadItem(f"item {item_id!r}: caption is empty; give the item a caption or remove it")
    return caption


MIN_IMAGE_PIXELS = 28 * 28  # the smallest image any supported family can take (one merged Qwen2-VL patch)


def check_max_image_pixels(value: int | None) -> None:
    """Refuse an image cap (``max_image_pixels``) below what any supported model family can take."""
    if value is not None and value < MIN_IMAGE_PIXELS:
        raise ValueError(f"max_image_pixels must be null or >= {MIN_IMAGE_PIXELS} (28x28 pixels), got {value}")
