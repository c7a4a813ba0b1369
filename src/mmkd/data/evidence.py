"""CCN web evidence for NewsCLIPpings items (Abdelnabi et al., CVPR 2022, "Open-Domain, Content-based, Multi-modal
Fact-checking of Out-of-Context Images via Online Resources"; the evidence is shared on request by its authors).

The layout accepted (that of the CCN release, ``queries_dataset/<subset>/``), relative to the evidence folder:

- ``dataset_items_<split>.json``: ``{"<index>": {"inv_path": ..., "direct_path": ...}, ...}``, where ``<index>`` is
  the position of the item in the NewsCLIPpings ``<split>.json`` annotation list and ``inv_path`` is a folder
  relative to the evidence folder. An index missing from this file has no evidence (the item was never searched).
- ``<inv_path>/inverse_annotation.json``: the reverse image search of the item's image, a JSON object with
  ``entities`` (list of str, web entities of the image, best first), ``best_guess_lbl`` (list of str), and pages
  that show the image: ``all_fully_matched_captions`` and ``all_partially_matched_captions`` (lists of
  ``{"page_link", "image_link", "title"?, "caption"?}``, where ``caption`` maps a source in the page to a caption
  text), ``fully_matched_no_text`` and ``partially_matched_no_text`` (the same, without ``caption``). Every key is
  optional. A folder without this file means the search found nothing (CCN writes no file then); a missing
  folder, a malformed file or an ``inv_path`` leaving the evidence folder is reported, and the item kept without
  evidence.

Only the inverse search (text about the image) is used; ``direct_path`` (images found for the caption) is not.
From it an item gets ``evidence_entities``: ``entities`` then ``best_guess_lbl``; and ``evidence_captions``: the
captions of the matched pages (fully matched first), then the pages' titles. Both are cleaned (HTML entities and
``<b>`` tags removed, then the rule of ``mmkd.data.text``: control and bidirectional characters out, lone surrogates
replaced, NFC, white space collapsed), deduplicated case-insensitively, cut to ``max_chars`` and capped in number,
since they go into every prompt. An item whose evidence lost characters to that rule is reported
(``evidence_cleaned``) and kept.

Paths are resolved on real paths (``mmkd.data.raw_paths``): an ``inv_path`` or file that is, or lies below, a
symbolic link leading out of the evidence folder is reported like ``../../etc``. An ``inverse_annotation.json``
larger than ``max_file_bytes`` or nested too deeply for ``json`` is reported as unreadable.

The index file must be a JSON object whose keys are annotation indices: another shape (a list) is an error, and so
is a key beyond the split's annotation list, which means the evidence is that of another subset
(``check_indices``).
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import ijson

from mmkd.data import PrepareInputError, Problem
from mmkd.data.json_stream import stream_entries, top_level_type
from mmkd.data.raw_paths import PATH_OUTSIDE_ROOT, Root, open_regular
from mmkd.data.text import clean_text as clean_unicode
from mmkd.data.text import cut
from mmkd.items import error_text

EVIDENCE_UNREADABLE = "evidence_unreadable"
EVIDENCE_PATH_OUTSIDE_ROOT = "evidence_path_outside_root"
EVIDENCE_CLEANED = "evidence_cleaned"
INVERSE_FILE = "inverse_annotation.json"

_CAPTION_PAGES = ("all_fully_matched_captions", "all_partially_matched_captions")
_TITLE_ONLY_PAGES = ("fully_matched_no_text", "partially_matched_no_text")
_TAGS = re.compile(r"</?b>", re.IGNORECASE)


@dataclass(frozen=True)
class EvidenceLimits:
    """How much evidence goes into an item (and so into each prompt), and how large a file may be read."""

    max_entities: int = 10
    max_captions: int = 5
    max_chars: int = 300  # per entity or caption
    max_file_bytes: int = 10 * 2**20  # per inverse_annotation.json (CCN's are a few KiB)

    def __post_init__(self) -> None:
        if min(self.max_entities, self.max_captions, self.max_chars, self.max_file_bytes) < 1:
            raise ValueError(f"evidence_limits must all be positive, got {self}")


@dataclass(frozen=True)
class Evidence:
    """One item's evidence; both lists may be empty (searched, nothing found)."""

    entities: list[str]
    captions: list[str]
    cleaned: dict[str, int] = field(default_factory=dict)  # what the text rule removed, e.g. {"1 control ...": 2}


def clean_text(text: str, max_chars: int, changes: Counter | None = None) -> str:
    """HTML entities and bold tags out, the ``mmkd.data.text`` rule, cut to ``max_chars`` (with an ellipsis).

    What the rule removed is counted in ``changes`` when given."""
    cleaned = clean_unicode(_TAGS.sub("", html.unescape(text)))
    if changes is not None:
        changes.update(cleaned.changes)
    return cut(cleaned.text, max_chars)


def distinct_texts(texts: Iterable[object], limit: int, max_chars: int, changes: Counter) -> list[str]:
    """Up to ``limit`` distinct, cleaned texts, each cut to ``max_chars``; what was dropped or cut is counted."""
    out, seen = [], set()
    for text in texts:
        if not isinstance(text, str):
            continue
        cleaned = clean_text(text, max_chars, changes)
        if cleaned and cleaned.casefold() not in seen:
            seen.add(cleaned.casefold())
            out.append(cleaned)
            if len(out) == limit:
                break
    return out


def _list(annotation: dict, key: str) -> list:
    value = annotation.get(key)
    return value if isinstance(value, list) else []


def _page_captions(page: dict) -> list[object]:
    caption = page.get("caption")
    if isinstance(caption, dict):
        return list(caption.values())
    if isinstance(caption, list):
        return caption
    return [caption]


def evidence_from_annotation(annotation: dict, limits: EvidenceLimits) -> Evidence:
    """The entities and captions of one ``inverse_annotation.json`` object."""
    entities = _list(annotation, "entities") + _list(annotation, "best_guess_lbl")
    pages = [p for key in _CAPTION_PAGES for p in _list(annotation, key) if isinstance(p, dict)]
    titled = pages + [p for key in _TITLE_ONLY_PAGES for p in _list(annotation, key) if isinstance(p, dict)]
    texts = [c for page in pages for c in _page_captions(page)] + [page.get("title") for page in titled]
    changes: Counter = Counter()
    return Evidence(
        entities=distinct_texts(entities, limits.max_entities, limits.max_chars, changes),
        captions=distinct_texts(texts, limits.max_captions, limits.max_chars, changes),
        cleaned=dict(changes),
    )


class EvidenceReader:
    """Evidence of one split: ``read(index)`` -> ``(Evidence or None, Problem or None)``.

    None evidence means the item has none (never searched, or its evidence is unusable: the problem says why and
    the item is kept without evidence). Evidence with a problem was cleaned (``evidence_cleaned``)."""

    def __init__(self, root: Root, split: str, limits: EvidenceLimits):
        self.root, self.limits = root, limits
        self.index_file = index_file = root.path / f"dataset_items_{split}.json"
        found = root.resolve(index_file.name)
        if isinstance(found, Problem):
            raise PrepareInputError(
                f"{found.detail}: the evidence folder must hold dataset_items_<split>.json for every split (the CCN "
                "layout, see mmkd.data.evidence); fix data.prepare.<name>.evidence or set it to null"
            )
        expected = '{"<index>": {"inv_path": ..., "direct_path": ...}, ...}'
        self.inv_paths: dict[int, object] = {}
        try:
            with open_regular(found) as f:
                shape = top_level_type(f)
            if shape != "object":
                raise PrepareInputError(
                    f"{index_file} is a JSON {shape}, not an object, so no item could get evidence; expected "
                    f"{expected} as in the CCN release: re-download it, or set data.prepare.<name>.evidence to null"
                )
            with open_regular(found) as f:
                for key, entry in stream_entries(f):
                    if not key.isdecimal():
                        raise ValueError(f"key {key!r} is not an annotation index")
                    inv_path = entry.get("inv_path") if isinstance(entry, dict) else None
                    self.inv_paths[int(key)] = inv_path
        except (ijson.JSONError, ValueError, TypeError, OSError) as exc:
            if isinstance(exc, PrepareInputError):
                raise
            raise PrepareInputError(
                f"{index_file} is not a CCN dataset_items file ({error_text(exc)}); expected {expected}"
            ) from exc

    def check_indices(self, annotations: int, annotation_file: Path, subset: str) -> None:
        """Refuse an index with entries beyond the split's ``annotations``: it belongs to another subset (evidence
        is matched by position, so items would silently get another subset's evidence)."""
        beyond = sorted(i for i in self.inv_paths if i >= annotations)
        if beyond:
            raise PrepareInputError(
                f"{self.index_file} has evidence for {len(beyond)} annotation indices beyond the {annotations} "
                f"annotations of {annotation_file} (e.g. {beyond[:3]}): it is not the evidence of subset {subset!r}. "
                f"Evidence is matched by position, so data.prepare.<name>.evidence must be the CCN folder of the "
                f"same subset as data.prepare.<name>.subset (queries_dataset/{subset}), or null"
            )

    def read(self, index: int) -> tuple[Evidence | None, Problem | None]:
        if index not in self.inv_paths:
            return None, None
        inv_path = self.inv_paths[index]
        if not isinstance(inv_path, str):
            return None, Problem(
                EVIDENCE_UNREADABLE,
                f"dataset_items entry {index} has no inv_path string ({inv_path!r:.100})",
                "fix the entry in dataset_items_<split>.json; the item is kept without evidence",
                path=str(self.index_file),
            )
        folder = self.root.resolve(inv_path, folder=True)
        if isinstance(folder, Problem):
            return None, self._problem(folder, f"evidence folder (dataset_items entry {index})", inv_path)
        file = self.root.resolve(f"{folder.relative}/{INVERSE_FILE}")
        if isinstance(file, Problem):
            written = self.root.real / folder.relative / INVERSE_FILE
            if not written.is_symlink() and not written.exists():
                return Evidence([], []), None  # searched, nothing found: CCN writes no file
            return None, self._problem(file, INVERSE_FILE, inv_path)
        shown = str(self.root.path / file.relative)
        if file.stat.st_size > self.limits.max_file_bytes:
            return None, Problem(
                EVIDENCE_UNREADABLE,
                f"{shown} is {file.stat.st_size} bytes (limit {self.limits.max_file_bytes}, "
                "evidence_limits.max_file_bytes)",
                "check the file; the item is kept without evidence",
                path=shown,
            )
        try:
            with open_regular(file) as f:
                annotation = json.loads(f.read())
            if not isinstance(annotation, dict):
                raise ValueError(f"expected a JSON object, got {type(annotation).__name__}")
            evidence = evidence_from_annotation(annotation, self.limits)
        except (ValueError, TypeError, AttributeError, RecursionError, OSError) as exc:
            what = "it nests too deeply" if isinstance(exc, RecursionError) else error_text(exc)
            return None, Problem(
                EVIDENCE_UNREADABLE,
                f"{shown} is not a readable inverse_annotation.json ({what})",
                "re-download the evidence file; the item is kept without evidence",
                path=shown,
            )
        if evidence.cleaned:
            changes = ", ".join(f"{what} (in {n} texts)" for what, n in evidence.cleaned.items())
            return evidence, Problem(
                EVIDENCE_CLEANED,
                f"evidence text of {shown} was cleaned: {changes}",
                "nothing to do unless the evidence file is corrupt; the item is kept with the cleaned evidence",
                path=shown,
            )
        return evidence, None

    @staticmethod
    def _problem(problem: Problem, what: str, inv_path: str) -> Problem:
        """A path problem as an evidence problem: outside the folder, or unreadable (the detail says how)."""
        if problem.reason == PATH_OUTSIDE_ROOT:
            return Problem(EVIDENCE_PATH_OUTSIDE_ROOT, problem.detail, problem.fix, path=inv_path)
        return Problem(
            EVIDENCE_UNREADABLE,
            f"{what}: {problem.detail}",
            "complete or repair the evidence download; the item is kept without evidence",
            path=problem.path or inv_path,
        )
