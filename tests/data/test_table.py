"""`prepare_table` on a team's own table of posts (tests/data/table_fixture.py), as CSV, JSONL and Parquet: the exact
items, gold labels (labelled items only), images, report rows and summary; every hostile row gets a report line that
names it; a missing column, an unreadable table or a split left empty stops with the file and the fix and leaves the
previous output as it was; splits drawn from seeded fractions depend on neither the row order nor the other rows."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import polars as pl
import pytest
import yaml
from dvc.repo import Repo
from table_fixture import (
    COLUMNS,
    EXPECTED_BAD_ROWS,
    EXPECTED_ITEMS,
    EXPECTED_REPORT,
    FORMATS,
    IMAGES,
    MAX_PIXELS,
    ROWS,
    build_posts,
    fix_of,
    write_table,
)

from mmkd.cli import compose
from mmkd.data import PrepareInputError
from mmkd.data.records import REPORT_FILE
from mmkd.data.table import TableSettings, assign_split, prepare_table
from mmkd.schema import GOLD_SCHEMA, read_gold, read_items

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")


def settings_for(raw: Path, fmt: str, **kwargs) -> TableSettings:
    return TableSettings(**({"raw": str(raw), "table": f"posts.{fmt}", "max_image_pixels": MAX_PIXELS} | kwargs))


def report(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / REPORT_FILE).read_text().splitlines()]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def good_rows(n: int) -> list[tuple]:
    """``n`` good rows without a split (ids post-000, ...), one image, labelled pristine, falsified, unlabeled."""
    labels = ("pristine", "falsified", None)
    return [(f"post-{i:03d}", "images/p1.jpg", f"Post number {i}.", labels[i % 3], None, None, "ok") for i in range(n)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_prepare_writes_the_exact_items_gold_images_and_report(tmp_path, fmt):
    raw = tmp_path / "raw"
    build_posts(raw, fmt)
    out = tmp_path / "prepared"
    summary = prepare_table(settings_for(raw, fmt), out)

    expected_images = {"images/" + p for p in IMAGES if p.split("/")[1].startswith("p")}
    expected_files = {f"{s}{ext}" for s in SPLITS for ext in (".parquet", ".gold.parquet")} | {REPORT_FILE}
    assert set(files(out)) == expected_files | expected_images
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    assert all((out / p).read_bytes() == (raw / p.removeprefix("images/")).read_bytes() for p in expected_images)

    found = {}
    for split in SPLITS:
        items = pl.read_parquet(out / f"{split}.parquet")
        assert items["image_path"].str.starts_with("images/images/").all()  # relative to out, never absolute
        gold = dict(read_gold(out / f"{split}.gold.parquet").iter_rows())
        assert pl.read_parquet(out / f"{split}.gold.parquet").schema == GOLD_SCHEMA
        labelled = {i for i, (s, _, label, _) in EXPECTED_ITEMS.items() if s == split and label}
        assert set(gold) == labelled and None not in gold.values()  # an unlabeled item has no gold row
        for row in items.iter_rows(named=True):
            found[row["id"]] = (split, row["caption"], gold.get(row["id"]), row["evidence_entities"])
        assert read_items(out / f"{split}.parquet")["image_path"].map_elements(os.path.isfile).all()
    assert found == EXPECTED_ITEMS

    lines = report(out)
    expected = [r for r in EXPECTED_REPORT if not (fmt == "parquet" and r[2] == "evidence_unreadable")]
    expected += [("unassigned", None, "bad_row", True, None)] * EXPECTED_BAD_ROWS[fmt]
    assert [(r["split"], r["item_id"], r["reason"], r["dropped"], r["path"]) for r in lines] == expected
    for line in lines:  # every line names its row: by id, or by where it is in the table
        assert line["item_id"] or f"posts.{fmt} line" in line["detail"] or f"posts.{fmt} row" in line["detail"]
        assert fix_of(fmt, line["reason"]) in (None, line["fix"])
    dropped = [r for r in lines if r["dropped"]]
    assert len({r["index"] for r in dropped}) == len(dropped)  # one line per dropped row

    assert summary["rows"] == len(ROWS) + EXPECTED_BAD_ROWS[fmt] == summary["items"] + summary["dropped"]
    assert summary["items"] == len(EXPECTED_ITEMS)
    assert summary["labels"] == {"pristine": 3, "falsified": 3, "unlabeled": 3}
    assert summary["split_by"] == "column" and summary["format"] == fmt and summary["table"] == f"posts.{fmt}"
    assert summary["ignored_columns"] == ["source"]
    assert summary["dropped_by_reason"]["bad_id"] == 3
    assert summary["dropped_by_reason"].get("bad_row", 0) == EXPECTED_BAD_ROWS[fmt]
    assert summary["splits"]["val"] == {
        "items": 3,
        "labels": {"pristine": 2, "falsified": 0, "unlabeled": 1},
        "with_evidence": 0,  # p23's evidence is unusable in CSV and JSONL, absent in Parquet
        "dropped": 1,
        "dropped_by_reason": {"duplicate_id": 1},
        "evidence_problems": {} if fmt == "parquet" else {"evidence_unreadable": 1},
        "kept_with_warnings": {"caption_cleaned": 1},
    }
    assert summary["splits"]["train"]["with_evidence"] == 2  # p1, and p3's empty list (searched, nothing found)
    assert summary["images"] == {"distinct_used": len(expected_images), "hardlink": len(expected_images)}


def test_the_stage_prepares_the_table_config_into_data_dir_naming_no_machine_path(tmp_path, monkeypatch):
    """`prepare@posts` of `data=table`, run as DVC runs it (from the project, raw folder relative): it writes
    data.dir and metrics/prepare.json, and no output names the folder the project is in."""
    params = compose(["data=table", "bootstrap=none"], ROOT / "conf")
    params["data"]["prepare"]["posts"]["max_image_pixels"] = MAX_PIXELS
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    build_posts(tmp_path / "data/raw_posts", "csv")
    with Repo.init(str(tmp_path), no_scm=True) as repo:  # the one stage that writes data.dir
        writers = [s.name for s in repo.index.stages if any(o.def_path == "data/posts" for o in s.outs)]
    assert writers == ["prepare@posts"]
    spec = importlib.util.spec_from_file_location("prepare_stage", ROOT / "stages/prepare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(tmp_path)

    stage.main(["posts"])
    summary = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert summary["items"] == len(EXPECTED_ITEMS) and summary["table"] == "posts.csv"
    outputs = [*(tmp_path / "data/posts").rglob("*.parquet"), tmp_path / "data/posts" / REPORT_FILE]
    outputs.append(tmp_path / "metrics/prepare.json")
    assert [p.name for p in outputs if str(tmp_path).encode() in p.read_bytes()] == []
    paths = [r["path"] for r in report(tmp_path / "data/posts") if r["path"]]
    assert [p for p in paths if p.startswith("/")] == ["/etc/passwd"]  # as written in the table, never resolved


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("column", ["id", "image_path", "caption"])
def test_a_missing_required_column_is_a_named_error_and_changes_nothing(tmp_path, fmt, column):
    raw = tmp_path / "raw"
    build_posts(raw, fmt, columns=tuple(c for c in COLUMNS if c != column))
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "previous.txt").write_text("the last good output")
    with pytest.raises(PrepareInputError, match=rf"posts\.{fmt} has no column \['{column}'\].*rename its columns"):
        prepare_table(settings_for(raw, fmt), out)
    assert files(out) == {"previous.txt": b"the last good output"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.jpg", "prepared", "raw"]  # no build left behind


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_split_left_without_items_stops_and_keeps_the_previous_output(tmp_path, fmt):
    raw = tmp_path / "raw"
    build_posts(raw, fmt)
    out = tmp_path / "prepared"
    prepare_table(settings_for(raw, fmt), out)
    before = files(out)
    no_test = [r for r in ROWS if r[4] != "test" or not r[6].startswith("ok")]  # p5 and p6 out: test keeps no item
    write_table(raw / f"posts.{fmt}", no_test, fmt)
    with pytest.raises(PrepareInputError, match=r"none became an item of split\(s\) \['test'\].*nothing was written"):
        prepare_table(settings_for(raw, fmt), out)
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.jpg", "prepared", "raw"]


def test_splits_drawn_from_fractions_depend_on_the_seed_and_ids_only(tmp_path):
    raw = tmp_path / "raw"
    rows = good_rows(60)
    build_posts(raw, "csv", rows=rows, columns=("id", "image_path", "caption", "label"))

    def splits_of(name: str, table_rows: list[tuple], seed: int = 0) -> dict[str, str]:
        write_table(raw / "posts.csv", table_rows, "csv", ("id", "image_path", "caption", "label"))
        summary = prepare_table(settings_for(raw, "csv", seed=seed), tmp_path / name)
        assert summary["split_by"] == "fractions"
        return {i: s for s in SPLITS for i in pl.read_parquet(tmp_path / name / f"{s}.parquet")["id"]}

    first = splits_of("a", rows)
    assert len(first) == 60 and set(first.values()) == set(SPLITS)
    assert first == {
        f"post-{i:03d}": assign_split(f"post-{i:03d}", {"train": 0.8, "val": 0.1, "test": 0.1}, 0) for i in range(60)
    }
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert splits_of("b", shuffled) == first  # row order does not matter
    grown = splits_of("c", rows + good_rows(90)[60:])
    assert {i: grown[i] for i in first} == first  # a table that grows keeps every item in its split
    assert splits_of("d", rows, seed=1) != first
    assert splits_of("e", rows) == first and files(tmp_path / "e") == files(tmp_path / "a")  # same table, same bytes


def test_assign_split_meets_the_fractions_on_average():
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}
    counts = {s: 0 for s in fractions}
    for i in range(20_000):
        counts[assign_split(f"id-{i}", fractions, seed=3)] += 1
    assert all(abs(counts[s] / 20_000 - f) < 0.015 for s, f in fractions.items()), counts


def test_a_table_without_labels_writes_empty_gold_tables(tmp_path):
    raw = tmp_path / "raw"
    columns = ("id", "image_path", "caption")
    build_posts(raw, "jsonl", rows=good_rows(40), columns=columns)
    summary = prepare_table(settings_for(raw, "jsonl"), tmp_path / "out")
    assert summary["labels"] == {"pristine": 0, "falsified": 0, "unlabeled": 40}
    for split in SPLITS:
        assert read_gold(tmp_path / "out" / f"{split}.gold.parquet").height == 0
        assert pl.read_parquet(tmp_path / "out" / f"{split}.gold.parquet").schema == GOLD_SCHEMA


def test_jsonl_and_parquet_ids_may_be_whole_numbers_but_not_booleans_or_fractions(tmp_path):
    raw = tmp_path / "raw"
    build_posts(raw, "jsonl", rows=good_rows(30), columns=("id", "image_path", "caption"))
    extra = [{"id": 17, "image_path": "images/p4.jpg", "caption": "An integer id."}]
    extra += [{"id": True, "image_path": "images/p5.jpg", "caption": "A boolean id."}]
    extra += [{"id": 1.5, "image_path": "images/p6.jpg", "caption": "A fractional id."}]
    with open(raw / "posts.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra))
    prepare_table(settings_for(raw, "jsonl"), tmp_path / "out")
    ids = {i for s in SPLITS for i in pl.read_parquet(tmp_path / "out" / f"{s}.parquet")["id"]}
    assert "17" in ids and len(ids) == 31
    bad = [r for r in report(tmp_path / "out") if r["reason"] == "bad_id"]
    assert [("True" in r["detail"], "1.5" in r["detail"]) for r in bad] == [(True, False), (False, True)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("posts.csv", b"", r"posts\.csv is empty"),
        ("posts.csv", b'id,image_path,caption\np1,images/p1.jpg,"never closed\n' + b"x" * 200_000, "cannot be parsed"),
        ("posts.jsonl", b"[1, 2]\nnot json\n", r"posts\.jsonl has no JSON object"),
        ("posts.parquet", b"PAR1 this is not parquet", r"posts\.parquet is not a readable Parquet file"),
    ],
)
def test_an_unreadable_table_is_a_named_error(tmp_path, name, content, message):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / name).write_bytes(content)
    with pytest.raises(PrepareInputError, match=message):
        prepare_table(settings_for(raw, name.split(".")[1]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_inputs_and_an_overlapping_output_are_named_errors(tmp_path):
    raw = tmp_path / "raw"
    build_posts(raw, "csv")
    with pytest.raises(PrepareInputError, match=r"raw/other\.csv does not exist .*data\.prepare\.<name>\.table"):
        prepare_table(settings_for(raw, "csv", table="other.csv"), tmp_path / "out")
    with pytest.raises(PrepareInputError, match=r"raw/pictures does not exist .*image_root"):
        prepare_table(settings_for(raw, "csv", image_root="pictures"), tmp_path / "out")
    with pytest.raises(PrepareInputError, match="does not exist"):
        prepare_table(settings_for(tmp_path / "nowhere", "csv"), tmp_path / "out")
    with pytest.raises(PrepareInputError, match="lies inside the input raw"):
        prepare_table(settings_for(raw, "csv"), raw / "prepared")
    assert not (tmp_path / "out").exists() and not (raw / "prepared").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": "posts.xlsx"}, r"\.csv, \.jsonl or \.parquet"),
        ({"split_fractions": {"train": 0.9, "test": 0.1}}, "must map each of"),
        ({"split_fractions": {"train": 0.8, "val": 0.1, "test": 0.2}}, "add up to 1.1"),
        ({"split_fractions": {"train": 0.9, "val": 0.1, "test": 0.0}}, r"in \(0, 1\]"),
        ({"split_fractions": {"train": 0.8, "val": 0.1, "test": 0.05, "a/b": 0.05}}, "letters, digits"),
        ({"split_fractions": {"train": 0.8, "val": 0.1, "test": 0.05, "unassigned": 0.05}}, "not a split name"),
        ({"seed": "0"}, "whole number"),
    ],
)
def test_settings_refuse_what_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TableSettings(raw="data/raw_posts", **kwargs)


def test_the_table_config_is_a_valid_prepare_entry_apart_from_its_raw_folder():
    data = compose(["data=table", "bootstrap=none"], ROOT / "conf")["data"]
    ((name, entry),) = data["prepare"].items()
    assert entry.pop("kind") == "table"
    settings = TableSettings(**entry)
    assert not Path(data["dir"]).is_relative_to(settings.raw) and not Path(settings.raw).is_relative_to(data["dir"])
    assert data["world"] == {} and data["prepare_test"] == {} and data["test_sets"] == []


def test_changing_only_labels_leaves_the_item_tables_byte_identical(tmp_path):
    """docs/own_data.md#labels: labels added to the table change the gold tables only, so the teachers' inputs stay."""
    raw = tmp_path / "raw"
    rows = good_rows(40)
    build_posts(raw, "csv", rows=rows, columns=("id", "image_path", "caption", "label"))
    write_table(raw / "posts.csv", rows, "csv", ("id", "image_path", "caption", "label"))  # no unreadable line
    prepare_table(settings_for(raw, "csv"), tmp_path / "before")
    relabelled = [(*r[:3], "falsified", *r[4:]) for r in rows]
    write_table(raw / "posts.csv", relabelled, "csv", ("id", "image_path", "caption", "label"))
    prepare_table(settings_for(raw, "csv"), tmp_path / "after")
    before, after = files(tmp_path / "before"), files(tmp_path / "after")
    assert {k for k in before if before[k] != after[k]} == {f"{s}.gold.parquet" for s in SPLITS}
