"""Ingestion of a NewsCLIPpings-format fixture (tests/data/conftest.py): exact items, gold labels, counts and
report, for pristine/falsified twins and every kind of bad record; the evidence; fatal inputs; all five subsets."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest
from newsclippings_fixture import (
    EXPECTED_CAPTIONS,
    EXPECTED_ENTITIES,
    EXPECTED_REPORT,
    EXPECTED_SUMMARY,
    MAX_PIXELS,
    RECORDS,
    build_raw,
)

from mmkd.data import PrepareInputError
from mmkd.data.newsclippings import REPORT_FILE, SUBSETS, NewsClippingsSettings, prepare_newsclippings
from mmkd.items import load_image
from mmkd.schema import FALSIFIED, PRISTINE, read_gold, read_items


def settings_for(raw, **kwargs) -> NewsClippingsSettings:
    fields = {
        "raw": str(raw),
        "evidence": "queries_dataset/merged_balanced",
        "max_image_pixels": MAX_PIXELS,
    }
    return NewsClippingsSettings(**(fields | kwargs))


def report_rows(out) -> list[tuple]:
    rows = [json.loads(line) for line in (out / REPORT_FILE).read_text().splitlines()]
    for row in rows:
        assert row["detail"] and row["fix"], row
        assert row["item_id"] == f"{row['split']}-{row['index']:06d}"
    return [(r["split"], r["item_id"], r["reason"], r["dropped"], r["path"]) for r in rows]


def test_prepare_exact_items_gold_counts_and_report(raw_data, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_newsclippings(settings_for(raw_data.raw), out)
    assert summary == EXPECTED_SUMMARY

    evidence = raw_data.raw / "queries_dataset/merged_balanced/inverse_search/val"
    val_paths = {"VAL0": str(evidence / "0/inverse_annotation.json"), "VAL404": str(evidence / "404")}
    expected_report = [(*row[:4], val_paths.get(row[4], row[4])) for row in EXPECTED_REPORT]
    assert report_rows(out) == expected_report

    train = read_items(out / "train.parquet")
    assert train["id"].to_list() == [f"train-{i:06d}" for i in range(4)]
    assert train["caption"].to_list() == [RECORDS[i][0] for i in (1, 2, 3, 4)]  # twins: own caption, then another
    images = [out / "images/bbc/images/0001/1.jpg"] * 2 + [out / "images/guardian/images/0002/3.png"] * 2
    assert train["image_path"].to_list() == [str(p.resolve()) for p in images]
    assert train["evidence_entities"].to_list() == [EXPECTED_ENTITIES, [], None, None]
    assert train["evidence_captions"].to_list() == [EXPECTED_CAPTIONS, [], None, None]
    gold = read_gold(out / "train.gold.parquet")
    assert gold.rows() == [
        ("train-000000", PRISTINE),
        ("train-000001", FALSIFIED),
        ("train-000002", PRISTINE),
        ("train-000003", FALSIFIED),
    ]
    assert "gold_label" not in pl.read_parquet(out / "train.parquet").columns

    for split, n in (("val", 2), ("test", 2)):
        items = read_items(out / f"{split}.parquet")
        assert items["id"].to_list() == [f"{split}-{i:06d}" for i in range(n)]
        assert len(read_gold(out / f"{split}.gold.parquet")) == n
    assert read_items(out / "test.parquet")["evidence_entities"].to_list() == [None, None]

    # Only the good images are in the output folder, each once, as a hard link of the raw file.
    written = sorted(str(p.relative_to(out / "images")) for p in (out / "images").rglob("*") if p.is_file())
    assert written == [
        "bbc/images/0001/1.jpg",
        "bbc/images/0006/11.jpg",
        "guardian/images/0002/3.png",
        "guardian/images/0007/13.jpg",
    ]
    for name in written:
        assert os.stat(out / "images" / name).st_ino == os.stat(raw_data.image_root / name).st_ino
    for path in train["image_path"]:
        assert load_image("x", path).size == (32, 24)


def test_copy_mode_and_no_evidence(raw_data, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_newsclippings(settings_for(raw_data.raw, evidence=None, link_images="copy"), out)
    assert summary["evidence"] is False and summary["images"] == {"distinct_used": 4, "copy": 4}
    assert {s: c["items"] for s, c in summary["splits"].items()} == {"train": 4, "val": 2, "test": 2}
    assert all(c["with_evidence"] == 0 and c["evidence_problems"] == {} for c in summary["splits"].values())
    train = read_items(out / "train.parquet")
    assert train["evidence_entities"].to_list() == [None] * 4
    copied, original = out / "images/bbc/images/0001/1.jpg", raw_data.image_root / "bbc/images/0001/1.jpg"
    assert copied.read_bytes() == original.read_bytes()
    assert os.stat(copied).st_ino != os.stat(original).st_ino
    assert [row[2] for row in report_rows(out)] == [r[2] for r in EXPECTED_REPORT if r[3]]


def test_limit_keeps_the_first_annotations(raw_data, tmp_path):
    summary = prepare_newsclippings(settings_for(raw_data.raw, limit=2), tmp_path / "prepared")
    assert {s: (c["annotations"], c["items"]) for s, c in summary["splits"].items()} == {
        "train": (2, 2),
        "val": (2, 2),
        "test": (2, 2),
    }


@pytest.mark.parametrize("subset", SUBSETS)
def test_every_subset_is_accepted(tmp_path, subset):
    raw = build_raw(tmp_path / "raw", subset=subset, evidence=False).raw
    summary = prepare_newsclippings(settings_for(raw, subset=subset, evidence=None), tmp_path / "prepared")
    assert summary["subset"] == subset
    assert summary["splits"]["train"]["items"] == 4 and summary["splits"]["train"]["dropped"] == 10


def test_unknown_subset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'merged' is not a NewsCLIPpings subset; use one of"):
        NewsClippingsSettings(raw=str(tmp_path), subset="merged")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda raw: (raw / "visual_news/origin/data.json").unlink(), r"data\.json does not exist .*visualnews"),
        (
            lambda raw: (raw / "visual_news/origin/data.json").write_text('[{"id": 1, "caption": "x"'),
            r"data\.json is not valid JSON",
        ),
        (
            lambda raw: (raw / "visual_news/origin/data.json").write_text('{"records": []}'),
            r"data\.json has none of the 16 ids",
        ),
        (
            lambda raw: (raw / "news_clippings/data/merged_balanced/val.json").write_text('[{"id": 1}]'),
            r"val\.json has no annotations",
        ),
        (
            lambda raw: (raw / "queries_dataset/merged_balanced/dataset_items_test.json").unlink(),
            r"dataset_items_test\.json does not exist",
        ),
    ],
)
def test_a_broken_input_fails_before_writing_anything(raw_data, tmp_path, breakage, message):
    breakage(raw_data.raw)
    out = tmp_path / "prepared"
    with pytest.raises(PrepareInputError, match=message):
        prepare_newsclippings(settings_for(raw_data.raw), out)
    assert not out.exists()
