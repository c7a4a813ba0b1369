"""Prepare NewsCLIPpings (Luo et al., EMNLP 2021) as mmkd items: one item per annotation, images from VisualNews.

Inputs, all under one raw-data folder (the ``prepare`` stage's dependency):

- NewsCLIPpings annotations ``<annotations>/<subset>/<split>.json``: ``{"annotations": [{"id", "image_id",
  "similarity_score", "falsified", "source_dataset"}, ...]}``, for any subset in ``SUBSETS``. The caption is that
  of VisualNews record ``id``, the image that of VisualNews record ``image_id``; ``falsified`` is the gold label.
- VisualNews ``origin/data.json``: a list of ``{"id", "caption", "topic", "source", "image_path",
  "article_path"}``; ``image_path`` (e.g. ``./bbc/images/0013/600.jpg``) is relative to the image root.
- Optionally CCN web evidence (see ``mmkd.data.evidence``).

Output, in ``out_dir``: ``<split>.parquet`` (items: ``id`` is ``<split>-<index in the annotation list, 6
digits>``, so every item traces back to its annotation; NewsCLIPpings lists each pristine sample followed by its
falsified twin, so the index's parity follows the label: ids are for people and joins, never shown to a model;
``image_path`` is ``images/<VisualNews image_path>``, relative to ``out_dir``), ``<split>.gold.parquet``
(``falsified`` -> ``gold_label``), ``images/`` (each image used, hard-linked from the image root when it can be,
else copied, so the folder is self-contained: ``dvc push``/``pull`` moves it whole and no absolute path is stored),
and ``prepare_report.jsonl``, one line per bad record.

Bad records (unknown id, missing, unreadable or oversized image, a path leaving the image root, a malformed
annotation, an empty caption) are left out of the tables, counted in the returned summary and listed in the report
with the item, the reason, the path and the fix; nothing bad stops the run. Unusable evidence is reported too, but
the item is kept without evidence.

Memory: the JSON files are streamed (ijson); of VisualNews only the records the annotations use are kept (caption
and image path), and items are written in batches, so memory grows with the number of distinct ids used, not with
the size of data.json or of the tables.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import ijson
import polars as pl
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mmkd.data import PrepareInputError
from mmkd.data.evidence import EvidenceLimits, EvidenceReader
from mmkd.data.images import LINK_MODES, Problem, check_image, link_or_copy, relative_inside
from mmkd.schema import FALSIFIED, GOLD_SCHEMA, PRISTINE, items_frame

log = logging.getLogger(__name__)

SUBSETS: tuple[str, ...] = (
    "merged_balanced",
    "person_sbert_text_text",
    "scene_resnet_place",
    "semantics_clip_text_image",
    "semantics_clip_text_text",
)
REPORT_FILE = "prepare_report.jsonl"
IMAGES_DIR = "images"

BAD_ANNOTATION = "bad_annotation"
UNKNOWN_CAPTION_ID = "unknown_caption_id"
UNKNOWN_IMAGE_ID = "unknown_image_id"
BAD_VISUALNEWS_RECORD = "bad_visualnews_record"
EMPTY_CAPTION = "empty_caption"

BATCH_ROWS = 4096  # items per Parquet write


@dataclass(frozen=True)
class NewsClippingsSettings:
    """Where the raw NewsCLIPpings files are (``data.prepare.<name>`` in params.yaml) and how strict to be.

    Every path except ``raw`` is relative to ``raw``, the folder the ``prepare`` stage depends on (so a change to
    any raw input re-runs it). The defaults are the layout of the NewsCLIPpings and CCN instructions."""

    raw: str  # the raw-data folder: annotations, VisualNews and evidence live below it
    annotations: str = "news_clippings/data"  # holds <subset>/<split>.json
    subset: str = "merged_balanced"  # one of SUBSETS
    visualnews: str = "visual_news/origin/data.json"
    image_root: str = "visual_news/origin"  # VisualNews image_path values are relative to this folder
    evidence: str | None = None  # CCN queries_dataset/<subset> folder; null: no evidence
    splits: tuple[str, ...] = ("train", "val", "test")
    limit: int | None = None  # keep only the first `limit` annotations of each split (smoke runs); null: all
    max_image_bytes: int = 25 * 2**20
    max_image_pixels: int = 40_000_000  # e.g. 8000 x 5000
    link_images: str = "hardlink"  # hardlink (falls back to copy across file systems) or copy
    evidence_limits: EvidenceLimits = field(default_factory=EvidenceLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        if isinstance(self.evidence_limits, dict):
            object.__setattr__(self, "evidence_limits", EvidenceLimits(**self.evidence_limits))
        if self.subset not in SUBSETS:
            raise ValueError(f"subset {self.subset!r} is not a NewsCLIPpings subset; use one of {SUBSETS}")
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits {self.splits} must be distinct and non-empty (e.g. [train, val, test])")
        for split in self.splits:
            if not split or not split.replace("_", "").isalnum():
                raise ValueError(f"split name {split!r} must be letters, digits and underscores (it names files)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of annotations or null, got {self.limit}")
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise ValueError("max_image_bytes and max_image_pixels must be positive")
        if self.link_images not in LINK_MODES:
            raise ValueError(f"link_images {self.link_images!r}: use one of {LINK_MODES}")

    def path(self, relative: str) -> Path:
        """A raw input's path: ``relative`` under ``raw``."""
        return Path(self.raw) / relative

    def annotation_file(self, split: str) -> Path:
        """The NewsCLIPpings annotation file of one split."""
        return self.path(self.annotations) / self.subset / f"{split}.json"


@dataclass(frozen=True)
class _Image:
    """The outcome of checking one VisualNews image (each image is checked and linked once)."""

    out_path: str | None  # relative to out_dir
    problem: Problem | None


def _check_inputs(settings: NewsClippingsSettings) -> None:
    """Fail before any work when a whole input is missing, naming the file and the setting to fix."""
    wanted = [(settings.annotation_file(s), "annotations", "file") for s in settings.splits]
    wanted += [(settings.path(settings.visualnews), "visualnews", "file")]
    wanted += [(settings.path(settings.image_root), "image_root", "folder")]
    if settings.evidence is not None:
        wanted += [(settings.path(settings.evidence), "evidence", "folder")]
    for path, key, kind in wanted:
        if not (path.is_file() if kind == "file" else path.is_dir()):
            raise PrepareInputError(
                f"{path} does not exist (a {kind}, from data.prepare.<name>.{key} under raw={settings.raw}); "
                "get the data (README: Running on NewsCLIPpings) or fix the path in conf/data/"
            )


def _stream_json(path: Path, prefix: str) -> Iterator[object]:
    """The values at ``prefix`` of a JSON file, one at a time; a malformed file is a PrepareInputError."""
    try:
        with open(path, "rb") as f:
            yield from ijson.items(f, prefix)
    except ijson.JSONError as exc:
        raise PrepareInputError(f"{path} is not valid JSON ({exc}); re-download it") from exc


def _annotations(settings: NewsClippingsSettings, split: str) -> Iterator[tuple[int, object]]:
    """``(index, annotation)`` for the split's annotations, in file order, up to ``limit``."""
    for index, annotation in enumerate(_stream_json(settings.annotation_file(split), "annotations.item")):
        if settings.limit is not None and index >= settings.limit:
            return
        yield index, annotation


def _annotation_ids(annotation: object) -> tuple[int, int, bool] | None:
    """``(caption id, image id, falsified)``, or None when the annotation does not have that shape."""
    if not isinstance(annotation, dict):
        return None
    caption_id, image_id, falsified = annotation.get("id"), annotation.get("image_id"), annotation.get("falsified")
    ids_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (caption_id, image_id))
    if not ids_ok or not isinstance(falsified, bool):
        return None
    return caption_id, image_id, falsified


def _visualnews_records(settings: NewsClippingsSettings, wanted: set[int]) -> dict[int, tuple[object, object]]:
    """VisualNews id -> (caption, image_path) for the wanted ids only, streaming data.json once."""
    path = settings.path(settings.visualnews)
    records: dict[int, tuple[object, object]] = {}
    for record in tqdm(_stream_json(path, "item"), desc="VisualNews data.json", unit=" records", mininterval=5):
        record_id = record.get("id") if isinstance(record, dict) else None
        if isinstance(record_id, int) and record_id in wanted and record_id not in records:
            records[record_id] = (record.get("caption"), record.get("image_path"))
    return records


class _Preparer:
    """One run: the VisualNews records in use, the images checked so far, the report file and the counts."""

    def __init__(self, settings: NewsClippingsSettings, out_dir: Path, records: dict, report: TextIO):
        self.settings, self.out_dir, self.records, self.report = settings, out_dir, records, report
        self.image_root = settings.path(settings.image_root)
        self.images: dict[int, _Image] = {}
        self.links: Counter[str] = Counter()
        self.problems: Counter[tuple[str, bool, str]] = Counter()  # (split, dropped, reason) -> count

    def record_problem(self, split: str, index: int, problem: Problem, *, dropped: bool) -> None:
        """Count a problem and append it to the report: the item, the reason, whether it was left out, the fix."""
        self.problems[split, dropped, problem.reason] += 1
        row = {
            "split": split,
            "index": index,
            "item_id": f"{split}-{index:06d}",
            "reason": problem.reason,
            "dropped": dropped,
            "path": problem.path,
            "detail": problem.detail,
            "fix": problem.fix,
        }
        self.report.write(json.dumps(row) + "\n")

    def counts(self, split: str, dropped: bool) -> dict[str, int]:
        return {r: n for (s, d, r), n in sorted(self.problems.items()) if s == split and d == dropped}

    def image(self, image_id: int) -> _Image:
        """Check (once per image) that the record's image is usable, and link it into out_dir/images."""
        if image_id not in self.images:
            self.images[image_id] = self._link_image(image_id)
        return self.images[image_id]

    def _link_image(self, image_id: int) -> _Image:
        image_path = self.records[image_id][1]
        if not isinstance(image_path, str):
            detail = f"VisualNews record {image_id} has no image_path string ({image_path!r})"
            return _Image(None, Problem(BAD_VISUALNEWS_RECORD, detail, "fix the record in data.json"))
        relative, problem = relative_inside("image root", image_path)
        if problem is None:
            src = self.image_root / relative
            limits = {"max_bytes": self.settings.max_image_bytes, "max_pixels": self.settings.max_image_pixels}
            problem = check_image(src, **limits)
        if problem is not None:
            return _Image(None, replace(problem, path=image_path))
        out_path = f"{IMAGES_DIR}/{relative}"
        self.links[link_or_copy(src, self.out_dir / out_path, self.settings.link_images)] += 1
        return _Image(out_path, None)

    def item(self, split: str, index: int, annotation: object, evidence: EvidenceReader | None) -> dict | Problem:
        """The item and gold label of one annotation, or the problem that leaves it out."""
        ids = _annotation_ids(annotation)
        if ids is None:
            return Problem(
                BAD_ANNOTATION,
                f"annotation {index} is not {{id: int, image_id: int, falsified: bool, ...}}: {annotation!r:.200}",
                "fix or remove the annotation",
            )
        caption_id, image_id, falsified = ids
        for vn_id, reason in ((caption_id, UNKNOWN_CAPTION_ID), (image_id, UNKNOWN_IMAGE_ID)):
            if vn_id not in self.records:
                return Problem(
                    reason,
                    f"VisualNews data.json has no record with id {vn_id}",
                    "use the VisualNews origin/data.json the annotations were made from",
                )
        caption = self.records[caption_id][0]
        if not isinstance(caption, str) or not caption.strip():
            detail = f"VisualNews record {caption_id} has no caption ({caption!r:.80})"
            return Problem(EMPTY_CAPTION, detail, "fix the record in data.json")
        image = self.image(image_id)
        if image.problem is not None:
            return image.problem
        row = {
            "id": f"{split}-{index:06d}",
            "image_path": image.out_path,
            "caption": caption.strip(),
            "gold_label": FALSIFIED if falsified else PRISTINE,
        }
        if evidence is not None:
            found, problem = evidence.read(index)
            if problem is not None:
                self.record_problem(split, index, problem, dropped=False)
            if found is not None:
                row |= {"evidence_entities": found.entities, "evidence_captions": found.captions}
        return row


class _SplitWriter:
    """Items and gold labels of one split, written in batches (so a large split is never whole in memory)."""

    def __init__(self, out_dir: Path, split: str):
        self.items_file, self.gold_file = out_dir / f"{split}.parquet", out_dir / f"{split}.gold.parquet"
        self.rows: list[dict] = []
        self.writers: dict[Path, pq.ParquetWriter] = {}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        items = items_frame([{k: v for k, v in r.items() if k != "gold_label"} for r in self.rows])
        gold = pl.DataFrame([{"id": r["id"], "gold_label": r["gold_label"]} for r in self.rows], schema=GOLD_SCHEMA)
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


def prepare_newsclippings(settings: NewsClippingsSettings, out_dir: str | Path) -> dict:
    """Write the items, gold labels, images and report of every split to ``out_dir``; return the counts.

    The summary, per split: ``annotations`` read, ``items`` written, ``labels`` counts, ``dropped`` (total and by
    reason), ``with_evidence`` (items that got evidence) and ``evidence_problems`` by reason (items kept)."""
    _check_inputs(settings)

    evidence: dict[str, EvidenceReader | None] = {split: None for split in settings.splits}
    if settings.evidence is not None:
        root = settings.path(settings.evidence)
        evidence = {split: EvidenceReader(root, split, settings.evidence_limits) for split in settings.splits}

    wanted: set[int] = set()
    for split in settings.splits:
        n = 0
        for _, annotation in _annotations(settings, split):
            n += 1
            ids = _annotation_ids(annotation)
            if ids is not None:
                wanted.update(ids[:2])
        if n == 0:
            raise PrepareInputError(
                f'{settings.annotation_file(split)} has no annotations; expected {{"annotations": [...]}} '
                "as in the NewsCLIPpings release"
            )
    log.info("the annotations use %d distinct VisualNews ids; reading their records", len(wanted))
    records = _visualnews_records(settings, wanted)
    if wanted and not records:
        raise PrepareInputError(
            f"{settings.path(settings.visualnews)} has none of the {len(wanted)} ids the annotations use; expected "
            "the VisualNews origin/data.json, a list of {id, caption, image_path, ...} records"
        )
    del wanted

    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    summary: dict = {"subset": settings.subset, "evidence": settings.evidence is not None, "splits": {}}
    with open(out_dir / REPORT_FILE, "w") as report:
        preparer = _Preparer(settings, out_dir, records, report)
        for split in settings.splits:
            writer = _SplitWriter(out_dir, split)
            annotations, with_evidence, labels = 0, 0, Counter()
            for index, annotation in tqdm(_annotations(settings, split), desc=f"prepare {split}", unit=" items"):
                annotations += 1
                result = preparer.item(split, index, annotation, evidence[split])
                if isinstance(result, Problem):
                    preparer.record_problem(split, index, result, dropped=True)
                    continue
                writer.add(result)
                labels[result["gold_label"]] += 1
                with_evidence += result.get("evidence_entities") is not None
            writer.close()
            dropped = preparer.counts(split, dropped=True)
            summary["splits"][split] = {
                "annotations": annotations,
                "items": sum(labels.values()),
                "labels": {label: labels[label] for label in (PRISTINE, FALSIFIED)},
                "dropped": sum(dropped.values()),
                "dropped_by_reason": dropped,
                "with_evidence": with_evidence,
                "evidence_problems": preparer.counts(split, dropped=False),
            }
            _log_split(split, summary["splits"][split], out_dir / REPORT_FILE)
    used = sum(1 for image in preparer.images.values() if image.problem is None)
    summary["images"] = {"distinct_used": used, **dict(sorted(preparer.links.items()))}
    return summary


def _log_split(split: str, counts: dict, report_file: Path) -> None:
    log.info(
        "%s: %d annotations -> %d items (%s), %d with evidence",
        split,
        counts["annotations"],
        counts["items"],
        counts["labels"],
        counts["with_evidence"],
    )
    if counts["dropped"] or counts["evidence_problems"]:
        log.warning(
            "%s: %d records left out %s, %d items kept without evidence %s; each is listed in %s",
            split,
            counts["dropped"],
            counts["dropped_by_reason"],
            sum(counts["evidence_problems"].values()),
            counts["evidence_problems"],
            report_file,
        )
