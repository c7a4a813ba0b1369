"""Checks on raw image files before they enter a dataset, and linking them into the prepared data folder.

Every problem is returned as a ``Problem`` (reason, detail, fix) instead of raised, so the caller records the item
in its report and goes on with the next one. The file has already been resolved inside its root
(``mmkd.data.raw_paths``), so it is a regular file and is opened without following links.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from mmkd.data import Problem
from mmkd.data.raw_paths import UNREADABLE_IMAGE, Resolved, open_regular
from mmkd.items import error_text, pillow_pixel_limit_lifted, to_rgb

OVERSIZED_IMAGE = "oversized_image"
BAD_IMAGE_SHAPE = "bad_image_shape"

LINK_MODES = ("hardlink", "copy")


@dataclass(frozen=True)
class ImageLimits:
    """What an image must be to enter the data: at most this many bytes and pixels, a usable shape."""

    max_bytes: int
    max_pixels: int
    max_aspect_ratio: float  # longer side / shorter side
    min_side: int  # pixels, of the shorter side


def check_image(file: Resolved, limits: ImageLimits) -> Problem | None:
    """None if the file is a decodable image within ``limits``, else what is wrong with it.

    Size and shape are read from the header, with Pillow's own pixel limit lifted, so the configured limit is the
    one that decides (and is quoted). Then the image is decoded in full (JPEGs at reduced scale, which still reads
    every byte) and converted as ``mmkd.items.load_image`` will, so truncated files are caught here rather than
    when a teacher first opens them."""
    path = file.shown  # never file.real: the detail is written to the report, which must not hold the clone's path
    if file.stat.st_size > limits.max_bytes:
        return Problem(
            OVERSIZED_IMAGE,
            f"{path} is {file.stat.st_size} bytes (limit {limits.max_bytes}, max_image_bytes)",
            "shrink the image, or raise data.prepare.<name>.max_image_bytes",
        )
    try:
        with open_regular(file) as f, pillow_pixel_limit_lifted(), Image.open(f) as img:
            width, height = img.size
            if width * height > limits.max_pixels:
                return Problem(
                    OVERSIZED_IMAGE,
                    f"{path} is {width}x{height} = {width * height} pixels (limit {limits.max_pixels}, "
                    "max_image_pixels)",
                    "shrink the image, or raise data.prepare.<name>.max_image_pixels",
                )
            short, long = min(width, height), max(width, height)
            if short < limits.min_side or long / short > limits.max_aspect_ratio:
                return Problem(
                    BAD_IMAGE_SHAPE,
                    f"{path} is {width}x{height} pixels; images need a shorter side of at least "
                    f"{limits.min_side} (min_image_side) and a side ratio of at most {limits.max_aspect_ratio:g} "
                    "(max_aspect_ratio), which vision-language processors need (Qwen2-VL refuses ratios over 200)",
                    "replace the image, or change data.prepare.<name>.min_image_side / max_aspect_ratio",
                )
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # JPEG: decode at 1/8 scale
            img.load()
            to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        detail = f"{path} is not a readable image ({error_text(exc)})"
        return Problem(UNREADABLE_IMAGE, detail, "re-download or replace the file")
    return None


def link_or_copy(file: Resolved, dst: os.PathLike, mode: str) -> str:
    """Put the (real, regular) file at ``dst`` as a hard link (no extra disk space) or a copy; return which.

    ``hardlink`` falls back to a copy when the two paths are on different file systems. Either way ``dst`` is a
    regular file, never a link. An existing ``dst`` raises FileExistsError (the caller links each target once)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError(dst)
    if mode == "hardlink":
        try:
            os.link(file.real, dst, follow_symlinks=False)
            return "hardlink"
        except OSError:
            pass
    with open_regular(file) as src, open(dst, "xb") as out:
        shutil.copyfileobj(src, out)
    return "copy"
