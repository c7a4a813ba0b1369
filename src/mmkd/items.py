"""Checks on single news items, so that one bad item is recorded and skipped instead of sinking a whole run."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadItem(ValueError):
    """An item that cannot be used; the message names the item and the fix."""


_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def pillow_pixel_limit_lifted() -> Iterator[None]:
    """Turn off Pillow's global decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) while decoding.

    The limit that counts is ours (``max_image_pixels``, checked by ``prepare`` on the header before decoding):
    with Pillow's own limit on, a large image that prepare accepted would be refused later, and the message would
    quote Pillow's number. Nested and concurrent uses share one counter, so the limit comes back when the last
    one ends."""
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def _grey_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """8-bit grey levels of a 16/32-bit integer or float image: integers as 16-bit levels (0-65535, the range of
    16-bit PNG and TIFF), floats as 0-1 when they lie in it, else stretched from their minimum to their maximum."""
    if mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return np.round(values * 255).astype(np.uint8)
    values = np.clip(values.astype(np.int64), 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """The image as 8-bit RGB, right for every Pillow mode.

    ``convert("RGB")`` clips 16-bit grey (``I;16``, ``I``) to white and drops transparency onto whatever colour
    the transparent pixels hold; here deep grey is scaled to 8 bits (see ``_grey_to_8bit``) and anything with
    alpha (RGBA, LA, PA, P or RGB/L with a transparent colour) is laid over white. Other modes (1, L, P, CMYK,
    YCbCr, ...) convert as Pillow does."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_grey_to_8bit(np.asarray(img), img.mode), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# The most pixels an item image may have: ``load_image`` refuses a larger header before decoding a byte of it, and
# ``prepare`` refuses a ``max_image_pixels`` above it (``mmkd.data.records.PrepareSettings``), so every image that
# prepare keeps loads in labelling and training; one limit, in one place. About 1.2 GB as RGB. Pillow's global bomb
# limit (89 M warns, 179 M refuses) is lifted while decoding, so it never refuses an image with its own number.
LOAD_MAX_PIXELS = 400_000_000


def shown_path(path: str | Path) -> str:
    """A path as messages and reports show it: relative to the working directory (the repository root, where every
    stage runs) when it lies below it, so the same data in two clones gives the same bytes; else as given."""
    path = Path(path)
    try:
        return Path(os.path.abspath(path)).relative_to(os.getcwd()).as_posix()
    except ValueError:
        return str(path)


def error_text(exc: BaseException) -> str:
    """Why a file could not be read, without the machine's paths: an OSError's own text names the file (its real,
    absolute path) and Pillow's "cannot identify" names the open file object, so those give what they mean instead;
    the caller names the file itself, as configured or by ``shown_path``."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file: not an image, or a format Pillow cannot read"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def load_image(item_id: str, path: str | Path) -> Image.Image:
    """Open an item's image as RGB (``to_rgb``), or raise ``BadItem`` naming the item, the file and what to do.

    The size in the header is checked against ``LOAD_MAX_PIXELS`` before decoding, in place of Pillow's limit. The
    message names the file by ``shown_path``: it lands in the answer tables labelling writes."""
    path, shown = Path(path), shown_path(path)
    if not path.is_file():
        raise BadItem(f"item {item_id!r}: image file {shown} does not exist; fix image_path or remove the item")
    try:
        with pillow_pixel_limit_lifted(), Image.open(path) as img:
            width, height = img.size
            if width * height > LOAD_MAX_PIXELS:
                raise BadItem(
                    f"item {item_id!r}: image file {shown} is {width}x{height} pixels, more than the "
                    f"{LOAD_MAX_PIXELS} an item image may have (mmkd.items.LOAD_MAX_PIXELS); shrink it"
                )
            img.load()
            return to_rgb(img)
    except BadItem:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadItem(
            f"item {item_id!r}: image file {shown} is not a readable image ({error_text(exc)}); replace the file"
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
