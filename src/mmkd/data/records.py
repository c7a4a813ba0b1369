"""What every dataset's ``prepare`` shares: the raw folder and the limits, the checks of one record's caption and
image, the report of bad records, and the writer of a split's item and gold tables.

NewsCLIPpings (``mmkd.data.newsclippings``) and VERITE (``mmkd.data.verite``) read their records from different
files, but check each one the same way, so a caption, an image or a path that one dataset refuses the other refuses
too, for the same reason, with the same fix: a caption is cleaned (``mmkd.data.text``), refused when nothing is left
and cut to ``max_caption_chars``; an image path is resolved inside its root (``mmkd.data.raw_paths``), its file
checked once (``mmkd.data.images``) and hard-linked or copied into ``<out_dir>/images/``; each problem is a line of
``prepare_report.jsonl`` with the item, the reason, whether it was left out, the path, what was found and the fix.
"""

from __future__ import annotations

import json
import reprlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, TextIO

import polars as pl
import pyarrow.parquet as pq

import mmkd.items
from mmkd.data import PrepareInputError, Problem
from mmkd.data.images import LINK_MODES, ImageLimits, check_image, link_or_copy
from mmkd.data.raw_paths import MISSING_IMAGE, Resolved, Root
from mmkd.data.text import clean_text, cut
from mmkd.schema import GOLD_SCHEMA, items_frame

REPORT_FILE = "prepare_report.jsonl"
IMAGES_DIR = "images"

# Reasons of the shared checks (those of images and paths are in mmkd.data.images and mmkd.data.raw_paths).
EMPTY_CAPTION = "empty_caption"
CAPTION_CLEANED = "caption_cleaned"
CAPTION_CUT = "caption_cut"
IMAGE_PATH_COLLISION = "image_path_collision"

BATCH_ROWS = 4096  # items per Parquet write
short_repr = reprlib.Repr()  # a bounded repr for messages: deep or huge records never recurse or flood the report
short_repr.maxlevel, short_repr.maxdict, short_repr.maxlist = 3, 6, 6
short_repr.maxstring, short_repr.maxother = 80, 80


def check_split_name(split: str) -> None:
    """Refuse a split name that cannot name a file (``<split>.parquet``)."""
    if not split or not split.replace("_", "").isalnum():
        raise ValueError(f"split name {split!r} must be letters, digits and underscores (it names files)")


@dataclass(frozen=True)
class PrepareSettings:
    """What every dataset's settings (``data.prepare.<name>`` in params.yaml) have: the raw folder, the limits each
    record is checked against and how images enter the output. Each dataset adds where its files are."""

    get_data: ClassVar[str]  # each dataset's: where messages send a user who lacks the data (a docs page)

    raw: str  # the raw-data folder, the stage's one dependency; every other input path is relative to it
    max_image_bytes: int = 25 * 2**20
    max_image_pixels: int = 40_000_000  # e.g. 8000 x 5000; at most mmkd.items.LOAD_MAX_PIXELS, what later stages load
    max_aspect_ratio: float = 100.0  # longer / shorter side; Qwen2-VL refuses over 200, and such strips are banners
    min_image_side: int = 16  # pixels of the shorter side; smaller images (icons, tracking pixels) show no scene
    max_caption_chars: int = 2000  # longer captions are cut (and reported): the caption goes into every prompt
    link_roots: tuple[str, ...] = (".dvc/cache",)  # folders outside `raw` that its symbolic links may point into
    link_images: str = "hardlink"  # hardlink (falls back to copy across file systems) or copy

    def __post_init__(self) -> None:
        object.__setattr__(self, "link_roots", tuple(self.link_roots))
        if min(self.max_image_bytes, self.max_image_pixels, self.min_image_side, self.max_caption_chars) < 1:
            raise ValueError(
                "max_image_bytes, max_image_pixels, min_image_side and max_caption_chars must be positive"
            )
        if self.max_image_pixels > mmkd.items.LOAD_MAX_PIXELS:  # read at call time: tests lower it
            raise ValueError(
                f"max_image_pixels {self.max_image_pixels} is more than the {mmkd.items.LOAD_MAX_PIXELS} pixels that "
                "labelling and training load (mmkd.items.LOAD_MAX_PIXELS): an image prepare kept would fail there. "
                f"Set data.prepare.<name>.max_image_pixels to at most {mmkd.items.LOAD_MAX_PIXELS}"
            )
        if self.max_aspect_ratio < 1:
            raise ValueError(
                f"max_aspect_ratio is longer side / shorter side, at least 1; got {self.max_aspect_ratio}"
            )
        if self.link_images not in LINK_MODES:
            raise ValueError(f"link_images {self.link_images!r}: use one of {LINK_MODES}")

    def path(self, relative: str) -> Path:
        """A raw input's path: ``relative`` under ``raw``."""
        return Path(self.raw) / relative

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_bytes, self.max_image_pixels, self.max_aspect_ratio, self.min_image_side)

    def raw_root(self) -> Root:
        """The raw folder as a root that input paths are resolved in; a PrepareInputError if it does not exist."""
        if not Path(self.raw).is_dir():
            raise PrepareInputError(
                f"the raw folder {self.raw} does not exist (data.prepare.<name>.raw); get the data ({self.get_data}) "
                "or fix the path in conf/data/"
            )
        return Root.of("raw folder", self.raw, tuple(Path(p) for p in self.link_roots))

    def require(self, raw: Root, relative: str, key: str, folder: bool) -> Resolved:
        """A whole input (setting ``key``, at ``relative`` under ``raw``): a regular file (or folder) inside ``raw``,
        or a PrepareInputError that names it, the setting and the fix."""
        found = raw.resolve(relative, folder=folder)
        if isinstance(found, Resolved):
            return found
        kind = "folder" if folder else "file"
        if found.reason == MISSING_IMAGE:
            raise PrepareInputError(
                f"{self.path(relative)} does not exist (a {kind}, from data.prepare.<name>.{key} under "
                f"raw={self.raw}); get the data ({self.get_data}) or fix the path in conf/data/"
            )
        raise PrepareInputError(f"{found.detail} (a {kind}, from data.prepare.<name>.{key}); {found.fix}")

    def apart(self, link_roots: tuple[Path, ...]) -> dict[str, Path]:
        """The folders the output must stay apart from (``mmkd.data.staging.check_apart``): raw and the (real)
        link roots."""
        return {"raw": Path(self.raw)} | {f"link_roots ({p})": p for p in link_roots}


@dataclass(frozen=True)
class Caption:
    """A record's caption after the checks: the cleaned text (or why there is none) and how it was changed."""

    text: str | None
    problem: Problem | None  # why the caption cannot be used (drops the item)
    notes: tuple[Problem, ...]  # how the caption was changed (reported, item kept)


def check_caption(caption: object, record: str, source: str, max_chars: int) -> Caption:
    """Clean ``caption`` (``mmkd.data.text``) and cut it to ``max_chars``; ``record`` names it in messages
    (``VisualNews record 5``) and ``source`` is the file to fix (``data.json``)."""
    if not isinstance(caption, str):
        found = f"{type(caption).__name__}: {short_repr.repr(caption)}" if caption is not None else "none"
        detail = f"{record} has no caption string (found {found})"
        return Caption(None, Problem(EMPTY_CAPTION, detail, f"fix the record in {source}"), ())
    cleaned = clean_text(caption)
    notes = []
    if cleaned.changes:
        notes.append(
            Problem(
                CAPTION_CLEANED,
                f"caption of {record}: {', '.join(cleaned.changes)}",
                f"nothing to do unless {source} is corrupt; the item is kept with the cleaned caption",
            )
        )
    if not cleaned.text:
        detail = f"{record} has no caption ({short_repr.repr(caption)})"
        return Caption(None, Problem(EMPTY_CAPTION, detail, f"fix the record in {source}"), ())
    text = cleaned.text
    if len(text) > max_chars:
        notes.append(
            Problem(
                CAPTION_CUT,
                f"caption of {record} has {len(text)} characters; cut to {max_chars} (max_caption_chars)",
                f"check the record in {source}, or raise data.prepare.<name>.max_caption_chars",
            )
        )
        text = cut(text, max_chars)
    return Caption(text, None, tuple(notes))


@dataclass(frozen=True)
class LinkedImage:
    """The outcome of checking one image path: where the image now is in the output, or why it cannot be used."""

    out_path: str | None  # relative to out_dir: images/<the path, normalised>
    problem: Problem | None


class ImageLinker:
    """Checks each image file once and puts it into ``<out_dir>/images/`` under its path relative to ``root``."""

    def __init__(self, root: Root, limits: ImageLimits, out_dir: Path, mode: str):
        self.root, self.limits, self.out_dir, self.mode = root, limits, out_dir, mode
        self.targets: dict[str, LinkedImage] = {}  # by normalised path: ./a/1.jpg, a//1.jpg, a\1.jpg are one
        self.links: Counter[str] = Counter()  # hardlink / copy -> images

    def link(self, image_path: str) -> LinkedImage:
        """Resolve ``image_path`` (as written in the record) in the root, check the file and link it, once per file.

        ``Problem.path`` is the path as written, so the report says which record to fix."""
        found = self.root.resolve(image_path)
        if isinstance(found, Problem):
            return LinkedImage(None, replace(found, path=image_path))
        if found.relative not in self.targets:  # another record may spell the same file otherwise
            self.targets[found.relative] = self._check_and_link(found, image_path)
        return self.targets[found.relative]

    def _check_and_link(self, found: Resolved, image_path: str) -> LinkedImage:
        problem = check_image(found, self.limits)
        if problem is not None:
            return LinkedImage(None, replace(problem, path=image_path))
        out_path = f"{IMAGES_DIR}/{found.relative}"
        try:
            self.links[link_or_copy(found, self.out_dir / out_path, self.mode)] += 1
        except (FileExistsError, NotADirectoryError):  # e.g. A/1.jpg and a/1.jpg on a case-blind disk
            detail = f"{out_path} cannot be written: another image (or a folder of images) is already there"
            return LinkedImage(None, Problem(IMAGE_PATH_COLLISION, detail, "rename one of the images", image_path))
        return LinkedImage(out_path, None)

    def summary(self) -> dict[str, int]:
        """``distinct_used``: the image files in the output; then how many were hard-linked and copied."""
        used = sum(1 for image in self.targets.values() if image.problem is None)
        return {"distinct_used": used, **dict(sorted(self.links.items()))}


class Report:
    """``prepare_report.jsonl``, a line per problem, and the counts of the problems by split, outcome and reason."""

    def __init__(self, file: TextIO):
        self.file = file
        self.problems: Counter[tuple[str, bool, str]] = Counter()  # (split, dropped, reason) -> count
        self.examples: dict[str, list[str]] = {}  # split -> the first few reasons items were dropped

    def add(self, split: str, index: int | None, item_id: str | None, problem: Problem, *, dropped: bool) -> None:
        """Count a problem and append it to the report: the item, the reason, whether it was left out, the fix."""
        self.problems[split, dropped, problem.reason] += 1
        if dropped and len(self.examples.setdefault(split, [])) < 3:
            self.examples[split].append(f"{item_id}: {problem.reason} ({problem.detail})")
        row = {
            "split": split,
            "index": index,
            "item_id": item_id,
            "reason": problem.reason,
            "dropped": dropped,
            "path": problem.path,
            "detail": problem.detail,
            "fix": problem.fix,
        }
        self.file.write(json.dumps(row) + "\n")

    def counts(self, split: str, dropped: bool, evidence: bool | None = None) -> dict[str, int]:
        """Problem counts of a split by reason; ``evidence`` True/False: only evidence reasons / only the others."""
        return {
            r: n
            for (s, d, r), n in sorted(self.problems.items())
            if s == split and d == dropped and (evidence is None or r.startswith("evidence_") == evidence)
        }


class SplitWriter:
    """Items and gold labels of one split, written in batches (so a large split is never whole in memory).

    A row holds the item's columns and the gold columns of ``gold_schema`` (``id`` goes into both tables)."""

    def __init__(self, out_dir: Path, split: str, gold_schema: dict[str, pl.DataType] = GOLD_SCHEMA):
        self.items_file, self.gold_file = out_dir / f"{split}.parquet", out_dir / f"{split}.gold.parquet"
        self.gold_schema = gold_schema
        self.rows: list[dict] = []
        self.writers: dict[Path, pq.ParquetWriter] = {}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        gold_only = set(self.gold_schema) - {"id"}
        items = items_frame([{k: v for k, v in r.items() if k not in gold_only} for r in self.rows])
        labelled = [r for r in self.rows if r.get("gold_label") is not None]  # an unlabeled item has no gold row
        gold = pl.DataFrame([{k: r[k] for k in self.gold_schema} for r in labelled], schema=self.gold_schema)
        for path, frame in ((self.items_file, items), (self.gold_file, gold)):
            table = frame.to_arrow()
            if path not in self.writers:
                self.writers[path] = pq.ParquetWriter(path, table.schema)
            self.writers[path].write_table(table)
        self.rows = []

    def close(self) -> None:
        if self.rows or not self.writers:  # an empty split still gets (empty) files with the schema
            self.flush()
        for writer in self.writers.values():
            writer.close()
