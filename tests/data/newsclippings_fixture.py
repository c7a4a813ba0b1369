"""A NewsCLIPpings-format raw-data folder built by the tests: annotations, VisualNews records and images, CCN
evidence, with known bad records (see ``TRAIN`` for what each annotation is). Imported by the tests in this folder
(pytest puts it on sys.path) and by its conftest, which turns ``build_raw`` into the ``raw_data`` fixture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmkd.schema import FALSIFIED, PRISTINE

SUBSET = "merged_balanced"

# VisualNews records: id -> (caption, image_path relative to the image root, what the image file is)
RECORDS: dict[int, tuple[str | None, str, str]] = {
    1: ("Flood waters rise in Dhaka after monsoon rains.", "./bbc/images/0001/1.jpg", "jpeg"),
    2: ("The prime minister greets supporters in Delhi.", "./bbc/images/0001/2.jpg", "jpeg"),
    3: ("Fans celebrate the cup final in Madrid.", "./guardian/images/0002/3.png", "png"),
    4: ("Wildfire smoke covers Sydney harbour.", "./guardian/images/0002/4.jpg", "jpeg"),
    5: ("A crowd gathers outside the court.", "./usa_today/images/0003/5.jpg", "absent"),
    6: ("Protesters march through Paris.", "../../etc/passwd", "jpeg"),
    7: ("A new bridge opens in Oslo.", "./washington_post/images/0004/7.jpg", "garbage"),
    8: ("An aerial view of the stadium.", "./washington_post/images/0004/8.jpg", "large"),
    9: ("Snow closes schools in Boston.", "./bbc/images/0005/9.jpg", "truncated"),
    10: ("   ", "./bbc/images/0005/10.jpg", "jpeg"),
    11: ("Miners return to work in Chile.", "./bbc/images/0006/11.jpg", "jpeg"),
    12: ("Rescue teams search the rubble in Izmir.", "./bbc/images/0006/12.jpg", "jpeg"),
    13: ("The central bank raises rates again.", "./guardian/images/0007/13.jpg", "jpeg"),
    14: ("Voters queue at a polling station in Lagos.", "./guardian/images/0007/14.jpg", "jpeg"),
}
MAX_PIXELS = 40 * 30  # the "large" image is 41x30


def annotation(caption_id, image_id, falsified, score=0.5) -> dict:
    return {
        "id": caption_id,
        "image_id": image_id,
        "similarity_score": score,
        "falsified": falsified,
        "source_dataset": 0,
    }


# (annotation, what it tests) in file order; the index in this list is the annotation's index in train.json.
TRAIN: list[tuple[object, str]] = [
    (annotation(1, 1, False, 1.0), "ok: pristine twin of image 1"),
    (annotation(2, 1, True, 0.81), "ok: falsified twin of image 1 (caption of record 2)"),
    (annotation(3, 3, False, 1.0), "ok: pristine twin of image 3"),
    (annotation(4, 3, True, 0.77), "ok: falsified twin of image 3"),
    (annotation(5, 5, False), "missing_image"),
    (annotation(999, 1, True), "unknown_caption_id"),
    (annotation(1, 998, True), "unknown_image_id"),
    (annotation(6, 6, False), "path_outside_root"),
    (annotation(7, 7, False), "unreadable_image"),
    (annotation(8, 8, False), "oversized_image"),
    (annotation(9, 9, False), "unreadable_image (truncated JPEG)"),
    (annotation(10, 1, True), "empty_caption"),
    ({"id": "11", "image_id": 11, "falsified": False}, "bad_annotation (id is a string)"),
    (annotation(2, 6, True), "path_outside_root again (image 6 is checked once, reported per item)"),
]
VAL = [annotation(11, 11, False, 1.0), annotation(12, 11, True, 0.7)]
TEST = [annotation(13, 13, False, 1.0), annotation(14, 13, True, 0.66), annotation(5, 5, True)]

INVERSE_ANNOTATION = {
    "entities": ["Flood", "Dhaka", "Monsoon", "flood"],
    "entities_scores": [0.9, 0.8, 0.7, 0.6],
    "best_guess_lbl": ["flooding in bangladesh"],
    "all_fully_matched_captions": [
        {
            "page_link": "https://news.example/a",
            "image_link": "https://news.example/a.jpg",
            "title": "Floods in &#39;Dhaka&#39; | News",
            "caption": {"figcaption": "People wade through <b>flood</b>\n water in Dhaka.", "alt": "Flooded street"},
        }
    ],
    "all_partially_matched_captions": [
        {
            "page_link": "https://blog.example/b",
            "image_link": "https://blog.example/b.jpg",
            "caption": {"alt_node": "people wade through flood water in dhaka."},
        }
    ],
    "fully_matched_no_text": [{"page_link": "https://x.example", "image_link": "x", "title": "Monsoon season"}],
    "partially_matched_no_text": [],
}
# What prepare makes of INVERSE_ANNOTATION (cleaned, deduplicated case-insensitively, captions before titles).
EXPECTED_ENTITIES = ["Flood", "Dhaka", "Monsoon", "flooding in bangladesh"]
EXPECTED_CAPTIONS = [
    "People wade through flood water in Dhaka.",
    "Flooded street",
    "Floods in 'Dhaka' | News",
    "Monsoon season",
]


# What prepare reports on this folder, in order: (split, item id, reason, dropped, path). VAL0/VAL404 stand for the
# absolute paths of two evidence files (they depend on where the folder is).
EXPECTED_REPORT = [
    ("train", "train-000003", "evidence_path_outside_root", False, "../../../etc"),
    ("train", "train-000004", "missing_image", True, "./usa_today/images/0003/5.jpg"),
    ("train", "train-000005", "unknown_caption_id", True, None),
    ("train", "train-000006", "unknown_image_id", True, None),
    ("train", "train-000007", "path_outside_root", True, "../../etc/passwd"),
    ("train", "train-000008", "unreadable_image", True, "./washington_post/images/0004/7.jpg"),
    ("train", "train-000009", "oversized_image", True, "./washington_post/images/0004/8.jpg"),
    ("train", "train-000010", "unreadable_image", True, "./bbc/images/0005/9.jpg"),
    ("train", "train-000011", "empty_caption", True, None),
    ("train", "train-000012", "bad_annotation", True, None),
    ("train", "train-000013", "path_outside_root", True, "../../etc/passwd"),
    ("val", "val-000000", "evidence_unreadable", False, "VAL0"),
    ("val", "val-000001", "evidence_unreadable", False, "VAL404"),
    ("test", "test-000002", "missing_image", True, "./usa_today/images/0003/5.jpg"),
]

EXPECTED_SUMMARY = {
    "subset": "merged_balanced",
    "evidence": True,
    "splits": {
        "train": {
            "annotations": 14,
            "items": 4,
            "labels": {PRISTINE: 2, FALSIFIED: 2},
            "dropped": 10,
            "dropped_by_reason": {
                "bad_annotation": 1,
                "empty_caption": 1,
                "missing_image": 1,
                "oversized_image": 1,
                "path_outside_root": 2,
                "unknown_caption_id": 1,
                "unknown_image_id": 1,
                "unreadable_image": 2,
            },
            "with_evidence": 2,
            "evidence_problems": {"evidence_path_outside_root": 1},
        },
        "val": {
            "annotations": 2,
            "items": 2,
            "labels": {PRISTINE: 1, FALSIFIED: 1},
            "dropped": 0,
            "dropped_by_reason": {},
            "with_evidence": 0,
            "evidence_problems": {"evidence_unreadable": 2},
        },
        "test": {
            "annotations": 3,
            "items": 2,
            "labels": {PRISTINE: 1, FALSIFIED: 1},
            "dropped": 1,
            "dropped_by_reason": {"missing_image": 1},
            "with_evidence": 0,
            "evidence_problems": {},
        },
    },
    "images": {"distinct_used": 4, "hardlink": 4},
}


def write_image(path: Path, kind: str, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jpeg":
        Image.new("RGB", (32, 24), colour).save(path, format="JPEG")
    elif kind == "png":
        Image.new("RGB", (32, 24), colour).save(path, format="PNG")
    elif kind == "large":
        Image.new("RGB", (41, 30), colour).save(path, format="JPEG")
    elif kind == "garbage":
        path.write_bytes(b"this is not an image")
    elif kind == "truncated":  # a valid header, then the scan data stops: only a full decode notices
        noise = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, format="JPEG", quality=95)
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


@dataclass(frozen=True)
class RawData:
    """Where the builder put things (``raw`` is the folder the settings point at)."""

    raw: Path
    image_root: Path


def build_raw(raw: Path, subset: str = SUBSET, evidence: bool = True) -> RawData:
    """Write the raw folder: NewsCLIPpings annotations, VisualNews data.json + images, CCN evidence."""
    annotations = raw / "news_clippings/data" / subset
    annotations.mkdir(parents=True)
    for split, rows in (("train", [a for a, _ in TRAIN]), ("val", VAL), ("test", TEST)):
        (annotations / f"{split}.json").write_text(json.dumps({"annotations": rows}))

    image_root = raw / "visual_news/origin"
    image_root.mkdir(parents=True)
    records = [
        {"id": i, "caption": c, "topic": "world", "source": "bbc", "image_path": p, "article_path": f"./a/{i}.txt"}
        for i, (c, p, _) in RECORDS.items()
    ]
    records.append({"id": 500, "caption": "A record nobody uses.", "image_path": "./bbc/images/x.jpg"})
    (image_root / "data.json").write_text(json.dumps(records))
    for i, (_, p, kind) in RECORDS.items():
        if kind != "absent" and not p.startswith(".."):
            write_image(image_root / p, kind, (i * 17 % 256, i * 31 % 256, i * 47 % 256))
    (raw / "etc").mkdir()  # what the traversal path would reach, were it followed
    (raw / "etc/passwd").write_text("root:x:0:0")

    if evidence:
        root = raw / "queries_dataset" / subset
        items = {
            "0": {"inv_path": "inverse_search/train/0", "direct_path": "direct_search/train/0"},
            "1": {"inv_path": "inverse_search/train/1", "direct_path": "direct_search/train/0"},
            # 2 is absent: never searched
            "3": {"inv_path": "../../../etc", "direct_path": "direct_search/train/2"},
        }
        (root / "inverse_search/train/0").mkdir(parents=True)
        (root / "inverse_search/train/0/inverse_annotation.json").write_text(json.dumps(INVERSE_ANNOTATION))
        (root / "inverse_search/train/1").mkdir(parents=True)  # searched, nothing found: no file
        (root / "dataset_items_train.json").write_text(json.dumps(items))
        (root / "inverse_search/val/0").mkdir(parents=True)
        (root / "inverse_search/val/0/inverse_annotation.json").write_text('{"entities": ["Chile"')  # cut short
        val_items = {"0": {"inv_path": "inverse_search/val/0"}, "1": {"inv_path": "inverse_search/val/404"}}
        (root / "dataset_items_val.json").write_text(json.dumps(val_items))
        (root / "dataset_items_test.json").write_text("{}")
    return RawData(raw, image_root)


# --- Changing a built folder, for the hostile-input tests (tests/data/test_hostile_inputs.py) ---

# The items every run on the unchanged fixture keeps: item id -> (caption, gold label). A hostile record added to
# the folder must leave all of them as they are.
BASE_ITEMS: dict[str, tuple[str, str]] = {
    "train-000000": (RECORDS[1][0], PRISTINE),
    "train-000001": (RECORDS[2][0], FALSIFIED),
    "train-000002": (RECORDS[3][0], PRISTINE),
    "train-000003": (RECORDS[4][0], FALSIFIED),
    "val-000000": (RECORDS[11][0], PRISTINE),
    "val-000001": (RECORDS[12][0], FALSIFIED),
    "test-000000": (RECORDS[13][0], PRISTINE),
    "test-000001": (RECORDS[14][0], FALSIFIED),
}
SPLIT_SIZES = {"train": len(TRAIN), "val": len(VAL), "test": len(TEST)}  # the next annotation's index per split


def annotation_file(raw: Path, split: str, subset: str = SUBSET) -> Path:
    return raw / "news_clippings/data" / subset / f"{split}.json"


def add_annotations(raw: Path, split: str, rows: list[object], subset: str = SUBSET) -> list[str]:
    """Append annotations to a split's file; return the item ids they will have."""
    path = annotation_file(raw, split, subset)
    annotations = json.loads(path.read_text())["annotations"]
    start = len(annotations)
    path.write_text(json.dumps({"annotations": annotations + rows}))
    return [f"{split}-{i:06d}" for i in range(start, start + len(rows))]


def add_records(raw: Path, records: list[dict], text: str | None = None) -> None:
    """Append VisualNews records to data.json (``text``: raw JSON text of more records, e.g. with escapes)."""
    path = raw / "visual_news/origin/data.json"
    body = path.read_text().rstrip()
    assert body.endswith("]")
    extra = [json.dumps(r) for r in records] + ([text] if text else [])
    path.write_text(body[:-1] + "".join(", " + e for e in extra) + "]")


def record(record_id: int, caption: object, image_path: object) -> dict:
    return {"id": record_id, "caption": caption, "image_path": image_path}


def add_evidence(raw: Path, split: str, index: int, inv_path: str, subset: str = SUBSET) -> None:
    """Add an entry to a split's CCN dataset_items index."""
    path = raw / "queries_dataset" / subset / f"dataset_items_{split}.json"
    items = json.loads(path.read_text())
    items[str(index)] = {"inv_path": inv_path}
    path.write_text(json.dumps(items))
