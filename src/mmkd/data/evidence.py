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
``<b>`` tags removed, white space collapsed), deduplicated case-insensitively, cut to ``max_chars`` and capped in
number, since they go into every prompt.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ijson

from mmkd.data import PrepareInputError
from mmkd.data.images import Problem, relative_inside

EVIDENCE_UNREADABLE = "evidence_unreadable"
EVIDENCE_PATH_OUTSIDE_ROOT = "evidence_path_outside_root"

_CAPTION_PAGES = ("all_fully_matched_captions", "all_partially_matched_captions")
_TITLE_ONLY_PAGES = ("fully_matched_no_text", "partially_matched_no_text")
_TAGS = re.compile(r"</?b>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class EvidenceLimits:
    """How much evidence goes into an item (and so into each prompt)."""

    max_entities: int = 10
    max_captions: int = 5
    max_chars: int = 300  # per entity or caption


@dataclass(frozen=True)
class Evidence:
    """One item's evidence; both lists may be empty (searched, nothing found)."""

    entities: list[str]
    captions: list[str]


def clean_text(text: str, max_chars: int) -> str:
    """HTML entities and bold tags out, white space collapsed, cut to ``max_chars`` (with an ellipsis)."""
    text = _SPACE.sub(" ", _TAGS.sub("", html.unescape(text))).strip()
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _distinct(texts: Iterable[object], limit: int, max_chars: int) -> list[str]:
    out, seen = [], set()
    for text in texts:
        if not isinstance(text, str):
            continue
        cleaned = clean_text(text, max_chars)
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
    return Evidence(
        entities=_distinct(entities, limits.max_entities, limits.max_chars),
        captions=_distinct(texts, limits.max_captions, limits.max_chars),
    )


class EvidenceReader:
    """Evidence of one split: ``read(index)`` -> ``(Evidence or None, Problem or None)``.

    None evidence means the item has none (never searched, or its evidence is unusable: the problem says why and
    the item is kept without evidence)."""

    def __init__(self, root: Path, split: str, limits: EvidenceLimits):
        self.root, self.limits = root, limits
        self.index_file = index_file = root / f"dataset_items_{split}.json"
        if not index_file.is_file():
            raise PrepareInputError(
                f"{index_file} does not exist: the evidence folder must hold dataset_items_<split>.json for every "
                "split (the CCN layout, see mmkd.data.evidence); fix data.prepare.<name>.evidence or set it to null"
            )
        self.inv_paths: dict[int, object] = {}
        try:
            with open(index_file, "rb") as f:
                for key, entry in ijson.kvitems(f, ""):
                    inv_path = entry.get("inv_path") if isinstance(entry, dict) else None
                    self.inv_paths[int(key)] = inv_path
        except (ijson.JSONError, ValueError, TypeError) as exc:
            raise PrepareInputError(
                f"{index_file} is not a CCN dataset_items file ({exc}); expected "
                '{"<index>": {"inv_path": ..., "direct_path": ...}, ...}'
            ) from exc

    def read(self, index: int) -> tuple[Evidence | None, Problem | None]:
        if index not in self.inv_paths:
            return None, None
        inv_path = self.inv_paths[index]
        if not isinstance(inv_path, str):
            return None, Problem(
                EVIDENCE_UNREADABLE,
                f"dataset_items entry {index} has no inv_path string ({inv_path!r})",
                "fix the entry in dataset_items_<split>.json; the item is kept without evidence",
                path=str(self.index_file),
            )
        relative, problem = relative_inside("evidence folder", inv_path)
        if problem is not None:
            return None, Problem(EVIDENCE_PATH_OUTSIDE_ROOT, problem.detail, problem.fix, path=inv_path)
        folder = self.root / relative
        if not folder.is_dir():
            return None, Problem(
                EVIDENCE_UNREADABLE,
                f"evidence folder {folder} (dataset_items entry {index}) does not exist",
                "complete the evidence download; the item is kept without evidence",
                path=str(folder),
            )
        file = folder / "inverse_annotation.json"
        if not file.is_file():
            return Evidence([], []), None  # searched, nothing found
        try:
            annotation = json.loads(file.read_bytes())
            if not isinstance(annotation, dict):
                raise ValueError(f"expected a JSON object, got {type(annotation).__name__}")
            return evidence_from_annotation(annotation, self.limits), None
        except (ValueError, TypeError, AttributeError) as exc:
            return None, Problem(
                EVIDENCE_UNREADABLE,
                f"{file} is not a readable inverse_annotation.json ({exc})",
                "re-download the evidence file; the item is kept without evidence",
                path=str(file),
            )
