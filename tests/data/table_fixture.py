"""A team's own posts, as the tests build them: a raw folder with ``images/`` and the same table written as CSV,
JSONL or Parquet. ``ROWS`` holds good and hostile rows (the last field says what each tests) and ``EXPECTED_*``
what ``prepare_table`` must make of them. Imported by tests/data/test_table.py (pytest puts this folder on
sys.path)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import polars as pl
from newsclippings_fixture import write_image

from mmkd.schema import FALSIFIED, PRISTINE

FORMATS = ("csv", "jsonl", "parquet")
COLUMNS = ("id", "image_path", "caption", "label", "split", "evidence_entities", "source")  # source: ignored
LONG_CAPTION = "Storm " * 500  # 2999 characters once cleaned: cut to max_caption_chars (2000)
MAX_PIXELS = 40 * 30  # the "large" image is 41x30

# (id, image_path, caption, label, split, evidence_entities, what it tests). Evidence is a list (a JSON list in a
# CSV cell); "not a list" is evidence that is not one (a CSV or JSONL string; null in Parquet, whose column is a list).
ROWS: list[tuple] = [
    ("p1", "images/p1.jpg", "Flood waters rise in Dhaka.", PRISTINE, "train", ["Dhaka", "flood"], "ok"),
    ("p2", "images/p2.png", "Fans celebrate the cup final in Madrid.", FALSIFIED, "train", None, "ok (PNG)"),
    ("p3", "./images//p3.jpg", "Wildfire smoke covers Sydney.", None, "train", [], "ok, unlabeled, no evidence"),
    ("p4", "images/p4.jpg", "The central bank raises rates.", PRISTINE, "val", None, "ok"),
    ("p5", "images/p5.jpg", "A new bridge opens in Oslo.", FALSIFIED, "test", ["Oslo", "oslo", "bridge"], "ok"),
    ("p6", "images/p6.jpg", "Miners return to work.", None, "test", None, "ok, unlabeled"),
    ("p7", "images/missing.jpg", "A crowd gathers outside the court.", PRISTINE, "train", None, "missing_image"),
    ("p8", "../outside.jpg", "Protesters march.", PRISTINE, "train", None, "path_outside_root (..)"),
    ("p9", "/etc/passwd", "Protesters march.", PRISTINE, "train", None, "path_outside_root (absolute)"),
    ("p10", "images/evil.jpg", "Protesters march.", PRISTINE, "train", None, "path_outside_root (a link out)"),
    ("p11", "images/garbage.jpg", "Snow closes schools.", PRISTINE, "train", None, "unreadable_image"),
    ("p12", "images/large.jpg", "An aerial view.", PRISTINE, "train", None, "oversized_image"),
    ("p 13", "images/p1.jpg", "An id with a space.", PRISTINE, "train", None, "bad_id"),
    ("../p14", "images/p1.jpg", "An id that is a path.", PRISTINE, "train", None, "bad_id"),
    (None, "images/p1.jpg", "No id at all.", PRISTINE, "train", None, "bad_id (empty)"),
    ("p4", "images/p6.jpg", "Another post reusing an id.", FALSIFIED, "val", None, "duplicate_id (of p4)"),
    ("p15", "images/p4.jpg", " \t ", PRISTINE, "train", None, "empty_caption"),
    ("p16", "images/p4.jpg", "A fine caption.", "Falsified", "train", None, "unknown_label (case)"),
    ("p17", "images/p4.jpg", "A fine caption.", "fake", "train", None, "unknown_label"),
    ("p18", "images/p4.jpg", "A fine caption.", PRISTINE, "holdout", None, "unknown_split"),
    ("p19", "images/p4.jpg", "A fine caption.", PRISTINE, None, None, "unknown_split (empty)"),
    ("p20", "images/p1.jpg", "Flood  waters rise in Dhaka. ", FALSIFIED, "test", None, "duplicate_row (of p1)"),
    ("p21", "images/p21.jpg", "Snow\x07 closes\nschools in Boston.", None, "val", None, "ok, caption_cleaned"),
    ("p22", "images/p22.jpg", LONG_CAPTION, FALSIFIED, "train", None, "ok, caption_cut"),
    ("p23", "images/p23.jpg", "Rescue teams search.", PRISTINE, "val", "not a list", "ok, evidence_unreadable"),
]
IMAGES = {f"images/{n}": "jpeg" for n in ("p1.jpg", "p3.jpg", "p4.jpg", "p5.jpg", "p6.jpg", "p21.jpg", "p22.jpg")}
IMAGES |= {"images/p2.png": "png", "images/p23.jpg": "jpeg", "images/garbage.jpg": "garbage"}
IMAGES |= {"images/large.jpg": "large"}

# What each format adds after the rows: a row that cannot be read (reported as bad_row, with no id)
UNREADABLE_LINES = {
    "csv": "p24,images/p1.jpg\n",  # 2 fields, the header 7
    "jsonl": '["p24", "images/p1.jpg"]\n{"id": "p25", "caption": \n',  # a list, then broken JSON
    "parquet": "",
}

# id -> (split, caption, gold label or None, evidence_entities)
EXPECTED_ITEMS = {
    "p1": ("train", "Flood waters rise in Dhaka.", PRISTINE, ["Dhaka", "flood"]),
    "p2": ("train", "Fans celebrate the cup final in Madrid.", FALSIFIED, None),
    "p3": ("train", "Wildfire smoke covers Sydney.", None, []),
    "p4": ("val", "The central bank raises rates.", PRISTINE, None),
    "p5": ("test", "A new bridge opens in Oslo.", FALSIFIED, ["Oslo", "bridge"]),
    "p6": ("test", "Miners return to work.", None, None),
    "p21": ("val", "Snow closes schools in Boston.", None, None),
    "p22": ("train", LONG_CAPTION[:1999].rstrip() + "…", FALSIFIED, None),
    "p23": ("val", "Rescue teams search.", PRISTINE, None),
}
_ID_FIX = "give the row in posts.{fmt} an id of letters, digits and _ . : -, starting with a letter or digit"
_SPLIT_FIX = "fix the row in posts.{fmt}, or add the split to data.prepare.<name>.split_fractions"
# The report, in row order: (split, item id, reason, dropped, path); the fixes are checked apart
EXPECTED_REPORT = [
    ("train", "p7", "missing_image", True, "images/missing.jpg"),
    ("train", "p8", "path_outside_root", True, "../outside.jpg"),
    ("train", "p9", "path_outside_root", True, "/etc/passwd"),
    ("train", "p10", "path_outside_root", True, "images/evil.jpg"),
    ("train", "p11", "unreadable_image", True, "images/garbage.jpg"),
    ("train", "p12", "oversized_image", True, "images/large.jpg"),
    ("unassigned", None, "bad_id", True, None),
    ("unassigned", None, "bad_id", True, None),
    ("unassigned", None, "bad_id", True, None),
    ("val", None, "duplicate_id", True, None),
    ("train", "p15", "empty_caption", True, None),
    ("train", "p16", "unknown_label", True, None),
    ("train", "p17", "unknown_label", True, None),
    ("unassigned", "p18", "unknown_split", True, None),
    ("unassigned", "p19", "unknown_split", True, None),
    ("test", "p20", "duplicate_row", True, "images/p1.jpg"),
    ("val", "p21", "caption_cleaned", False, None),
    ("train", "p22", "caption_cut", False, None),
    ("val", "p23", "evidence_unreadable", False, None),  # not in Parquet: its column holds lists only
]
EXPECTED_BAD_ROWS = {"csv": 1, "jsonl": 2, "parquet": 0}  # reported after the rows, as ("unassigned", None, ...)


def _cell(value):
    return "" if value is None else json.dumps(value) if isinstance(value, list) else value


def write_table(path: Path, rows: list[tuple], fmt: str, columns: tuple[str, ...] = COLUMNS, extra: str = "") -> Path:
    """Write ``rows`` (tuples in ``COLUMNS`` order, the last field ignored) with ``columns`` as ``fmt``."""
    records = [dict(zip(COLUMNS[:-1], row[:-1], strict=True)) | {"source": "test"} for row in rows]
    records = [{c: r[c] for c in columns} for r in records]
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([_cell(r[c]) for c in columns] for r in records)
        with open(path, "a") as f:
            f.write(extra)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in records))
        with open(path, "a") as f:
            f.write("\n" + extra)  # a blank line is no row
    else:
        for r in records:
            if "evidence_entities" in r and not isinstance(r["evidence_entities"], list | None):
                r["evidence_entities"] = None
        schema = {c: pl.List(pl.String()) if c == "evidence_entities" else pl.String() for c in columns}
        pl.DataFrame(records, schema=schema).write_parquet(path)
    return path


def build_posts(raw: Path, fmt: str, rows: list[tuple] = ROWS, columns: tuple[str, ...] = COLUMNS) -> Path:
    """The raw folder: ``images/`` (one link leading out of it) and ``posts.<fmt>``; returns the table."""
    for i, (path, kind) in enumerate(sorted(IMAGES.items())):
        write_image(raw / path, kind, (20 * i, 100, 200 - 10 * i))
    outside = raw.parent / "outside.jpg"
    write_image(outside, "jpeg", (0, 0, 0))
    os.symlink(outside, raw / "images/evil.jpg")
    return write_table(raw / f"posts.{fmt}", rows, fmt, columns, UNREADABLE_LINES[fmt])


def fix_of(fmt: str, reason: str) -> str | None:
    """The fix the report gives for the reasons of ``mmkd.data.table`` (None: another module's)."""
    return {
        "bad_id": _ID_FIX.format(fmt=fmt),
        "unknown_split": _SPLIT_FIX.format(fmt=fmt),
        "duplicate_id": f"give each row of posts.{fmt} its own id",
        "unknown_label": f"fix the row in posts.{fmt}",
        "duplicate_row": f"remove the repeated row from posts.{fmt}",
        "bad_row": f"fix the row in posts.{fmt}",
        "path_outside_root": None,
    }.get(reason)
