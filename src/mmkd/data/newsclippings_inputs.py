"""Reading NewsCLIPpings' raw files for ``mmkd.data.newsclippings``: the settings, the check of each whole input, the
annotation files (streamed twice: a scan for counts, pairs and duplicates, then the items) and the VisualNews records
the annotations use.

Every input is resolved inside ``raw`` (``mmkd.data.raw_paths``) and streamed depth-bounded
(``mmkd.data.json_stream``); a missing or malformed input as a whole is a PrepareInputError naming the file and the
fix. What one annotation or record makes of an item is decided in ``mmkd.data.newsclippings``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import ijson
from tqdm.auto import tqdm

from mmkd.data import PrepareInputError
from mmkd.data.evidence import EvidenceLimits
from mmkd.data.json_stream import stream_items
from mmkd.data.raw_paths import Resolved, Root, open_regular
from mmkd.data.records import Caption, PrepareSettings, check_caption, check_split_name, short_repr

SUBSETS: tuple[str, ...] = (
    "merged_balanced",
    "person_sbert_text_text",
    "scene_resnet_place",
    "semantics_clip_text_image",
    "semantics_clip_text_text",
)


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
class Inputs:
    """The raw inputs, each checked and resolved inside ``raw`` (see ``check_inputs``)."""

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


def check_inputs(settings: NewsClippingsSettings) -> Inputs:
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
    return Inputs(
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
        raise PrepareInputError(f"{file.shown} is not valid JSON ({exc}); re-download it") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def annotation_ids(annotation: object) -> tuple[int, int, bool] | str:
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
class SplitScan:
    """Pass 1 over one split's annotation file: counts, the pairs used and the duplicates."""

    total: int = 0  # annotations in the file (all of them, for the evidence index check)
    read: int = 0  # annotations within `limit`
    bad: int = 0
    first_bad: str | None = None
    pairs: dict[tuple[int, int], tuple[int, bool]] = field(default_factory=dict)  # (id, image_id) -> first's
    # (index, falsified)
    duplicates: dict[int, tuple[int, bool]] = field(default_factory=dict)  # index -> (the first's index, same label)


def scan_split(settings: NewsClippingsSettings, split: str, file: Resolved, wanted: set[int]) -> SplitScan:
    """Pass 1 over one split's annotations: count them, add the VisualNews ids they use to ``wanted``, find the
    duplicates; a file with no annotations, or only malformed ones, is a PrepareInputError."""
    scan = SplitScan()
    for index, annotation in enumerate(_stream(file, "annotations.item")):
        scan.total += 1
        if settings.limit is not None and index >= settings.limit:
            continue
        scan.read += 1
        ids = annotation_ids(annotation)
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
            f'{file.shown} has no annotations; expected {{"annotations": [...]}} as in the NewsCLIPpings release'
        )
    if scan.bad == scan.read:
        raise PrepareInputError(
            f"all {scan.read} annotations read from {settings.annotation_file(split)} are malformed (e.g. "
            f"{scan.first_bad}); expected {{id: int, image_id: int, falsified: true/false, ...}} as in the "
            "NewsCLIPpings release: re-download the file, or fix its export"
        )
    return scan


@dataclass(frozen=True)
class VisualNewsRecord:
    """What an item needs of one VisualNews record: the checked caption and the image path."""

    caption: Caption
    image_path: object


def _record(record_id: int, record: dict, max_chars: int) -> VisualNewsRecord:
    caption = check_caption(record.get("caption"), f"VisualNews record {record_id}", "data.json", max_chars)
    return VisualNewsRecord(caption, record.get("image_path"))


def visualnews_records(
    file: Resolved, wanted: set[int], max_chars: int
) -> tuple[dict[int, VisualNewsRecord], dict[int, tuple[int, bool]]]:
    """VisualNews id -> record for the wanted ids only, streaming data.json once; and id -> (number of records,
    whether they differ) for wanted ids that data.json holds more than once (the first record is used)."""
    records: dict[int, VisualNewsRecord] = {}
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


def read_annotations(file: Resolved, limit: int | None) -> Iterator[tuple[int, object]]:
    """``(index, annotation)`` for the split's annotations, in file order, up to ``limit``."""
    for index, annotation in enumerate(_stream(file, "annotations.item")):
        if limit is not None and index >= limit:
            return
        yield index, annotation
