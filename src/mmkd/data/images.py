"""Checks on raw image files before they enter a dataset, and linking them into the prepared data folder.

Every problem is returned as a ``Problem`` (reason, detail, fix) instead of raised, so the caller records the item
in its report and goes on with the next one.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
OVERSIZED_IMAGE = "oversized_image"
PATH_OUTSIDE_ROOT = "path_outside_root"

LINK_MODES = ("hardlink", "copy")


@dataclass(frozen=True)
class Problem:
    """Why a raw record cannot be used: a reason code (counted), what was found, and how to fix it."""

    reason: str
    detail: str
    fix: str
    path: str | None = None  # the file or path (as written in the raw record) the problem is about


def relative_inside(root_name: str, relative: str) -> tuple[str | None, Problem | None]:
    """Normalise ``relative`` (``./bbc/1.jpg`` -> ``bbc/1.jpg``) and check it stays inside its root.

    The check is on the path's text, not on resolved links: a root whose files are links into a DVC cache is fine,
    while ``../../etc/passwd`` or an absolute path is refused."""
    text = relative.replace("\\", "/")
    parts = PurePosixPath(os.path.normpath(text)).parts if text else ()
    if not parts or text.startswith("/") or parts[0] in ("..", ".") or ".." in parts:
        return None, Problem(
            PATH_OUTSIDE_ROOT,
            f"path {relative!r} is not inside the {root_name}",
            f"paths must be relative to the {root_name} and stay inside it; fix the record",
            path=relative,
        )
    return "/".join(parts), None


def check_image(path: Path, *, max_bytes: int, max_pixels: int) -> Problem | None:
    """None if ``path`` is a decodable image within the size limits, else what is wrong with it.

    The image is decoded in full (JPEGs at reduced scale, which still reads every byte), so truncated files are
    caught here rather than when a teacher first opens them."""
    if not path.is_file():
        return Problem(MISSING_IMAGE, f"{path} does not exist", "restore the file, or check the image_root setting")
    size = path.stat().st_size
    if size > max_bytes:
        return Problem(
            OVERSIZED_IMAGE,
            f"{path} is {size} bytes (limit {max_bytes})",
            "shrink the image, or raise max_image_bytes in the data config",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return Problem(
                        OVERSIZED_IMAGE,
                        f"{path} is {width}x{height} pixels (limit {max_pixels})",
                        "shrink the image, or raise max_image_pixels in the data config",
                    )
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # JPEG: decode at 1/8 scale
                img.load()
    except Image.DecompressionBombError as exc:
        return Problem(OVERSIZED_IMAGE, f"{path}: {exc}", "shrink the image, or raise max_image_pixels")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return Problem(UNREADABLE_IMAGE, f"{path} is not a readable image ({exc})", "re-download or replace the file")
    return None


def link_or_copy(src: Path, dst: Path, mode: str) -> str:
    """Put ``src`` at ``dst`` as a hard link (no extra disk space) or a copy; return what was done.

    ``hardlink`` falls back to a copy when the two paths are on different file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return "copy"
