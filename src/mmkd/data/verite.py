"""Prepare VERITE (Papadopoulos et al., 2024) as mmkd items: a test set of real image-caption pairs from fact-checks.

Input, under one raw folder (the ``prepare`` stage's dependency; mmkd never downloads it, docs/verite.md):
``VERITE.csv`` with the columns ``,caption,image_path,label`` (the first an unnamed index) and the images it names,
``images/true_<n>.jpg`` and ``images/false_<n>.jpg``, relative to the folder that holds the CSV. ``label`` is
``true``, ``miscaptioned`` or ``out-of-context``.

Output, in ``out_dir``: ``<split>.parquet`` (items; ``id`` is ``verite-<index>``, the CSV's index column, so every
item traces back to its row; ``image_path`` is ``images/<image_path as in the CSV>``, relative to ``out_dir``),
``<split>.gold.parquet`` (``id``, ``gold_label``: ``true`` -> ``pristine``, ``miscaptioned`` and
``out-of-context`` -> ``falsified``; ``gold_class``: the VERITE label, for per-class numbers), ``images/`` (each
image used, hard-linked or copied: self-contained) and ``prepare_report.jsonl``, one line per bad record.

Bad records (a row with the wrong number of fields or an index that is not a whole number, a repeated index, an
unknown label, an empty caption, a missing, unreadable, oversized or oddly shaped image, a path leaving the folder
or naming something other than a regular file, a row repeating an earlier row's caption and image) are left out,
counted in the summary and listed in the report with the item, the reason, the path and the fix; captions are
cleaned and cut as NewsCLIPpings' are (``mmkd.data.records``), each change reported with the item kept.

What stops the run, with a PrepareInputError that names the file and the fix, before the output is touched: a
missing raw folder or CSV, a CSV without the release's columns, one that cannot be parsed, a run that ends with no
items, and an output folder that overlaps an input. The output is built beside the old one and swapped in only at
the end (``mmkd.data.staging``), so a failed run leaves the previous output as it was.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import polars as pl
from tqdm.auto import tqdm

from mmkd.data import PrepareInputError, Problem
from mmkd.data.raw_paths import Resolved, Root, open_regular
from mmkd.data.records import (
    IMAGES_DIR,
    REPORT_FILE,
    ImageLinker,
    PrepareSettings,
    Report,
    SplitWriter,
    check_caption,
    check_split_name,
    short_repr,
)
from mmkd.data.staging import check_apart, staged_folder
from mmkd.schema import FALSIFIED, GOLD_CLASS_SCHEMA, PRISTINE

log = logging.getLogger(__name__)

# VERITE's classes, and the binary label each one is in mmkd's task.
TRUE, MISCAPTIONED, OUT_OF_CONTEXT = "true", "miscaptioned", "out-of-context"
CLASSES: tuple[str, ...] = (TRUE, MISCAPTIONED, OUT_OF_CONTEXT)
LABEL_OF_CLASS: dict[str, str] = {TRUE: PRISTINE, MISCAPTIONED: FALSIFIED, OUT_OF_CONTEXT: FALSIFIED}

# The gold table of VERITE: the binary label and the class it came from.
VERITE_GOLD_SCHEMA: dict[str, pl.DataType] = GOLD_CLASS_SCHEMA

COLUMNS = ("caption", "image_path", "label")  # after the index column
INDEX_NAMES = ("", "Unnamed: 0")  # the release's unnamed pandas index; pandas names it "Unnamed: 0" when re-saved
ID_PREFIX = "verite-"

# Reasons of this module (those of captions, images and paths are in mmkd.data.records, .images and .raw_paths).
BAD_ROW = "bad_row"
DUPLICATE_INDEX = "duplicate_index"
DUPLICATE_ROW = "duplicate_row"
UNKNOWN_LABEL = "unknown_label"

_WHOLE_NUMBER = re.compile("[0-9]+")


@dataclass(frozen=True)
class VeriteSettings(PrepareSettings):
    """Where the VERITE folder is (``data.prepare.<name>`` in params.yaml) and how strict to be.

    ``csv`` is relative to ``raw``, the folder the ``prepare`` stage depends on; the CSV's image paths are relative
    to the folder that holds it (the layout of the authors' download script). ``raw``, the limits and
    ``link_images`` are those of ``PrepareSettings``."""

    get_data: ClassVar[str] = "docs/verite.md"

    csv: str = "VERITE.csv"  # the CSV of the release: ,caption,image_path,label
    split: str = "test"  # the split the items become (<split>.parquet); VERITE is a test set only

    def __post_init__(self) -> None:
        check_split_name(self.split)
        super().__post_init__()


@dataclass(frozen=True)
class _Row:
    """One data row of the CSV: its line (the last, for a caption over several lines), index and fields."""

    line: int
    index: int | None  # None: the index field is not a whole number
    fields: list[str]


def _check_header(header: list[str], shown: Path) -> dict[str, int]:
    """The position of each column in ``COLUMNS``; a PrepareInputError unless the header is the release's."""
    expected = "the columns ,caption,image_path,label of the VERITE release (the first an unnamed index)"
    fix = "use VERITE.csv as the authors publish it, or set data.prepare.<name>.csv to it"
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise PrepareInputError(f"{shown} has no column {missing} (its header: {header}); expected {expected}: {fix}")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise PrepareInputError(f"{shown} has the column(s) {repeated} more than once; expected {expected}: {fix}")
    if header[0] not in INDEX_NAMES:
        raise PrepareInputError(
            f"{shown} starts with the column {header[0]!r}, not the unnamed index that gives each item its id; "
            f"expected {expected}: {fix}"
        )
    return {c: header.index(c) for c in COLUMNS}


def _rows(file: Resolved, shown: Path) -> tuple[dict[str, int], int, Iterator[_Row]]:
    """The CSV's column positions, its number of columns and its data rows, read one at a time.

    Bytes that are not UTF-8 become U+FFFD (reported by the caption check, or a path that matches no file); a
    byte-order mark is dropped; blank lines are no rows."""
    text = io.TextIOWrapper(open_regular(file), encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise PrepareInputError(f"{shown} is not a readable CSV file ({exc}); re-download it") from exc
        if header is None:
            raise PrepareInputError(f"{shown} is empty; expected the VERITE release's VERITE.csv: re-download it")
        positions = _check_header(header, shown)
    except BaseException:
        text.close()
        raise

    def rows() -> Iterator[_Row]:
        with text:
            try:
                for fields in reader:
                    if not fields:
                        continue
                    index = int(fields[0]) if _WHOLE_NUMBER.fullmatch(fields[0]) else None
                    yield _Row(reader.line_num, index, fields)
            except csv.Error as exc:  # e.g. a field over csv's size limit: an unclosed quote swallowed the rest
                raise PrepareInputError(
                    f"{shown} cannot be parsed at line {reader.line_num} ({exc}); re-download it, or look for an "
                    "unclosed quote at or before that line"
                ) from exc

    return positions, len(header), rows()


class _Preparer:
    """One run: the indices and (caption, image) pairs seen so far, for repeats, and the images checked."""

    def __init__(self, settings: VeriteSettings, root: Root, out_dir: Path):
        self.settings = settings
        self.source = Path(settings.csv).name  # names the file to fix in messages
        self.linker = ImageLinker(root, settings.image_limits(), out_dir, settings.link_images)
        self.indices: dict[int, int] = {}  # index -> the line it was first seen at
        self.pairs: dict[tuple[str, str], tuple[int, str]] = {}  # (caption, image) of a kept item -> (index, class)

    def item_id(self, row: _Row) -> str | None:
        """The row's item id, ``verite-<index>``; None when its index is not a whole number or an earlier row's."""
        if row.index is None or self.indices.get(row.index, row.line) != row.line:
            return None
        return f"{ID_PREFIX}{row.index}"

    def item(self, row: _Row, positions: dict[str, int], width: int) -> tuple[dict | None, Problem | None, list]:
        """``(row, None, notes)`` for a kept item (notes: how its caption was changed), or ``(None, the problem that
        leaves it out, [])``."""
        where = f"{self.source} line {row.line}"
        fix_row = f"fix the row in {self.source}, or use the file as released"
        if row.index is None:
            detail = f"{where}: the index {short_repr.repr(row.fields[0])} is not a whole number"
            return None, Problem(BAD_ROW, detail, fix_row), []
        first = self.indices.setdefault(row.index, row.line)  # a row of any shape claims its index
        if first != row.line:
            detail = f"{where} has the index {row.index} of line {first}; an item's id is its index"
            return None, Problem(DUPLICATE_INDEX, detail, f"give each row of {self.source} its own index"), []
        if len(row.fields) != width:
            detail = f"{where} has {len(row.fields)} fields, the header {width}: {short_repr.repr(row.fields)}"
            return None, Problem(BAD_ROW, detail, fix_row), []
        caption, image_path, label = (row.fields[positions[c]] for c in COLUMNS)
        if label not in CLASSES:
            detail = f"{where}: label {short_repr.repr(label)} is not one of {', '.join(CLASSES)}"
            return None, Problem(UNKNOWN_LABEL, detail, fix_row), []
        checked = check_caption(
            caption, f"{self.source} index {row.index}", self.source, self.settings.max_caption_chars
        )
        if checked.problem is not None:
            return None, checked.problem, []
        image = self.linker.link(image_path)
        if image.problem is not None:
            return None, image.problem, []
        earlier, earlier_class = self.pairs.setdefault((checked.text, image.out_path), (row.index, label))
        if earlier != row.index:
            same = "with the same label" if earlier_class == label else f"labelled {label}, not {earlier_class}"
            detail = f"{where} repeats the caption and image of index {earlier} {same}; the first is kept"
            return None, Problem(DUPLICATE_ROW, detail, f"remove the repeated row from {self.source}", image_path), []
        item = {
            "id": self.item_id(row),
            "image_path": image.out_path,
            "caption": checked.text,
            "gold_label": LABEL_OF_CLASS[label],
            "gold_class": label,
        }
        return item, None, list(checked.notes)


def prepare_verite(settings: VeriteSettings, out_dir: str | Path) -> dict:
    """Write the items, gold labels (with ``gold_class``), images and report of the VERITE CSV to ``out_dir``;
    return the counts.

    The CSV and ``out_dir`` are checked before anything is written; the output is built beside ``out_dir`` and
    replaces it only when items were made. The summary: ``split``, ``rows`` read, ``items`` written, ``labels`` and
    ``classes`` counts (of the items), ``dropped`` (total and ``dropped_by_reason``), ``kept_with_warnings`` by
    reason (items kept with a cleaned or cut caption) and ``images`` (distinct used, hard-linked, copied)."""
    out_dir = Path(out_dir)
    raw = settings.raw_root()
    csv_file = settings.require(raw, settings.csv, "csv", folder=False)
    folder = Path(settings.csv).parent.as_posix()
    root_real = raw.real if folder == "." else settings.require(raw, folder, "csv (its folder)", folder=True).real
    root = Root("VERITE folder", settings.path(folder), root_real, raw.link_roots)
    check_apart(out_dir, settings.apart(raw.link_roots) | {"csv": csv_file.real, "VERITE folder": root.real})
    positions, width, rows = _rows(csv_file, settings.path(settings.csv))

    split, read, labels, classes = settings.split, 0, Counter(), Counter()
    with staged_folder(out_dir) as build, open(build / REPORT_FILE, "w") as report_file:
        (build / IMAGES_DIR).mkdir()
        report = Report(report_file)
        preparer = _Preparer(settings, root, build)
        writer = SplitWriter(build, split, VERITE_GOLD_SCHEMA)
        for row in tqdm(rows, desc=f"prepare VERITE {split}", unit=" rows"):
            read += 1
            item, problem, notes = preparer.item(row, positions, width)
            item_id = preparer.item_id(row)
            if item is None:
                report.add(split, row.index, item_id, problem, dropped=True)
                continue
            for note in notes:
                report.add(split, row.index, item_id, note, dropped=False)
            writer.add(item)
            labels[item["gold_label"]] += 1
            classes[item["gold_class"]] += 1
        writer.close()
        dropped = report.counts(split, dropped=True)
        if not classes:
            examples = "; ".join(report.examples.get(split, []))
            raise PrepareInputError(
                f"{settings.path(settings.csv)}: none of its {read} rows became an item ({dropped}; e.g. {examples}); "
                "nothing was written. Fix what these reasons name (docs/verite.md lists each reason)"
            )
        summary = {
            "split": split,
            "rows": read,
            "items": sum(classes.values()),
            "labels": {label: labels[label] for label in (PRISTINE, FALSIFIED)},
            "classes": {c: classes[c] for c in CLASSES},
            "dropped": sum(dropped.values()),
            "dropped_by_reason": dropped,
            "kept_with_warnings": report.counts(split, dropped=False),
            "images": preparer.linker.summary(),
        }
    log.info("VERITE: %d rows -> %d items %s", read, summary["items"], summary["classes"])
    if summary["dropped"] or summary["kept_with_warnings"]:
        log.warning(
            "VERITE: %d rows left out %s, %d kept with warnings %s; each is listed in %s",
            summary["dropped"],
            dropped,
            sum(summary["kept_with_warnings"].values()),
            summary["kept_with_warnings"],
            out_dir / REPORT_FILE,
        )
    return summary
