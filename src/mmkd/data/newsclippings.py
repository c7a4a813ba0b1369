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

Bad records (unknown id, missing, unreadable, oversized or oddly shaped image, a path leaving the image root or
naming something other than a regular file, a malformed or duplicate annotation, an empty caption) are left out of
the tables, counted in the returned summary and listed in the report with the item, the reason, the path and the
fix. Unusable evidence is reported too, but the item is kept without evidence; captions and evidence are cleaned
(``mmkd.data.text``) and captions cut to ``max_caption_chars``, each change reported with the item kept.

What stops the run, with a PrepareInputError that names the file, the setting and the fix, before the output is
touched: a missing or malformed input as a whole, evidence of another subset, a file whose annotations are all
malformed, the same (caption id, image id) pair in two splits (unless ``allow_split_overlap``), a split that ends
with no items, and a ``data.dir`` that overlaps an input. The output is built beside the old one and swapped in
only at the end (``mmkd.data.staging``), so a failed run leaves the previous output as it was.

Memory: the JSON files are streamed (ijson's tokenizer, depth-bounded: ``mmkd.data.json_stream``); of VisualNews
only the records the annotations use are kept (caption and image path), and items are written in batches, so memory
grows with the number of distinct ids used, not with the size of data.json or of the tables.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import ijson
from tqdm.auto import tqdm

from mmkd.data import PrepareInputError, Problem
from mmkd.data.evidence import EvidenceLimits, EvidenceReader
from mmkd.data.json_stream import stream_items
from mmkd.data.raw_paths import Resolved, Root, open_regular
from mmkd.data.records import (
    IMAGES_DIR,
    REPORT_FILE,
    Caption,
    ImageLinker,
    LinkedImage,
    PrepareSettings,
    Report,
    SplitWriter,
    check_caption,
    check_split_name,
    short_repr,
)
from mmkd.data.staging import check_apart, staged_folder
from mmkd.schema import FALSIFIED, PRISTINE

log = logging.getLogger(__name__)

SUBSETS: tuple[str, ...] = (
    "merged_balanced",
    "person_sbert_text_text",
    "scene_resnet_place",
    "semantics_clip_text_image",
    "semantics_clip_text_text",
)
# Reasons of this module (those of captions, images and paths are in mmkd.data.records, mmkd.data.images and
# mmkd.data.raw_paths).
BAD_ANNOTATION = "bad_annotation"
DUPLICATE_ANNOTATION = "duplicate_annotation"
SPLIT_OVERLAP = "split_overlap"
UNKNOWN_CAPTION_ID = "unknown_caption_id"
UNKNOWN_IMAGE_ID = "unknown_image_id"
BAD_VISUALNEWS_RECORD = "bad_visualnews_record"
DUPLICATE_VISUALNEWS_ID = "duplicate_visualnews_id"


@dataclass(frozen=True)
class NewsClippingsSettings(PrepareSettings):
    """Where the raw NewsCLIPpings files are (``data.prepare.<name>`` in params.yaml) and how strict to be.

    Every path except ``raw`` and ``link_roots`` is relative to ``raw``, the folder the ``prepare`` stage depends on
    (so a change to any raw input re-runs it): annotations, VisualNews and evidence live below it. The defaults are
    the layout of the NewsCLIPpings and CCN instructions; ``raw``, the limits and ``link_images`` are those of
    ``PrepareSettings``."""

    get_data: ClassVar[str] = "README: Running on NewsCLIPpings"

    annotations: str = "news_clippings/data"  # holds <subset>/<split>.json
    subset: str = "merged_balanced"  # one of SUBSETS
    visualnews: str = "visual_news/origin/data.json"
    image_root: str = "visual_news/origin"  # VisualNews image_path values are relative to this folder
    evidence: str | None = None  # CCN queries_dataset/<subset> folder, of the same subset; null: no evidence
    splits: tuple[str, ...] = ("train", "val", "test")
    limit: int | None = None  # keep only the first `limit` annotations of each split (smoke runs); null: all
    allow_split_overlap: bool = False  # the same (caption id, image id) in two splits is an error unless true
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
            check_split_name(split)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of annotations or null, got {self.limit}")
        super().__post_init__()

    def annotation_file(self, split: str) -> Path:
        """The NewsCLIPpings annotation file of one split."""
        return self.path(self.annotations) / self.subset / f"{split}.json"


@dataclass(frozen=True)
class _Inputs:
    """The raw inputs, each checked and resolved inside ``raw`` (see ``_check_inputs``)."""

    annotation_files: dict[str, Resolved]
    visualnews: Resolved
    image_root: Root
    evidence: Root | None
    link_roots: tuple[Path, ...]


def _check_evidence_subset(settings: NewsClippingsSettings) -> None:
    """Refuse evidence whose folder names another subset: evidence is matched by position, so it would be wrong."""
    if settings.evidence is None:
        return
    named = [part for part in Path(settings.evidence).parts if part in SUBSETS]
    if named and settings.subset not in named:
        raise PrepareInputError(
            f"data.prepare.<name>.evidence is {settings.evidence!r}, the evidence of subset {named[-1]!r}, but "
            f"data.prepare.<name>.subset is {settings.subset!r}; evidence is matched by position, so items would get "
            f"another subset's evidence: set evidence to queries_dataset/{settings.subset} (the default follows "
            "the subset) or null"
        )


def _check_inputs(settings: NewsClippingsSettings) -> _Inputs:
    """Fail before any work when a whole input is missing, is not a regular file (or folder), or leaves ``raw``."""
    _check_evidence_subset(settings)
    raw = settings.raw_root()

    def need(relative: str, key: str, folder: bool) -> Resolved:
        return settings.require(raw, relative, key, folder)

    annotations = {
        split: need(f"{settings.annotations}/{settings.subset}/{split}.json", "annotations", False)
        for split in settings.splits
    }
    visualnews = need(settings.visualnews, "visualnews", False)
    image_root = need(settings.image_root, "image_root", True)
    evidence = None
    if settings.evidence is not None:
        found = need(settings.evidence, "evidence", True)
        evidence = Root("evidence folder", settings.path(settings.evidence), found.real, raw.link_roots)
    return _Inputs(
        annotations,
        visualnews,
        Root("image root", settings.path(settings.image_root), image_root.real, raw.link_roots),
        evidence,
        raw.link_roots,
    )


def _stream(file: Resolved, prefix: str) -> Iterator[object]:
    """The values at ``prefix`` of a JSON file, one at a time; a malformed file is a PrepareInputError."""
    try:
        with open_regular(file) as f:
            yield from stream_items(f, prefix)
    except ijson.JSONError as exc:
        raise PrepareInputError(f"{file.real} is not valid JSON ({exc}); re-download it") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _annotation_ids(annotation: object) -> tuple[int, int, bool] | str:
    """``(caption id, image id, falsified)``, or what is wrong with the annotation.

    The rule: ``id`` and ``image_id`` must be JSON integers and ``falsified`` JSON ``true``/``false``, as in the
    NewsCLIPpings release; nothing is converted (a string id or a 0/1 label is a bad annotation), because a file
    that spells them otherwise was exported by some other tool and may mean something else."""
    if not isinstance(annotation, dict):
        return f"it is a {type(annotation).__name__}, not an object"
    for key, ok, want in (("id", _is_int, "an integer"), ("image_id", _is_int, "an integer")) + (
        ("falsified", lambda v: isinstance(v, bool), "true or false"),
    ):
        value = annotation.get(key)
        if not ok(value):
            found = "missing" if key not in annotation else f"a {type(value).__name__} ({short_repr.repr(value)})"
            return f"{key} is {found}, not {want}"
    return annotation["id"], annotation["image_id"], annotation["falsified"]


@dataclass
class _SplitScan:
    """Pass 1 over one split's annotation file: counts, the pairs used and the duplicates."""

    total: int = 0  # annotations in the file (all of them, for the evidence index check)
    read: int = 0  # annotations within `limit`
    bad: int = 0
    first_bad: str | None = None
    pairs: dict[tuple[int, int], tuple[int, bool]] = field(default_factory=dict)  # (id, image_id) -> first's
    # (index, falsified)
    duplicates: dict[int, tuple[int, bool]] = field(default_factory=dict)  # index -> (the first's index, same label)


def _scan_split(settings: NewsClippingsSettings, split: str, file: Resolved, wanted: set[int]) -> _SplitScan:
    scan = _SplitScan()
    for index, annotation in enumerate(_stream(file, "annotations.item")):
        scan.total += 1
        if settings.limit is not None and index >= settings.limit:
            continue
        scan.read += 1
        ids = _annotation_ids(annotation)
        if isinstance(ids, str):
            scan.bad += 1
            scan.first_bad = scan.first_bad or f"annotation {index}: {ids}"
            continue
        wanted.update(ids[:2])
        if ids[:2] in scan.pairs:
            first, label = scan.pairs[ids[:2]]
            scan.duplicates[index] = (first, label == ids[2])
        else:
            scan.pairs[ids[:2]] = (index, ids[2])
    if scan.total == 0:
        raise PrepareInputError(
            f'{file.real} has no annotations; expected {{"annotations": [...]}} as in the NewsCLIPpings release'
        )
    if scan.bad == scan.read:
        raise PrepareInputError(
            f"all {scan.read} annotations read from {settings.annotation_file(split)} are malformed (e.g. "
            f"{scan.first_bad}); expected {{id: int, image_id: int, falsified: true/false, ...}} as in the "
            "NewsCLIPpings release: re-download the file, or fix its export"
        )
    return scan


@dataclass(frozen=True)
class _Record:
    """What an item needs of one VisualNews record: the checked caption and the image path."""

    caption: Caption
    image_path: object


def _record(record_id: int, record: dict, max_chars: int) -> _Record:
    caption = check_caption(record.get("caption"), f"VisualNews record {record_id}", "data.json", max_chars)
    return _Record(caption, record.get("image_path"))


def _visualnews_records(
    file: Resolved, wanted: set[int], max_chars: int
) -> tuple[dict[int, _Record], dict[int, tuple[int, bool]]]:
    """VisualNews id -> record for the wanted ids only, streaming data.json once; and id -> (number of records,
    whether they differ) for wanted ids that data.json holds more than once (the first record is used)."""
    records: dict[int, _Record] = {}
    duplicates: dict[int, tuple[int, bool]] = {}
    for record in tqdm(_stream(file, "item"), desc="VisualNews data.json", unit=" records", mininterval=5):
        record_id = record.get("id") if isinstance(record, dict) else None
        if not _is_int(record_id) or record_id not in wanted:
            continue
        found = _record(record_id, record, max_chars)
        if record_id in records:
            count, differ = duplicates.get(record_id, (1, False))
            duplicates[record_id] = (count + 1, differ or found != records[record_id])
        else:
            records[record_id] = found
    return records, duplicates


class _Preparer:
    """One run: the VisualNews records in use, the images checked so far, the report file and the counts."""

    def __init__(self, settings: NewsClippingsSettings, inputs: _Inputs, out_dir: Path, records, duplicates, report):
        self.settings, self.out_dir, self.report = settings, out_dir, report
        self.records: dict[int, _Record] = records
        self.duplicates: dict[int, tuple[int, bool]] = duplicates
        self.linker = ImageLinker(inputs.image_root, settings.image_limits(), out_dir, settings.link_images)
        self.images: dict[int, LinkedImage] = {}  # by VisualNews image id
        self.kept_pairs: dict[tuple[int, int], str] = {}  # (caption id, image id) -> the first item made of it
        self.overlaps: list[tuple[str, str, tuple[int, int]]] = []  # (earlier item, later item, pair)

    def record_problem(self, split: str, index: int, problem: Problem, *, dropped: bool) -> None:
        """Count a problem and append it to the report (``mmkd.data.records.Report``)."""
        self.report.add(split, index, f"{split}-{index:06d}", problem, dropped=dropped)

    def image(self, image_id: int) -> LinkedImage:
        """Check (once per image) that the record's image is usable, and link it into out_dir/images."""
        if image_id not in self.images:
            self.images[image_id] = self._link_image(image_id)
        return self.images[image_id]

    def _link_image(self, image_id: int) -> LinkedImage:
        image_path = self.records[image_id].image_path
        if not isinstance(image_path, str):
            detail = f"VisualNews record {image_id} has no image_path string ({short_repr.repr(image_path)})"
            return LinkedImage(None, Problem(BAD_VISUALNEWS_RECORD, detail, "fix the record in data.json"))
        return self.linker.link(image_path)

    def item(
        self, split: str, index: int, annotation: object, scan: _SplitScan, evidence: EvidenceReader | None
    ) -> tuple[dict | None, Problem | None, list[Problem]]:
        """``(row, None, notes)`` for a kept item (notes: what was changed or is worth knowing), or ``(None, the
        problem that leaves it out, [])``."""
        ids = _annotation_ids(annotation)
        if isinstance(ids, str):
            detail = f"annotation {index}: {ids}: {short_repr.repr(annotation)}"
            return None, Problem(BAD_ANNOTATION, detail, "fix or remove the annotation"), []
        caption_id, image_id, falsified = ids
        if index in scan.duplicates:
            first, same_label = scan.duplicates[index]
            same = "with the same label" if same_label else "with the other label (the first's label is kept)"
            detail = f"annotation {index} repeats annotation {first} (id {caption_id}, image_id {image_id}) {same}"
            fix = "remove the duplicate from the annotation file; the first is kept"
            return None, Problem(DUPLICATE_ANNOTATION, detail, fix), []
        for vn_id, reason in ((caption_id, UNKNOWN_CAPTION_ID), (image_id, UNKNOWN_IMAGE_ID)):
            if vn_id not in self.records:
                return (
                    None,
                    Problem(
                        reason,
                        f"VisualNews data.json has no record with id {vn_id}",
                        "use the VisualNews origin/data.json the annotations were made from",
                    ),
                    [],
                )
        caption = self.records[caption_id].caption
        if caption.problem is not None:
            return None, caption.problem, []
        image = self.image(image_id)
        if image.problem is not None:
            return None, image.problem, []
        notes = list(caption.notes)
        for vn_id in dict.fromkeys((caption_id, image_id)):
            if vn_id in self.duplicates:
                count, differ = self.duplicates[vn_id]
                how = "that differ" if differ else "that are the same"
                detail = f"data.json has {count} records with id {vn_id} ({how}); the first is used"
                notes.append(Problem(DUPLICATE_VISUALNEWS_ID, detail, "remove the duplicate records from data.json"))
        item_id = f"{split}-{index:06d}"
        earlier = self.kept_pairs.setdefault((caption_id, image_id), item_id)
        if earlier != item_id:  # within a split a pair is unique (duplicates are dropped above)
            self.overlaps.append((earlier, item_id, (caption_id, image_id)))
            detail = f"the same caption id and image id as {earlier} (allow_split_overlap is true)"
            notes.append(Problem(SPLIT_OVERLAP, detail, "use split files without shared items"))
        row = {
            "id": item_id,
            "image_path": image.out_path,
            "caption": caption.text,
            "gold_label": FALSIFIED if falsified else PRISTINE,
        }
        if evidence is not None:
            found, problem = evidence.read(index)
            if problem is not None:
                notes.append(problem)
            if found is not None:
                row |= {"evidence_entities": found.entities, "evidence_captions": found.captions}
        return row, None, notes


def _annotations(file: Resolved, limit: int | None) -> Iterator[tuple[int, object]]:
    """``(index, annotation)`` for the split's annotations, in file order, up to ``limit``."""
    for index, annotation in enumerate(_stream(file, "annotations.item")):
        if limit is not None and index >= limit:
            return
        yield index, annotation


def prepare_newsclippings(settings: NewsClippingsSettings, out_dir: str | Path) -> dict:
    """Write the items, gold labels, images and report of every split to ``out_dir``; return the counts.

    Every input is checked, and ``out_dir`` against them, before anything is written; the output is built beside
    ``out_dir`` and replaces it only when every split has items. The summary, per split: ``annotations`` read,
    ``items`` written, ``labels`` counts, ``dropped`` (total and by reason), ``with_evidence`` (items that got
    evidence), ``evidence_problems`` by reason, and ``kept_with_warnings`` by reason (items kept with another
    reported change or warning: a cut caption, a duplicate VisualNews id, ...; present only when there are any)."""
    out_dir = Path(out_dir)
    inputs = _check_inputs(settings)
    apart = settings.apart(inputs.link_roots)
    apart |= {f"annotations ({split})": f.real for split, f in inputs.annotation_files.items()}
    apart |= {"visualnews": inputs.visualnews.real, "image_root": inputs.image_root.real}
    if inputs.evidence is not None:
        apart["evidence"] = inputs.evidence.real
    check_apart(out_dir, apart)

    evidence: dict[str, EvidenceReader | None] = {split: None for split in settings.splits}
    if inputs.evidence is not None:
        evidence = {
            split: EvidenceReader(inputs.evidence, split, settings.evidence_limits) for split in settings.splits
        }

    wanted: set[int] = set()
    scans = {split: _scan_split(settings, split, inputs.annotation_files[split], wanted) for split in settings.splits}
    for split, reader in evidence.items():
        if reader is not None:
            reader.check_indices(scans[split].total, settings.annotation_file(split), settings.subset)
    log.info("the annotations use %d distinct VisualNews ids; reading their records", len(wanted))
    records, duplicates = _visualnews_records(inputs.visualnews, wanted, settings.max_caption_chars)
    if wanted and not records:
        raise PrepareInputError(
            f"{settings.path(settings.visualnews)} has none of the {len(wanted)} ids the annotations use; expected "
            "the VisualNews origin/data.json, a list of {id, caption, image_path, ...} records"
        )
    del wanted

    summary: dict = {"subset": settings.subset, "evidence": settings.evidence is not None, "splits": {}}
    with staged_folder(out_dir) as build, open(build / REPORT_FILE, "w") as report:
        (build / IMAGES_DIR).mkdir()
        preparer = _Preparer(settings, inputs, build, records, duplicates, Report(report))
        for split in settings.splits:
            summary["splits"][split] = _prepare_split(preparer, split, scans[split], evidence[split], inputs)
            _log_split(split, summary["splits"][split], out_dir / REPORT_FILE)
        _check_overlap(settings, preparer.overlaps)
        for split, counts in summary["splits"].items():
            if counts["items"] == 0:
                examples = "; ".join(preparer.report.examples.get(split, []))
                raise PrepareInputError(
                    f"split {split}: none of its {counts['annotations']} annotations became an item "
                    f"({counts['dropped_by_reason']}; e.g. {examples}); nothing was written. Fix the inputs "
                    "these reasons name (docs/newsclippings.md lists each reason)"
                )
        summary["images"] = preparer.linker.summary()
    return summary


def _check_overlap(settings: NewsClippingsSettings, overlaps: list[tuple[str, str, tuple[int, int]]]) -> None:
    """Refuse items made of the same (caption id, image id) pair in two splits, unless ``allow_split_overlap`` (then
    each is reported as ``split_overlap``): a test item seen in training makes the scores a measure of memory."""
    if not overlaps or settings.allow_split_overlap:
        return
    examples = "; ".join(f"{a} and {b} (id {pair[0]}, image_id {pair[1]})" for a, b, pair in overlaps[:3])
    splits = sorted({item.rsplit("-", 1)[0] for a, b, _ in overlaps for item in (a, b)})
    raise PrepareInputError(
        f"{len(overlaps)} items of splits {', '.join(splits)} are made of the same caption id and image id as an "
        f"item of an earlier split, e.g. {examples}: an item in two splits leaks between training and evaluation. "
        "Use the annotation files of one NewsCLIPpings release, or set data.prepare.<name>.allow_split_overlap: true"
    )


def _prepare_split(
    preparer: _Preparer, split: str, scan: _SplitScan, evidence: EvidenceReader | None, inputs: _Inputs
) -> dict:
    """Pass 3 over one split: write its items and gold labels, report its problems; return its counts."""
    writer = SplitWriter(preparer.out_dir, split)
    annotations, with_evidence, labels = 0, 0, Counter()
    file = inputs.annotation_files[split]
    for index, annotation in tqdm(_annotations(file, preparer.settings.limit), desc=f"prepare {split}", unit=" items"):
        annotations += 1
        row, problem, notes = preparer.item(split, index, annotation, scan, evidence)
        if row is None:
            preparer.record_problem(split, index, problem, dropped=True)
            continue
        for note in notes:
            preparer.record_problem(split, index, note, dropped=False)
        writer.add(row)
        labels[row["gold_label"]] += 1
        with_evidence += row.get("evidence_entities") is not None
    writer.close()
    dropped = preparer.report.counts(split, dropped=True)
    warnings = preparer.report.counts(split, dropped=False, evidence=False)
    counts = {
        "annotations": annotations,
        "items": sum(labels.values()),
        "labels": {label: labels[label] for label in (PRISTINE, FALSIFIED)},
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "with_evidence": with_evidence,
        "evidence_problems": preparer.report.counts(split, dropped=False, evidence=True),
    }
    return counts | ({"kept_with_warnings": warnings} if warnings else {})  # only when there are any


def _log_split(split: str, counts: dict, report_file: Path) -> None:
    log.info(
        "%s: %d annotations -> %d items (%s), %d with evidence",
        split,
        counts["annotations"],
        counts["items"],
        counts["labels"],
        counts["with_evidence"],
    )
    if counts["dropped"] or counts["evidence_problems"] or counts.get("kept_with_warnings"):
        log.warning(
            "%s: %d records left out %s; kept with evidence problems %s and with other warnings %s; each is listed "
            "in %s",
            split,
            counts["dropped"],
            counts["dropped_by_reason"],
            counts["evidence_problems"],
            counts.get("kept_with_warnings", {}),
            report_file,
        )
