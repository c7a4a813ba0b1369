"""Prepare a team's own posts as mmkd items: a plain table (CSV, JSONL or Parquet) and the images it names.

Input, under one raw folder (the ``prepare`` stage's dependency; docs/own_data.md): the table, whose format is
chosen by its extension (``mmkd.data.table_rows``), with the columns

- ``id`` (required): the item's id, 1-128 letters, digits and ``_ . : -``, starting with a letter or digit; a
  JSONL or Parquet integer is taken as its digits;
- ``image_path`` (required): the image, relative to ``image_root`` (a folder under the raw folder);
- ``caption`` (required): the text posted with the image;
- ``evidence_entities``, ``evidence_captions`` (optional): web evidence, as NewsCLIPpings items have it (lists of
  strings; in a CSV, a JSON list such as ``["Dhaka", "flood"]``); empty: the item has none;
- ``label`` (optional): ``pristine`` or ``falsified``; empty, or no such column: the item is unlabeled;
- ``split`` (optional): one of ``split_fractions``' names. Without the column, each item's split is drawn from
  ``split_fractions`` by a hash of ``seed`` and its id, so it depends on neither the row order nor the other rows:
  a table that grows keeps every item in its split (the fractions are met on average, not exactly).

Other columns are ignored (and named in the summary). Output, in ``out_dir``, as NewsCLIPpings': ``<split>.parquet``
(items; ``image_path`` is ``images/<image_path as in the table, normalised>``, relative to ``out_dir``),
``<split>.gold.parquet`` (``id``, ``gold_label``: one row per labelled item, so an unlabeled item is absent from
it), ``images/`` (each image used, hard-linked or copied) and ``prepare_report.jsonl``, one line per bad row.

Bad rows (one that cannot be read, a bad or repeated id, an unknown label or split, an empty caption, a missing,
unreadable, oversized or oddly shaped image, a path leaving the image root, a row repeating an earlier item's caption
and image) are left out and listed in the report by row and id with the reason and the fix; unusable evidence is
reported and the item kept without it; captions and evidence are cleaned and cut as NewsCLIPpings' are
(``mmkd.data.records``, ``mmkd.data.evidence``), each change reported with the item kept.

What stops the run, with a PrepareInputError naming the file and the fix, before the output is touched: a missing
raw folder, table or image root, a table of another format, one that cannot be parsed, a missing required column,
and an output folder that overlaps an input; after the rows are read, a split without items. The output is built
beside the old one and swapped in only at the end (``mmkd.data.staging``), so nothing is ever half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tqdm.auto import tqdm

from mmkd.data import PrepareInputError, Problem
from mmkd.data.evidence import EVIDENCE_CLEANED, EVIDENCE_UNREADABLE, EvidenceLimits, distinct_texts
from mmkd.data.raw_paths import BAD_PATH, Root
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
from mmkd.data.table_rows import TableRow, open_table, table_format
from mmkd.schema import FALSIFIED, LABELS, PRISTINE

log = logging.getLogger(__name__)

REQUIRED = ("id", "image_path", "caption")
EVIDENCE = ("evidence_entities", "evidence_captions")
OPTIONAL = (*EVIDENCE, "label", "split")
NEEDED_SPLITS = ("train", "val", "test")  # what the later stages read
UNLABELED = "unlabeled"
UNASSIGNED = "unassigned"  # the report's split of a row left out before its split is known

# Reasons of this module (those of captions, images and paths are in mmkd.data.records, .images and .raw_paths).
BAD_ROW = "bad_row"
BAD_ID = "bad_id"
DUPLICATE_ID = "duplicate_id"
DUPLICATE_ROW = "duplicate_row"
UNKNOWN_LABEL = "unknown_label"
UNKNOWN_SPLIT = "unknown_split"

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


@dataclass(frozen=True)
class TableSettings(PrepareSettings):
    """Where the table and its images are (``data.prepare.<name>`` in params.yaml), how items get a split, and how
    strict to be. ``table`` and ``image_root`` are relative to ``raw``; the limits and ``link_images`` are those of
    ``PrepareSettings``."""

    get_data: ClassVar[str] = "docs/own_data.md"

    table: str = "posts.csv"  # .csv, .jsonl or .parquet: id, image_path, caption[, evidence_*, label, split]
    image_root: str = "."  # the table's image_path values are relative to this folder (under raw)
    # split -> fraction of the items, for a table without a split column (and the split names a split column may use)
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0  # with the id, draws each item's split (no split column): same table and seed, same splits
    evidence_limits: EvidenceLimits = field(default_factory=EvidenceLimits)

    def __post_init__(self) -> None:
        if isinstance(self.evidence_limits, dict):
            object.__setattr__(self, "evidence_limits", EvidenceLimits(**self.evidence_limits))
        table_format(self.table)
        fractions = self.split_fractions
        if not isinstance(fractions, dict) or not set(NEEDED_SPLITS) <= set(fractions):
            raise ValueError(
                f"split_fractions {fractions!r} must map each of {NEEDED_SPLITS} (at least) to a fraction"
            )
        for split, fraction in fractions.items():
            check_split_name(split)
            if split == UNASSIGNED or isinstance(fraction, bool) or not isinstance(fraction, int | float):
                raise ValueError(f"split_fractions: {split!r}: {fraction!r} is not a split name and a fraction")
            if not 0 < fraction <= 1:
                raise ValueError(f"split_fractions: {split} is {fraction}; each fraction must be in (0, 1]")
        if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"split_fractions {fractions} add up to {sum(fractions.values()):g}, not 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")
        super().__post_init__()


def assign_split(item_id: str, fractions: dict[str, float], seed: int) -> str:
    """The split of an item without a split column: a hash of ``seed`` and ``item_id`` picks a point in [0, 1),
    and the fractions, in order, share out [0, 1). Depends on the id alone, never on the row order or other rows."""
    point = int.from_bytes(hashlib.sha256(f"{seed}\0{item_id}".encode()).digest()[:8], "big") / 2**64
    total = 0.0
    for split, fraction in fractions.items():
        total += fraction
        if point < total:
            return split
    return split  # fractions that add up to 1 within rounding: the last split takes what is left


@dataclass
class _Outcome:
    """What became of one row: its split (or UNASSIGNED), its id if it has a usable one, and the item or the
    problem that leaves it out, with the notes of a kept item (how its caption or evidence was changed)."""

    split: str
    item_id: str | None
    item: dict | None = None
    problem: Problem | None = None
    notes: list[Problem] = field(default_factory=list)


class _Preparer:
    """One run: the ids and (caption, image) pairs seen so far, for repeats, and the images checked."""

    def __init__(self, settings: TableSettings, root: Root, out_dir: Path, columns: tuple[str, ...]):
        self.settings, self.columns = settings, columns
        self.source = Path(settings.table).name  # names the file to fix in messages
        self.fix_row = f"fix the row in {self.source}"
        self.linker = ImageLinker(root, settings.image_limits(), out_dir, settings.link_images)
        self.ids: dict[str, str] = {}  # id -> where it was first seen
        self.pairs: dict[tuple[str, str], str] = {}  # (caption, image) of a kept item -> its id

    def problem(self, reason: str, detail: str, fix: str | None = None, path: str | None = None) -> Problem:
        return Problem(reason, detail, fix or self.fix_row, path)

    def outcome(self, row: TableRow) -> _Outcome:
        """Check one row; the first problem found leaves it out."""
        if row.values is None:
            return _Outcome(UNASSIGNED, None, problem=self.problem(BAD_ROW, f"{row.where}: {row.problem}"))
        values = row.values
        raw_id = values.get("id")
        item_id = str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
        if item_id is None or not ID_PATTERN.fullmatch(item_id):
            detail = f"{row.where}: the id {short_repr.repr(raw_id)} is not 1-128 letters, digits and _ . : -"
            fix = (
                f"give the row in {self.source} an id of letters, digits and _ . : -, starting with a letter or digit"
            )
            return _Outcome(UNASSIGNED, None, problem=self.problem(BAD_ID, detail, fix))
        first = self.ids.setdefault(item_id, row.where)  # a row of any shape claims its id
        split, problem = self.split_of(row, item_id)
        if first != row.where:
            detail = f"{row.where} repeats the id {item_id!r} of {first}; the first is kept"
            problem = self.problem(DUPLICATE_ID, detail, f"give each row of {self.source} its own id")
            return _Outcome(split, None, problem=problem)
        if problem is not None:
            return _Outcome(split, item_id, problem=problem)
        label = values.get("label")
        if label is not None and label not in LABELS:
            detail = f"{row.where}: label {short_repr.repr(label)} is not {PRISTINE} or {FALSIFIED} (or empty)"
            return _Outcome(split, item_id, problem=self.problem(UNKNOWN_LABEL, detail))
        caption = check_caption(
            values.get("caption"), f"{self.source} id {item_id}", self.source, self.settings.max_caption_chars
        )
        if caption.problem is not None:
            return _Outcome(split, item_id, problem=caption.problem)
        image_path = values.get("image_path")
        if image_path is not None and not isinstance(image_path, str):
            detail = f"{row.where}: image_path is a {type(image_path).__name__} ({short_repr.repr(image_path)})"
            return _Outcome(split, item_id, problem=self.problem(BAD_PATH, detail))
        image = self.linker.link(image_path or "")
        if image.problem is not None:
            return _Outcome(split, item_id, problem=image.problem)
        earlier = self.pairs.setdefault((caption.text, image.out_path), item_id)
        if earlier != item_id:  # one post twice: in two splits, it would leak from training into evaluation
            detail = f"{row.where} repeats the caption and image of {earlier!r}; the first is kept"
            fix = f"remove the repeated row from {self.source}"
            return _Outcome(split, item_id, problem=self.problem(DUPLICATE_ROW, detail, fix, image_path))
        item = {"id": item_id, "image_path": image.out_path, "caption": caption.text, "gold_label": label}
        notes = list(caption.notes)
        for column in EVIDENCE:
            if column in self.columns:
                item[column], note = self.evidence(row, item_id, column)
                notes += [note] if note is not None else []
        return _Outcome(split, item_id, item, None, notes)

    def split_of(self, row: TableRow, item_id: str) -> tuple[str, Problem | None]:
        """The row's split: its ``split`` value, or drawn from the fractions when the table has no such column."""
        fractions = self.settings.split_fractions
        if "split" not in self.columns:
            return assign_split(item_id, fractions, self.settings.seed), None
        split = row.values.get("split")
        if isinstance(split, str) and split in fractions:
            return split, None
        detail = f"{row.where}: split {short_repr.repr(split)} is not one of {', '.join(fractions)}"
        fix = f"fix the row in {self.source}, or add the split to data.prepare.<name>.split_fractions"
        return UNASSIGNED, self.problem(UNKNOWN_SPLIT, detail, fix)

    def evidence(self, row: TableRow, item_id: str, column: str) -> tuple[list[str] | None, Problem | None]:
        """One evidence column of a kept item: its cleaned texts (None: no evidence), and what went wrong or was
        changed. In a CSV the cell is a JSON list."""
        value = row.values.get(column)
        if value is None:
            return None, None
        if isinstance(value, str) and table_format(self.source) == "csv":
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                pass
        if not isinstance(value, list):
            detail = f"{row.where}: {column} is not a list of texts ({short_repr.repr(value)})"
            fix = f'write {column} as a JSON list of strings, e.g. ["Dhaka", "flood"]; the item is kept without it'
            return None, self.problem(EVIDENCE_UNREADABLE, detail, fix)
        limits, changes = self.settings.evidence_limits, Counter()
        limit = limits.max_entities if column == "evidence_entities" else limits.max_captions
        texts = distinct_texts(value, limit, limits.max_chars, changes)
        if not changes:
            return texts, None
        detail = (
            f"{column} of {item_id} was cleaned: {', '.join(f'{what} (in {n} texts)' for what, n in changes.items())}"
        )
        fix = f"nothing to do unless {self.source} is corrupt; the item is kept with the cleaned evidence"
        return texts, self.problem(EVIDENCE_CLEANED, detail, fix)


def prepare_table(settings: TableSettings, out_dir: str | Path) -> dict:
    """Write the items, gold labels (of the labelled items), images and report of a table of posts to ``out_dir``;
    return the counts.

    The table, its columns and ``out_dir`` are checked before anything is written; the output is built beside
    ``out_dir`` and replaces it only when every split has items. The summary: ``table``, ``format``, ``split_by``
    (``column`` or ``fractions``), ``rows`` read, ``items`` written, ``labels`` (pristine, falsified, unlabeled),
    ``dropped`` (total and ``dropped_by_reason``, every split and the unassigned rows), ``ignored_columns``, per
    split ``splits.<split>`` (items, labels, with_evidence, dropped, dropped_by_reason, evidence_problems,
    kept_with_warnings) and ``images`` (distinct used, hard-linked, copied)."""
    out_dir = Path(out_dir)
    raw = settings.raw_root()
    table_file = settings.require(raw, settings.table, "table", folder=False)
    folder = Path(settings.image_root).as_posix()
    root_real = raw.real if folder == "." else settings.require(raw, folder, "image_root", folder=True).real
    root = Root("image root", settings.path(folder), root_real, raw.link_roots)
    check_apart(out_dir, settings.apart(raw.link_roots) | {"table": table_file.real, "image_root": root.real})
    table = open_table(table_file, settings.path(settings.table))
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise PrepareInputError(
            f"{settings.path(settings.table)} has no column {missing} (its columns: {list(table.columns)}); a table "
            f"of posts needs {', '.join(REQUIRED)} (docs/own_data.md): rename its columns or add them"
        )

    splits = list(settings.split_fractions)
    read, labels = 0, {split: Counter() for split in splits}
    with_evidence: Counter[str] = Counter()
    with staged_folder(out_dir) as build, open(build / REPORT_FILE, "w") as report_file:
        (build / IMAGES_DIR).mkdir()
        report = Report(report_file)
        preparer = _Preparer(settings, root, build, table.columns)
        writers = {split: SplitWriter(build, split) for split in splits}
        for row in tqdm(table.rows, desc=f"prepare {preparer.source}", unit=" rows"):
            read += 1
            outcome = preparer.outcome(row)
            if outcome.item is None:
                report.add(outcome.split, row.index, outcome.item_id, outcome.problem, dropped=True)
                continue
            for note in outcome.notes:
                report.add(outcome.split, row.index, outcome.item_id, note, dropped=False)
            writers[outcome.split].add(outcome.item)
            labels[outcome.split][outcome.item["gold_label"] or UNLABELED] += 1
            with_evidence[outcome.split] += any(outcome.item.get(c) is not None for c in EVIDENCE)
        for writer in writers.values():
            writer.close()
        empty = [split for split in splits if not labels[split]]
        if empty:
            dropped = Counter()
            for split in (*splits, UNASSIGNED):
                dropped.update(report.counts(split, dropped=True))
            raise PrepareInputError(
                f"{settings.path(settings.table)}: of its {read} rows, none became an item of split(s) {empty} "
                f"(left out: {dict(sorted(dropped.items()))}; see the reasons in docs/own_data.md); nothing was "
                "written. Fix the rows, or give the table more rows, a split column, or other split_fractions"
            )
        summary = _summary(settings, table.format, table.columns, read, labels, with_evidence, report)
        summary["images"] = preparer.linker.summary()
    _log(summary, out_dir / REPORT_FILE)
    return summary


def _summary(settings, fmt, columns, read, labels, with_evidence, report: Report) -> dict:
    splits, label_names = list(settings.split_fractions), (PRISTINE, FALSIFIED, UNLABELED)
    per_split, dropped = {}, Counter()
    for split in (*splits, UNASSIGNED):
        dropped.update(report.counts(split, dropped=True))
    for split in splits:
        split_dropped = report.counts(split, dropped=True)
        per_split[split] = {
            "items": sum(labels[split].values()),
            "labels": {label: labels[split][label] for label in label_names},
            "with_evidence": with_evidence[split],
            "dropped": sum(split_dropped.values()),
            "dropped_by_reason": split_dropped,
            "evidence_problems": report.counts(split, dropped=False, evidence=True),
            "kept_with_warnings": report.counts(split, dropped=False, evidence=False),
        }
    return {
        "table": settings.table,
        "format": fmt,
        "split_by": "column" if "split" in columns else "fractions",
        "rows": read,
        "items": sum(s["items"] for s in per_split.values()),
        "labels": {label: sum(s["labels"][label] for s in per_split.values()) for label in label_names},
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "ignored_columns": [c for c in columns if c not in REQUIRED + OPTIONAL],
        "splits": per_split,
    }


def _log(summary: dict, report_file: Path) -> None:
    log.info("%s: %d rows -> %d items %s", summary["table"], summary["rows"], summary["items"], summary["labels"])
    if summary["dropped"]:
        log.warning(
            "%d rows left out %s; each is listed in %s", summary["dropped"], summary["dropped_by_reason"], report_file
        )
    for split in ("val", "test"):
        unlabeled = summary["splits"][split]["labels"][UNLABELED]
        if unlabeled:
            log.warning(
                "%s has %d unlabeled items: thresholds and evaluate read gold on val and test; after labelling, "
                "`mmkd annotate export` queues a sample of them for people (docs/annotation.md)",
                split,
                unlabeled,
            )
