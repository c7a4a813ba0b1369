"""A VERITE-format raw folder built by the tests: ``VERITE.csv`` (``,caption,image_path,label``) and its images,
with twins of all three classes and known bad rows (see ``ROWS`` for what each row is). Imported by
tests/data/test_verite.py (pytest puts this folder on sys.path)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from newsclippings_fixture import write_image
from PIL import Image

from mmkd.schema import FALSIFIED, PRISTINE

MAX_PIXELS = 40 * 30  # the "large" image is 41x30
LONG_CAPTION = "Storm " * 500  # 2999 characters once cleaned: cut to max_caption_chars (2000)

# (index, caption, image_path, label, what it tests), in file order. Rows 0-5 are the release's pattern: a true
# image with its true caption, the same image with a miscaptioned one, and the true caption with another image.
ROWS: list[tuple[str, str, str, str, str]] = [
    ("0", "Flood waters rise in Dhaka.", "images/true_0.jpg", "true", "ok"),
    ("1", "Flood waters rise in Karachi.", "images/true_0.jpg", "miscaptioned", "ok: the true image, a false caption"),
    (
        "2",
        "Flood waters rise in Dhaka.",
        "images/false_0.jpg",
        "out-of-context",
        "ok: the true caption, another image",
    ),
    ("3", "Fans celebrate the cup final in Madrid.", "images/true_1.png", "true", "ok (a PNG)"),
    ("4", "Fans celebrate the league title in Milan.", "images/true_1.png", "miscaptioned", "ok"),
    ("5", "Fans celebrate the cup final in Madrid.", "images/false_1.jpg", "out-of-context", "ok"),
    ("6", "A crowd gathers outside the court.", "images/true_9.jpg", "true", "missing_image"),
    ("7", "Flood waters rise in Dhaka.", "images/true_0.jpg", "true", "duplicate_row (of row 0, same label)"),
    ("8", "Protesters march through Paris.", "images/true_0.jpg", "false", "unknown_label"),
    ("9", "A new bridge opens in Oslo.", "../outside.jpg", "true", "path_outside_root (..)"),
    ("10", "A new bridge opens in Oslo.", "/etc/passwd", "true", "path_outside_root (absolute)"),
    ("11", "A new bridge opens in Oslo.", "images/evil.jpg", "true", "path_outside_root (a link out)"),
    ("12", " \t ", "images/true_0.jpg", "true", "empty_caption"),
    ("13", "Miners return to work in Chile.", "images/false_2.jpg", "true", "unreadable_image"),
    ("14", "An aerial view of the stadium.", "images/false_3.jpg", "true", "oversized_image"),
    ("15", "A banner over the street.", "images/false_4.jpg", "true", "bad_image_shape"),
    ("16", "The images folder itself.", "images", "true", "not_a_regular_file"),
    ("17", "Snow\x07 closes\nschools in Boston.", "images/true_2.jpg", "true", "ok, caption_cleaned"),
    ("18", "Flood  waters rise in Karachi. ", "images/true_0.jpg", "true", "duplicate_row (of row 1, other label)"),
    ("x", "Rescue teams search the rubble.", "images/true_2.jpg", "true", "bad_row (index not a number)"),
    ("3", "The central bank raises rates.", "images/true_2.jpg", "miscaptioned", "duplicate_index (of row 3)"),
    ("21", LONG_CAPTION, "images/false_5.jpg", "out-of-context", "ok, caption_cut"),
    ("22", "Flood waters recede in Dhaka.", "images\\true_0.jpg", "miscaptioned", "ok: true_0 spelled another way"),
]
RAGGED_LINE = "19,Only a caption\n"  # bad_row (2 fields), written after row 18

# image path -> what the file is (write_image kinds, plus "tiny": a 200x4 banner)
IMAGES = {
    "images/true_0.jpg": "jpeg",
    "images/false_0.jpg": "jpeg",
    "images/true_1.png": "png",
    "images/false_1.jpg": "jpeg",
    "images/true_2.jpg": "jpeg",
    "images/false_2.jpg": "garbage",
    "images/false_3.jpg": "large",
    "images/false_4.jpg": "tiny",
    "images/false_5.jpg": "jpeg",
}

# What prepare makes of the folder: item id -> (caption, gold_label, gold_class), in file order.
EXPECTED_ITEMS = {
    "verite-0": ("Flood waters rise in Dhaka.", PRISTINE, "true"),
    "verite-1": ("Flood waters rise in Karachi.", FALSIFIED, "miscaptioned"),
    "verite-2": ("Flood waters rise in Dhaka.", FALSIFIED, "out-of-context"),
    "verite-3": ("Fans celebrate the cup final in Madrid.", PRISTINE, "true"),
    "verite-4": ("Fans celebrate the league title in Milan.", FALSIFIED, "miscaptioned"),
    "verite-5": ("Fans celebrate the cup final in Madrid.", FALSIFIED, "out-of-context"),
    "verite-17": ("Snow closes schools in Boston.", PRISTINE, "true"),
    "verite-21": (LONG_CAPTION[:1999].rstrip() + "…", FALSIFIED, "out-of-context"),
    "verite-22": ("Flood waters recede in Dhaka.", FALSIFIED, "miscaptioned"),
}

_ROW = "fix the row in VERITE.csv, or use the file as released"
# The report, in order: (item id, reason, dropped, path, fix).
EXPECTED_REPORT = [
    ("verite-6", "missing_image", True, "images/true_9.jpg", "restore the file, or check the VERITE folder setting"),
    ("verite-7", "duplicate_row", True, "images/true_0.jpg", "remove the repeated row from VERITE.csv"),
    ("verite-8", "unknown_label", True, None, _ROW),
    (
        "verite-9",
        "path_outside_root",
        True,
        "../outside.jpg",
        "paths must be relative to the VERITE folder and stay inside it; fix the record",
    ),
    (
        "verite-10",
        "path_outside_root",
        True,
        "/etc/passwd",
        "paths must be relative to the VERITE folder and stay inside it; fix the record",
    ),
    (
        "verite-11",
        "path_outside_root",
        True,
        "images/evil.jpg",
        "keep the data inside the VERITE folder: replace the link by the file, or add its target folder to "
        "data.prepare.<name>.link_roots if it is a DVC cache",
    ),
    ("verite-12", "empty_caption", True, None, "fix the record in VERITE.csv"),
    ("verite-13", "unreadable_image", True, "images/false_2.jpg", "re-download or replace the file"),
    (
        "verite-14",
        "oversized_image",
        True,
        "images/false_3.jpg",
        "shrink the image, or raise data.prepare.<name>.max_image_pixels",
    ),
    (
        "verite-15",
        "bad_image_shape",
        True,
        "images/false_4.jpg",
        "replace the image, or change data.prepare.<name>.min_image_side / max_aspect_ratio",
    ),
    ("verite-16", "not_a_regular_file", True, "images", "put a regular file at that path, or fix the record"),
    (
        "verite-17",
        "caption_cleaned",
        False,
        None,
        "nothing to do unless VERITE.csv is corrupt; the item is kept with the cleaned caption",
    ),
    ("verite-18", "duplicate_row", True, "images/true_0.jpg", "remove the repeated row from VERITE.csv"),
    ("verite-19", "bad_row", True, None, _ROW),
    (None, "bad_row", True, None, _ROW),
    (None, "duplicate_index", True, None, "give each row of VERITE.csv its own index"),
    (
        "verite-21",
        "caption_cut",
        False,
        None,
        "check the record in VERITE.csv, or raise data.prepare.<name>.max_caption_chars",
    ),
]

EXPECTED_SUMMARY = {
    "split": "test",
    "rows": len(ROWS) + 1,
    "items": 9,
    "labels": {PRISTINE: 3, FALSIFIED: 6},
    "classes": {"true": 3, "miscaptioned": 3, "out-of-context": 3},
    "dropped": 15,
    "dropped_by_reason": {
        "bad_image_shape": 1,
        "bad_row": 2,
        "duplicate_index": 1,
        "duplicate_row": 2,
        "empty_caption": 1,
        "missing_image": 1,
        "not_a_regular_file": 1,
        "oversized_image": 1,
        "path_outside_root": 3,
        "unknown_label": 1,
        "unreadable_image": 1,
    },
    "kept_with_warnings": {"caption_cleaned": 1, "caption_cut": 1},
    "images": {"distinct_used": 6, "hardlink": 6},
}


def write_csv(
    path: Path, rows: list[tuple[str, str, str, str]], header=("", "caption", "image_path", "label")
) -> None:
    """Write a CSV as pandas writes VERITE.csv (minimal quoting, ``\\n`` line ends)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def build_verite(raw: Path) -> Path:
    """Write the raw folder: VERITE.csv, the images, and a file and a link outside it; return ``raw``."""
    (raw / "images").mkdir(parents=True)
    rows = [row[:4] for row in ROWS]
    write_csv(raw / "VERITE.csv", rows[:19])
    with open(raw / "VERITE.csv", "a", newline="", encoding="utf-8") as f:
        f.write(RAGGED_LINE)
        csv.writer(f, lineterminator="\n").writerows(rows[19:])
    for k, (path, kind) in enumerate(IMAGES.items()):
        if kind == "tiny":
            Image.new("RGB", (200, 4), (9, 9, 9)).save(raw / path, format="JPEG")
        else:
            write_image(raw / path, kind, (k * 40 % 256, k * 70 % 256, k * 90 % 256))
    outside = raw.parent / "outside.jpg"
    write_image(outside, "jpeg", (1, 2, 3))
    os.symlink(outside, raw / "images/evil.jpg")
    return raw
