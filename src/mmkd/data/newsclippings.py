"""Prepare NewsCLIPpings (Luo et al., EMNLP 2021) as mmkd items: one item per annotation, images from VisualNews.

Inputs, all under one raw-data folder (the ``prepare`` stage's dependency), read by
``mmkd.data.newsclippings_inputs``; this module makes the items of them:

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
from pathlib import Path

from tqdm.auto import tqdm

from mmkd.data import PrepareInputError, Problem
from mmkd.data.evidence import EvidenceReader
from mmkd.data.newsclippings_inputs import (
    SUBSETS,
    Inputs,
    NewsClippingsSettings,
    SplitScan,
    VisualNewsRecord,
    annotation_ids,
    check_inputs,
    read_annotations,
    scan_split,
    visualnews_records,
)
from mmkd.data.records import IMAGES_DIR, REPORT_FILE, ImageLinker, LinkedImage, Report, SplitWriter, short_repr
from mmkd.data.staging import check_apart, staged_folder
from mmkd.schema import FALSIFIED, PRISTINE

__all__ = ["REPORT_FILE", "SUBSETS", "NewsClippingsSettings", "prepare_newsclippings"]  # what callers import here

log = logging.getLogger(__name__)

# Reasons of this module (those of captions, images and paths are in mmkd.data.records, mmkd.data.images and
# mmkd.data.raw_paths).
BAD_ANNOTATION = "bad_annotation"
DUPLICATE_ANNOTATION = "duplicate_annotation"
SPLIT_OVERLAP = "split_overlap"
UNKNOWN_CAPTION_ID = "unknown_caption_id"
UNKNOWN_IMAGE_ID = "unknown_image_id"
BAD_VISUALNEWS_RECORD = "bad_visualnews_record"
DUPLICATE_VISUALNEWS_ID = "duplicate_visualnews_id"


class _Preparer:
    """One run: the VisualNews records in use, the images checked so far, the report file and the counts."""

    def __init__(self, settings: NewsClippingsSettings, inputs: Inputs, out_dir: Path, records, duplicates, report):
        self.settings, self.out_dir, self.report = settings, out_dir, report
        self.records: dict[int, VisualNewsRecord] = records
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
        self, split: str, index: int, annotation: object, scan: SplitScan, evidence: EvidenceReader | None
    ) -> tuple[dict | None, Problem | None, list[Problem]]:
        """``(row, None, notes)`` for a kept item (notes: what was changed or is worth knowing), or ``(None, the
        problem that leaves it out, [])``."""
        ids = annotation_ids(annotation)
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


def prepare_newsclippings(settings: NewsClippingsSettings, out_dir: str | Path) -> dict:
    """Write the items, gold labels, images and report of every split to ``out_dir``; return the counts.

    Every input is checked, and ``out_dir`` against them, before anything is written; the output is built beside
    ``out_dir`` and replaces it only when every split has items. The summary, per split: ``annotations`` read,
    ``items`` written, ``labels`` counts, ``dropped`` (total and by reason), ``with_evidence`` (items that got
    evidence), ``evidence_problems`` by reason, and ``kept_with_warnings`` by reason (items kept with another
    reported change or warning: a cut caption, a duplicate VisualNews id, ...; present only when there are any)."""
    out_dir = Path(out_dir)
    inputs = check_inputs(settings)
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
    scans = {split: scan_split(settings, split, inputs.annotation_files[split], wanted) for split in settings.splits}
    for split, reader in evidence.items():
        if reader is not None:
            reader.check_indices(scans[split].total, settings.annotation_file(split), settings.subset)
    log.info("the annotations use %d distinct VisualNews ids; reading their records", len(wanted))
    records, duplicates = visualnews_records(inputs.visualnews, wanted, settings.max_caption_chars)
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
    preparer: _Preparer, split: str, scan: SplitScan, evidence: EvidenceReader | None, inputs: Inputs
) -> dict:
    """Pass 3 over one split: write its items and gold labels, report its problems; return its counts."""
    writer = SplitWriter(preparer.out_dir, split)
    annotations, with_evidence, labels = 0, 0, Counter()
    file = inputs.annotation_files[split]
    for index, annotation in tqdm(
        read_annotations(file, preparer.settings.limit), desc=f"prepare {split}", unit=" items"
    ):
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
