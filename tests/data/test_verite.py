"""`prepare_verite` on a VERITE-format folder built here (tests/data/verite_fixture.py): the exact items, gold labels
with their class, images, report rows and summary; a malformed CSV, a missing input or an output inside the input
stops with the file and the fix and writes nothing; and `stages/prepare.py` runs it by name or by `kind`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from dvc_env import describe, offline_env
from verite_fixture import (
    EXPECTED_ITEMS,
    EXPECTED_REPORT,
    EXPECTED_SUMMARY,
    IMAGES,
    MAX_PIXELS,
    build_verite,
    write_csv,
)

from mmkd.data import PrepareInputError
from mmkd.data.records import REPORT_FILE
from mmkd.data.verite import CLASSES, LABEL_OF_CLASS, VeriteSettings, prepare_verite
from mmkd.schema import read_gold, read_items

SCRIPT = Path(__file__).resolve().parents[2] / "stages/prepare.py"
USED_IMAGES = [p for p, kind in IMAGES.items() if kind in ("jpeg", "png")]


def settings_for(raw: Path, **kwargs) -> VeriteSettings:
    return VeriteSettings(**({"raw": str(raw), "max_image_pixels": MAX_PIXELS} | kwargs))


def report(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / REPORT_FILE).read_text().splitlines()]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def raw(tmp_path) -> Path:
    return build_verite(tmp_path / "verite")


def test_prepare_writes_the_exact_items_gold_classes_images_and_report(raw, tmp_path):
    out = tmp_path / "prepared"
    assert prepare_verite(settings_for(raw), out) == EXPECTED_SUMMARY

    expected_images = {f"images/{p}" for p in USED_IMAGES}
    assert set(files(out)) == {"test.parquet", "test.gold.parquet", REPORT_FILE} | expected_images
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    assert all((out / p).read_bytes() == (raw / p.removeprefix("images/")).read_bytes() for p in expected_images)

    items = read_items(out / "test.parquet")
    assert items["id"].to_list() == list(EXPECTED_ITEMS)
    gold = pl.read_parquet(out / "test.gold.parquet")
    assert gold.schema == {"id": pl.String, "gold_label": pl.String, "gold_class": pl.String}
    rows = {
        i: (c, *gold.row(by_predicate=pl.col("id") == i)[1:])
        for i, c in zip(items["id"], items["caption"], strict=True)
    }
    assert rows == EXPECTED_ITEMS
    assert all(LABEL_OF_CLASS[c] == label for _, label, c in gold.iter_rows())  # true: pristine, else falsified
    assert read_gold(out / "test.gold.parquet")["gold_label"].to_list() == [v[1] for v in EXPECTED_ITEMS.values()]

    image = dict(
        zip(items["id"], items["image_path"], strict=True)
    )  # the twins: the true image, or the true caption, shared
    assert image["verite-0"] == image["verite-1"] == image["verite-22"] == str(out / "images/images/true_0.jpg")
    assert image["verite-2"] != image["verite-0"]
    assert [(r["item_id"], r["reason"], r["dropped"], r["path"], r["fix"]) for r in report(out)] == EXPECTED_REPORT
    assert {r["split"] for r in report(out)} == {"test"}


def test_report_details_name_the_line_and_what_was_found(raw, tmp_path):
    out = tmp_path / "prepared"
    prepare_verite(settings_for(raw), out)
    detail = {(r["item_id"], r["reason"]): r["detail"] for r in report(out)}
    assert detail["verite-7", "duplicate_row"].endswith("of index 0 with the same label; the first is kept")
    assert "of index 1 labelled true, not miscaptioned" in detail["verite-18", "duplicate_row"]
    assert detail["verite-8", "unknown_label"] == (
        "VERITE.csv line 10: label 'false' is not one of true, miscaptioned, out-of-context"
    )
    assert detail["verite-19", "bad_row"].startswith("VERITE.csv line 22 has 2 fields, the header 4")
    assert detail[None, "bad_row"] == "VERITE.csv line 23: the index 'x' is not a whole number"
    assert detail[None, "duplicate_index"] == "VERITE.csv line 24 has the index 3 of line 5; an item's id is its index"
    assert "2999 characters; cut to 2000" in detail["verite-21", "caption_cut"]
    assert "1 control character removed" in detail["verite-17", "caption_cleaned"]


def test_a_csv_in_a_subfolder_with_a_bom_and_a_resaved_index_name_is_read_and_copy_mode_copies(raw, tmp_path):
    (tmp_path / "raw").mkdir()
    raw = raw.rename(tmp_path / "raw/VERITE")  # image paths are relative to the CSV's folder
    rows = [("7", "Flood waters rise in Dhaka.", "images/true_0.jpg", "true")]
    write_csv(raw / "VERITE.csv", rows, header=("\ufeffUnnamed: 0", "caption", "image_path", "label"))
    settings = settings_for(tmp_path / "raw", csv="VERITE/VERITE.csv", link_images="copy")
    summary = prepare_verite(settings, tmp_path / "prepared")
    assert (summary["items"], summary["classes"]["true"], summary["images"]) == (1, 1, {"distinct_used": 1, "copy": 1})
    assert read_items(tmp_path / "prepared/test.parquet")["id"].to_list() == ["verite-7"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (",caption,image_path\n0,A caption.,images/true_0.jpg\n", r"has no column \['label'\]"),
        ("caption,image_path,label\nA caption.,images/true_0.jpg,true\n", r"starts with the column 'caption'"),
        (",caption,caption,image_path,label\n", r"has the column\(s\) \['caption'\] more than once"),
        ("", r"is empty"),
        (',caption,image_path,label\n0,"an unclosed quote' + "x" * 200_000, r"cannot be parsed at line 2"),
    ],
    ids=["no-label", "no-index", "repeated-column", "empty", "unclosed-quote"],
)
def test_a_malformed_csv_stops_naming_the_file_and_writes_nothing(raw, tmp_path, content, message):
    (raw / "VERITE.csv").write_text(content)
    with pytest.raises(PrepareInputError, match=rf"verite/VERITE\.csv {message}"):
        prepare_verite(settings_for(raw), tmp_path / "prepared")
    assert {p.name for p in tmp_path.iterdir()} == {"verite", "outside.jpg"}  # no output, no build folder left


def test_missing_inputs_are_named_with_where_to_get_them(raw, tmp_path):
    with pytest.raises(PrepareInputError, match=r"raw folder .*nowhere does not exist.*docs/verite\.md"):
        prepare_verite(settings_for(tmp_path / "nowhere"), tmp_path / "prepared")
    with pytest.raises(
        PrepareInputError, match=r"VERITE2\.csv does not exist \(a file, from data\.prepare\.<name>\.csv"
    ):
        prepare_verite(settings_for(raw, csv="VERITE2.csv"), tmp_path / "prepared")


def test_no_usable_row_stops_and_the_previous_output_stays(raw, tmp_path):
    out = tmp_path / "prepared"
    prepare_verite(settings_for(raw), out)
    before = files(out)
    write_csv(raw / "VERITE.csv", [("0", "A caption.", "images/true_9.jpg", "true"), ("1", "B.", "x.jpg", "fake")])
    with pytest.raises(PrepareInputError, match=r"none of its 2 rows became an item .*missing_image.*unknown_label"):
        prepare_verite(settings_for(raw), out)
    assert files(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no build folder left behind


def test_an_output_inside_the_raw_folder_is_refused_and_the_raw_data_kept(raw, tmp_path):
    before = files(raw)
    with pytest.raises(PrepareInputError, match=r"lies inside the input raw"):
        prepare_verite(settings_for(raw), raw / "prepared")
    assert files(raw) == before


def test_settings_refuse_impossible_values(tmp_path):
    with pytest.raises(ValueError, match="split name 'te st'"):
        VeriteSettings(raw=str(tmp_path), split="te st")
    with pytest.raises(ValueError, match="max_caption_chars"):
        VeriteSettings(raw=str(tmp_path), max_caption_chars=0)
    assert VeriteSettings(raw=str(tmp_path)).split == "test"


def project(folder: Path, entries: dict, test_sets: dict | None = None) -> None:
    """A project folder with the fixture's VERITE folder at data/verite_raw and params.yaml with these entries
    (``data.prepare``) and extra test sets (``data.prepare_test``)."""
    build_verite(folder / "data/verite_raw")
    params = {"data": {"dir": "data/newsclippings", "prepare": entries, "prepare_test": test_sets or {}}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def test_the_stage_runs_prepare_verite_by_name(tmp_path):
    project(tmp_path, {"verite": {"raw": "data/verite_raw", "out": "data/verite", "max_image_pixels": MAX_PIXELS}})
    cmd = [sys.executable, str(SCRIPT), "verite"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=offline_env(), timeout=300)
    assert result.returncode == 0, describe(result)
    assert json.loads((tmp_path / "metrics/prepare_verite.json").read_text()) == EXPECTED_SUMMARY
    assert read_items(tmp_path / "data/verite/test.parquet")["id"].to_list() == list(EXPECTED_ITEMS)
    assert not (tmp_path / "data/newsclippings").exists() and not (tmp_path / "metrics/prepare.json").exists()


def test_the_stage_dispatches_by_kind_and_refuses_what_it_cannot_run(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("prepare_stage", SCRIPT)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    entry = {"kind": "verite", "raw": "data/verite_raw", "max_image_pixels": MAX_PIXELS}
    entries = {"vt": entry | {"out": "data/vt"}, "no_out": entry, "coco": {"raw": "data/verite_raw", "out": "d"}}
    project(tmp_path, entries | {"bad": entry | {"out": "data/bad", "split": "a/b"}})
    monkeypatch.chdir(tmp_path)

    stage.main(["vt"])
    assert json.loads((tmp_path / "metrics/prepare_vt.json").read_text())["items"] == EXPECTED_SUMMARY["items"]
    with pytest.raises(SystemExit, match=r"prepare@no_out: data\.prepare\.no_out\.out is not set"):
        stage.main(["no_out"])
    with pytest.raises(SystemExit, match=r"prepare@coco: data\.prepare\.coco is of kind 'coco' .*'verite'"):
        stage.main(["coco"])
    with pytest.raises(SystemExit, match=r"prepare@bad: data\.prepare\.bad in params\.yaml: split name 'a/b'"):
        stage.main(["bad"])


def test_as_an_extra_test_set_the_gold_labels_go_apart(tmp_path, monkeypatch):
    """``prepare_test@<name>`` writes the items and images to data/test_sets/<name> (what labelling reads) and the
    gold labels to data/test_gold/<name> (what only evaluate reads)."""
    spec = importlib.util.spec_from_file_location("prepare_stage", SCRIPT)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    entry = {"kind": "verite", "raw": "data/verite_raw", "max_image_pixels": MAX_PIXELS}
    project(tmp_path, {}, test_sets={"verite": entry, "with_out": entry | {"out": "x"}, "../up": entry})
    monkeypatch.chdir(tmp_path)
    stage.main(["verite", "--test-set"])
    assert sorted(p.name for p in (tmp_path / "data/test_sets/verite").iterdir()) == [
        "images",
        "prepare_report.jsonl",
        "test.parquet",
    ]
    gold = pl.read_parquet(tmp_path / "data/test_gold/verite/test.gold.parquet")
    assert len(gold) == EXPECTED_SUMMARY["items"] and set(gold["gold_class"]) == set(CLASSES)
    with pytest.raises(SystemExit, match=r"remove data\.prepare_test\.with_out\.out"):
        stage.main(["with_out", "--test-set"])
    with pytest.raises(SystemExit, match=r"prepare_test@\.\./up: a test set's name is a folder under data/test_sets"):
        stage.main(["../up", "--test-set"])
    assert not (tmp_path / "data/up").exists()
