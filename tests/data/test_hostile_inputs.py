"""Hostile raw input, one class per section: each builds the fixture folder (conftest), adds the hostile part with
real files, links, FIFOs and PNGs, runs the real ``prepare_newsclippings``, and checks the exact report rows (or
the named error) and that every other item is still there, unchanged."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
from newsclippings_fixture import (
    BASE_ITEMS,
    EXPECTED_REPORT,
    MAX_PIXELS,
    SPLIT_SIZES,
    add_annotations,
    add_evidence,
    add_records,
    annotation,
    annotation_file,
    build_raw,
    record,
    write_image,
)
from PIL import Image

from mmkd.cli import compose
from mmkd.data import PrepareInputError
from mmkd.data.newsclippings import REPORT_FILE, NewsClippingsSettings, prepare_newsclippings
from mmkd.items import BadItem, load_image
from mmkd.schema import FALSIFIED, PRISTINE, read_gold, read_items

BASE_ROWS = {row[:4] for row in EXPECTED_REPORT}
ORIGIN = "visual_news/origin"


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO opened for reading blocks forever: fail the test after 60 s instead of hanging the suite."""

    def fail(*_):
        raise TimeoutError("prepare blocked (a FIFO opened?)")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def settings_for(raw, **kwargs) -> NewsClippingsSettings:
    fields = {"raw": str(raw), "evidence": "queries_dataset/merged_balanced", "max_image_pixels": MAX_PIXELS}
    return NewsClippingsSettings(**(fields | kwargs))


def report(out) -> list[dict]:
    return [json.loads(line) for line in (out / REPORT_FILE).read_text().splitlines()]


def new_rows(out) -> list[tuple]:
    """The report rows beyond those of the unchanged fixture: (split, item id, reason, dropped)."""
    rows = [(r["split"], r["item_id"], r["reason"], r["dropped"]) for r in report(out)]
    return [row for row in rows if row not in BASE_ROWS]


def row_of(out, item_id: str, reason: str) -> dict:
    (row,) = [r for r in report(out) if r["item_id"] == item_id and r["reason"] == reason]
    return row


def items_of(out) -> dict[str, dict]:
    """Every item of every split, by id, with its gold label."""
    found = {}
    for split in ("train", "val", "test"):
        gold = dict(read_gold(out / f"{split}.gold.parquet").rows())
        for item in read_items(out / f"{split}.parquet").iter_rows(named=True):
            found[item["id"]] = item | {"gold_label": gold[item["id"]]}
    return found


def assert_base_items_kept(out) -> dict[str, dict]:
    """All items of the unchanged fixture are there with their captions and labels, and every image is a file."""
    items = items_of(out)
    assert {i: (items[i]["caption"], items[i]["gold_label"]) for i in BASE_ITEMS if i in items} == BASE_ITEMS
    assert items["train-000000"]["evidence_entities"][0] == "Flood"
    for path in (out / "images").rglob("*"):
        assert not path.is_symlink() and (path.is_dir() or path.is_file()), path
    return items


def run(raw, out, **kwargs) -> dict:
    summary = prepare_newsclippings(settings_for(raw, **kwargs), out)
    assert_base_items_kept(out)
    return summary


def new_index(split: str, k: int = 0) -> int:
    return SPLIT_SIZES[split] + k


# --- 1. Wrong evidence, silently ----------------------------------------------------------------------------------


def test_evidence_of_another_subset_is_refused(tmp_path):
    raw = build_raw(tmp_path / "raw", subset="scene_resnet_place").raw
    shutil.copytree(raw / "queries_dataset/scene_resnet_place", raw / "queries_dataset/merged_balanced")
    out = tmp_path / "prepared"
    with pytest.raises(PrepareInputError, match=r"evidence of subset 'merged_balanced'.*subset is 'scene_resnet_pl"):
        prepare_newsclippings(settings_for(raw, subset="scene_resnet_place"), out)
    assert not out.exists()


def test_the_configured_evidence_follows_the_subset():
    prepare = compose(["data=newsclippings", "bootstrap=none", "data.prepare.newsclippings.subset=scene_resnet_place"])
    assert prepare["data"]["prepare"]["newsclippings"]["evidence"] == "queries_dataset/scene_resnet_place"


def test_an_evidence_index_beyond_the_annotations_is_refused(raw_data, tmp_path):
    neutral = raw_data.raw / "ccn_evidence"
    shutil.copytree(raw_data.raw / "queries_dataset/merged_balanced", neutral)  # a name that says no subset
    add_evidence(raw_data.raw, "train", 90_000, "inverse_search/train/0", subset="../ccn_evidence")
    with pytest.raises(
        PrepareInputError,
        match=r"dataset_items_train\.json has evidence for 1 annotation indices "
        r"beyond the 14 annotations.*subset 'merged_balanced'",
    ):
        prepare_newsclippings(settings_for(raw_data.raw, evidence="ccn_evidence"), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("content", ['[{"inv_path": "inverse_search/val/0"}]', '"items"', "[]"])
def test_an_evidence_index_of_the_wrong_shape_is_refused(raw_data, tmp_path, content):
    (raw_data.raw / "queries_dataset/merged_balanced/dataset_items_val.json").write_text(content)
    with pytest.raises(PrepareInputError, match=r"dataset_items_val\.json is a JSON (array|string), not an object"):
        prepare_newsclippings(settings_for(raw_data.raw), tmp_path / "prepared")


# --- 2. Empty or wrong tables, exit code 0 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([annotation(11, 11, 0), annotation(12, 11, 1)], r"falsified is a int \(0\), not true or false"),
        ([annotation(11, 11, "true"), annotation(12, 11, "false")], r"falsified is a str \('true'\)"),
        ([annotation("11", 11, False), annotation("12", 11, True)], r"id is a str \('11'\), not an integer"),
        ([{"id": 11, "falsified": False}, [11, 11, False]], r"image_id is missing"),
    ],
)
def test_a_file_of_wrongly_typed_annotations_is_refused(raw_data, tmp_path, rows, message):
    annotation_file(raw_data.raw, "val").write_text(json.dumps({"annotations": rows}))
    out = tmp_path / "prepared"
    with pytest.raises(PrepareInputError, match=r"all 2 annotations read from .*val\.json are malformed .*" + message):
        prepare_newsclippings(settings_for(raw_data.raw), out)
    assert not out.exists()


def test_one_wrongly_typed_annotation_is_a_bad_annotation_row(raw_data, tmp_path):
    ids = add_annotations(raw_data.raw, "train", [annotation(1, 1, 1), annotation(True, 1, False)])
    out = tmp_path / "prepared"
    run(raw_data.raw, out)
    assert new_rows(out) == [("train", ids[0], "bad_annotation", True), ("train", ids[1], "bad_annotation", True)]
    assert "falsified is a int (1)" in row_of(out, ids[0], "bad_annotation")["detail"]
    assert "id is a bool (True)" in row_of(out, ids[1], "bad_annotation")["detail"]


def test_a_split_left_with_no_items_stops_before_writing(raw_data, tmp_path):
    annotation_file(raw_data.raw, "test").write_text(json.dumps({"annotations": [annotation(5, 5, False)] * 1}))
    out = tmp_path / "prepared"
    with pytest.raises(
        PrepareInputError,
        match=r"split test: none of its 1 annotations became an item "
        r"\(\{'missing_image': 1\}; e\.g\. test-000000: missing_image",
    ):
        prepare_newsclippings(settings_for(raw_data.raw), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no output, no half-built sibling


# --- 3. Crashes with a traceback ------------------------------------------------------------------------------------


def test_one_image_file_spelled_many_ways_is_linked_once(raw_data, tmp_path):
    spellings = [
        "bbc/images/0001/1.jpg",
        "bbc//images/0001/1.jpg",
        "./bbc/./images/0001/1.jpg",
        "bbc\\images\\0001\\1.jpg",
    ]
    add_records(raw_data.raw, [record(30 + i, f"Caption number {i}.", p) for i, p in enumerate(spellings)])
    ids = add_annotations(raw_data.raw, "train", [annotation(30 + i, 30 + i, False) for i in range(len(spellings))])
    out = tmp_path / "prepared"
    summary = run(raw_data.raw, out)
    assert new_rows(out) == []
    items = items_of(out)
    assert [items[i]["caption"] for i in ids] == [f"Caption number {i}." for i in range(len(spellings))]
    assert {items[i]["image_path"] for i in ids} == {str((out / "images/bbc/images/0001/1.jpg").resolve())}
    assert summary["images"] == {"distinct_used": 4, "hardlink": 4}


def test_lone_surrogates_are_replaced_and_reported(raw_data, tmp_path):
    add_records(
        raw_data.raw,
        [],
        text=r'{"id": 40, "caption": "Storm \ud800 hits the coast \udfff.", '
        r'"image_path": "./bbc/images/0001/2.jpg"}',
    )
    (ids,) = [add_annotations(raw_data.raw, "train", [annotation(40, 40, False)])]
    folder = raw_data.raw / "queries_dataset/merged_balanced/inverse_search/train/x"
    folder.mkdir()
    (folder / "inverse_annotation.json").write_text(r'{"entities": ["Storm\ud83d", "Coast"], "best_guess_lbl": []}')
    add_evidence(raw_data.raw, "train", new_index("train"), "inverse_search/train/x")
    out = tmp_path / "prepared"
    run(raw_data.raw, out)
    assert new_rows(out) == [("train", ids[0], "caption_cleaned", False), ("train", ids[0], "evidence_cleaned", False)]
    item = items_of(out)[ids[0]]
    assert item["caption"] == "Storm \ufffd hits the coast \ufffd."
    assert item["evidence_entities"] == ["Storm\ufffd", "Coast"]
    assert "2 unreadable characters (lone surrogates, now U+FFFD)" in row_of(out, ids[0], "caption_cleaned")["detail"]


def test_deeply_nested_json_is_reported_not_a_recursion_error(raw_data, tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    folder = raw_data.raw / "queries_dataset/merged_balanced/inverse_search/train/deep"
    folder.mkdir()
    (folder / "inverse_annotation.json").write_text('{"entities": ' + deep + "}")
    add_evidence(raw_data.raw, "train", new_index("train"), "inverse_search/train/deep")
    add_records(raw_data.raw, [], text='{"id": 41, "caption": ' + deep + ', "image_path": "./bbc/images/0001/2.jpg"}')
    path = annotation_file(raw_data.raw, "train")
    text = path.read_text()
    extra = [
        '{"id": 4, "image_id": 1, "falsified": true, "note": ' + deep + "}",
        deep,
        '{"id": 41, "image_id": 2, "falsified": false}',
    ]
    path.write_text(text[: text.rindex("]")] + "".join(", " + e for e in extra) + "]}")
    out = tmp_path / "prepared"
    run(raw_data.raw, out)
    first = new_index("train")
    assert new_rows(out) == [
        ("train", f"train-{first:06d}", "evidence_unreadable", False),
        ("train", f"train-{first + 1:06d}", "bad_annotation", True),
        ("train", f"train-{first + 2:06d}", "empty_caption", True),
    ]
    assert (
        "no caption string (found list: [[[[...]]]])"
        in row_of(out, f"train-{first + 2:06d}", "empty_caption")["detail"]
    )
    assert "nests too deeply" in row_of(out, f"train-{first:06d}", "evidence_unreadable")["detail"]
    assert items_of(out)[f"train-{first:06d}"]["evidence_entities"] is None  # kept, without evidence


# --- 4. Files from outside the image root -------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A folder outside the raw folder with a valid JPEG and an evidence file in it."""
    folder = tmp_path / "outside"
    write_image(folder / "secret.jpg", "jpeg", (1, 2, 3))
    (folder / "inverse_annotation.json").write_text(json.dumps({"entities": ["Leaked"]}))
    return folder


def test_links_out_of_the_image_root_are_refused(raw_data, tmp_path, outside):
    root = raw_data.image_root
    os.symlink(outside / "secret.jpg", root / "bbc/images/evil.jpg")  # a file link, absolute
    os.symlink("../../../../outside", root / "bbc/linked_dir")  # a folder link, relative
    add_records(
        raw_data.raw,
        [record(50, "Caption 50.", "./bbc/images/evil.jpg"), record(51, "Caption 51.", "bbc/linked_dir/secret.jpg")],
    )
    ids = add_annotations(raw_data.raw, "train", [annotation(50, 50, False), annotation(51, 51, True)])
    out = tmp_path / "prepared"
    run(raw_data.raw, out)
    assert new_rows(out) == [
        ("train", ids[0], "path_outside_root", True),
        ("train", ids[1], "path_outside_root", True),
    ]
    assert str(outside / "secret.jpg") in row_of(out, ids[0], "path_outside_root")["detail"]
    assert not list(out.rglob("secret.jpg")) and not list(out.rglob("evil.jpg"))


def test_a_link_inside_the_root_becomes_a_regular_file(raw_data, tmp_path):
    root = raw_data.image_root
    os.makedirs(root / "bbc/images/0009")
    os.symlink("../0001/1.jpg", root / "bbc/images/0009/alias.jpg")
    os.symlink(root / "guardian", root / "mirror")  # an absolute link to a folder inside the root
    add_records(
        raw_data.raw,
        [
            record(52, "Caption 52.", "./bbc/images/0009/alias.jpg"),
            record(53, "Caption 53.", "mirror/images/0002/3.png"),
        ],
    )
    ids = add_annotations(raw_data.raw, "train", [annotation(52, 52, False), annotation(53, 53, False)])
    for mode in ("hardlink", "copy"):
        out = tmp_path / f"prepared_{mode}"
        run(raw_data.raw, out, link_images=mode)
        assert new_rows(out) == []
        items = items_of(out)
        assert [items[i]["caption"] for i in ids] == ["Caption 52.", "Caption 53."]
        for name, original in (
            ("bbc/images/0009/alias.jpg", "bbc/images/0001/1.jpg"),
            ("mirror/images/0002/3.png", "guardian/images/0002/3.png"),
        ):
            linked = out / "images" / name
            assert linked.is_file() and not linked.is_symlink()
            assert linked.read_bytes() == (root / original).read_bytes()
            assert (os.stat(linked).st_ino == os.stat(root / original).st_ino) == (mode == "hardlink")
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "prepared_copy", moved)  # relative paths: the folder works wherever it goes
    assert load_image("x", items_of(moved)[ids[0]]["image_path"]).size == (32, 24)


def test_links_into_a_link_root_are_followed(raw_data, tmp_path):
    cache = tmp_path / "repo/.dvc/cache/files/md5/ab"
    write_image(cache / "cdef0123", "jpeg", (9, 9, 9))
    os.makedirs(raw_data.image_root / "cached")
    os.symlink(cache / "cdef0123", raw_data.image_root / "cached/60.jpg")  # as `dvc add` with cache.type symlink
    add_records(raw_data.raw, [record(60, "Caption 60.", "cached/60.jpg")])
    (item_id,) = add_annotations(raw_data.raw, "train", [annotation(60, 60, False)])
    out = tmp_path / "prepared"
    run(raw_data.raw, out, link_roots=[str(tmp_path / "repo/.dvc/cache")])
    assert new_rows(out) == []
    assert (out / "images/cached/60.jpg").is_file() and not (out / "images/cached/60.jpg").is_symlink()
    run(raw_data.raw, out, link_roots=[])
    assert new_rows(out) == [("train", item_id, "path_outside_root", True)]


def test_evidence_links_out_of_the_evidence_folder_are_refused(raw_data, tmp_path, outside):
    evidence = raw_data.raw / "queries_dataset/merged_balanced"
    os.symlink(outside, evidence / "inverse_search/train/linked")  # the folder is a link
    (evidence / "inverse_search/train/f").mkdir()
    os.symlink(outside / "inverse_annotation.json", evidence / "inverse_search/train/f/inverse_annotation.json")
    add_evidence(raw_data.raw, "val", 0, "inverse_search/train/linked")
    add_evidence(raw_data.raw, "val", 1, "inverse_search/train/f")
    out = tmp_path / "prepared"
    prepare_newsclippings(settings_for(raw_data.raw), out)
    rows = [(r["item_id"], r["reason"], r["dropped"]) for r in report(out) if r["split"] == "val"]
    assert rows == [
        ("val-000000", "evidence_path_outside_root", False),
        ("val-000001", "evidence_path_outside_root", False),
    ]
    items = items_of(out)
    assert items["val-000000"]["evidence_entities"] is None and items["val-000001"]["evidence_entities"] is None
    assert items["val-000000"]["caption"] == BASE_ITEMS["val-000000"][0]


def test_an_input_file_linked_from_outside_raw_is_refused(raw_data, tmp_path):
    data_json = raw_data.image_root / "data.json"
    shutil.move(data_json, tmp_path / "data.json")
    os.symlink(tmp_path / "data.json", data_json)
    with pytest.raises(
        PrepareInputError, match=r"data\.json is a symbolic link .* outside the raw folder.*visualnews"
    ):
        prepare_newsclippings(settings_for(raw_data.raw), tmp_path / "prepared")


# --- 5. Duplicates and leakage ------------------------------------------------------------------------------------


def test_duplicate_annotations_are_dropped_and_reported(raw_data, tmp_path):
    ids = add_annotations(
        raw_data.raw, "train", [annotation(1, 1, False), annotation(3, 3, True), annotation(1, 1, False)]
    )
    out = tmp_path / "prepared"
    summary = run(raw_data.raw, out)
    assert new_rows(out) == [("train", i, "duplicate_annotation", True) for i in ids]
    assert "repeats annotation 0" in row_of(out, ids[0], "duplicate_annotation")["detail"]
    assert "other label" in row_of(out, ids[1], "duplicate_annotation")["detail"]
    assert summary["splits"]["train"]["items"] == 4


def test_an_item_in_two_splits_is_refused_unless_allowed(raw_data, tmp_path):
    (test_id,) = add_annotations(raw_data.raw, "test", [annotation(1, 1, True)])  # train-000000's caption and image
    out = tmp_path / "prepared"
    with pytest.raises(
        PrepareInputError,
        match=r"1 items of splits test, train .* e\.g\. train-000000 and "
        rf"{test_id} \(id 1, image_id 1\).*allow_split_overlap",
    ):
        prepare_newsclippings(settings_for(raw_data.raw), out)
    assert not out.exists()
    run(raw_data.raw, out, allow_split_overlap=True)
    assert new_rows(out) == [("test", test_id, "split_overlap", False)]
    assert items_of(out)[test_id]["gold_label"] == FALSIFIED


def test_a_duplicate_visualnews_id_is_reported_and_the_first_record_used(raw_data, tmp_path):
    add_records(raw_data.raw, [record(13, "A different caption.", "./bbc/images/0001/1.jpg")])
    out = tmp_path / "prepared"
    summary = run(raw_data.raw, out)
    # test-000000 uses record 13 as caption and image; test-000001 as image
    assert new_rows(out) == [
        ("test", "test-000000", "duplicate_visualnews_id", False),
        ("test", "test-000001", "duplicate_visualnews_id", False),
    ]
    assert "2 records with id 13 (that differ)" in row_of(out, "test-000000", "duplicate_visualnews_id")["detail"]
    assert summary["splits"]["test"]["kept_with_warnings"] == {"duplicate_visualnews_id": 2}


# --- 6. Images a model cannot take ----------------------------------------------------------------------------------


def test_images_of_an_unusable_shape_are_refused(raw_data, tmp_path):
    root = raw_data.image_root
    Image.new("RGB", (100_000, 1), (5, 5, 5)).save(root / "strip.png")
    Image.new("RGB", (10, 10), (5, 5, 5)).save(root / "icon.png")
    Image.new("RGB", (1600, 16), (5, 5, 5)).save(root / "banner.png")  # ratio 100: just allowed
    add_records(
        raw_data.raw,
        [record(70 + i, f"Caption {i}.", f"{name}.png") for i, name in enumerate(("strip", "icon", "banner"))],
    )
    ids = add_annotations(raw_data.raw, "train", [annotation(70 + i, 70 + i, False) for i in range(3)])
    out = tmp_path / "prepared"
    run(raw_data.raw, out, max_image_pixels=200_000)
    assert new_rows(out) == [("train", ids[0], "bad_image_shape", True), ("train", ids[1], "bad_image_shape", True)]
    assert "100000x1" in row_of(out, ids[0], "bad_image_shape")["detail"]
    assert items_of(out)[ids[2]]["caption"] == "Caption 2."


def test_a_16_bit_grey_image_keeps_its_gradient(raw_data, tmp_path):
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    Image.fromarray(gradient).save(raw_data.image_root / "grey16.png")
    assert Image.open(raw_data.image_root / "grey16.png").mode == "I;16"
    add_records(raw_data.raw, [record(80, "Caption 80.", "grey16.png")])
    (item_id,) = add_annotations(raw_data.raw, "train", [annotation(80, 80, False)])
    out = tmp_path / "prepared"
    run(raw_data.raw, out, max_image_pixels=64 * 32)
    assert new_rows(out) == []
    rgb = np.asarray(load_image(item_id, items_of(out)[item_id]["image_path"]))
    assert rgb.shape == (32, 64, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, -1].tolist() == [255, 255, 255]
    assert np.all(np.diff(rgb[0, :, 0].astype(int)) >= 0) and len(np.unique(rgb[0, :, 0])) == 64


@pytest.mark.parametrize(
    ("make", "pixel"),
    [
        (lambda: Image.new("RGBA", (20, 20), (200, 0, 0, 0)), (255, 255, 255)),  # transparent: white, not red
        (lambda: Image.new("RGBA", (20, 20), (200, 0, 0, 255)), (200, 0, 0)),
        (lambda: Image.new("LA", (20, 20), (10, 0)), (255, 255, 255)),
        (lambda: _paletted_with_transparency(), (255, 255, 255)),
        (lambda: Image.new("CMYK", (20, 20), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("1", (20, 20), 1), (255, 255, 255)),
        (lambda: Image.new("L", (20, 20), 77), (77, 77, 77)),
        (lambda: Image.new("I", (20, 20), 65535), (255, 255, 255)),
        (lambda: Image.new("I", (20, 20), 32896), (128, 128, 128)),
        (lambda: Image.new("I;16", (20, 20), 257 * 100), (100, 100, 100)),
        (lambda: Image.new("F", (20, 20), 0.5), (128, 128, 128)),
    ],
)
def test_every_image_mode_converts_to_the_right_rgb(tmp_path, make, pixel):
    path = tmp_path / "image.png"
    image = make()
    image.save(path) if image.mode not in ("CMYK", "F", "I") else image.save(path := tmp_path / "image.tiff")
    assert load_image("x", path).getpixel((5, 5)) == pixel


def _paletted_with_transparency() -> Image.Image:
    image = Image.new("P", (20, 20), 3)
    image.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 0, 0] + [0] * 756)
    image.info["transparency"] = 3
    return image


def test_the_configured_pixel_limit_decides_not_pillows(raw_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses > 200 pixels outright
    out = tmp_path / "prepared"
    run(raw_data.raw, out)  # every image is 768 or 1230 pixels: above Pillow's limit, decided by ours (1200)
    assert new_rows(out) == []
    assert (
        "41x30 = 1230 pixels (limit 1200, max_image_pixels)"
        in row_of(out, "train-000009", "oversized_image")["detail"]
    )
    assert load_image("x", out / "images/bbc/images/0001/1.jpg").size == (32, 24)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    run(raw_data.raw, out, max_image_pixels=2000)
    assert ("train", "train-000009", "oversized_image", True) not in [(*r[:4],) for r in new_rows(out)]
    assert "train-000009" in items_of(out)


def test_one_pixel_limit_what_prepare_keeps_loads_and_a_higher_setting_is_refused(raw_data, tmp_path, monkeypatch):
    """The loader's limit caps prepare's: an image at the cap is kept and loads as labelling and training load it;
    a setting above the cap is refused before anything is read, naming both limits."""
    import mmkd.items

    monkeypatch.setattr(mmkd.items, "LOAD_MAX_PIXELS", 41 * 30)  # the "large" image of train-000009, exactly
    out = tmp_path / "prepared"
    run(raw_data.raw, out, max_image_pixels=41 * 30)
    (path,) = [
        item["image_path"] for item in read_items(out / "train.parquet").to_dicts() if "0004/8" in item["image_path"]
    ]
    assert load_image("train-000009", path).size == (41, 30)
    with pytest.raises(ValueError, match=r"max_image_pixels 1231 is more than the 1230 pixels .*LOAD_MAX_PIXELS"):
        settings_for(raw_data.raw, max_image_pixels=41 * 30 + 1)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"max_image_pixels 2000000000 is more than the 400000000 pixels"):
        settings_for(raw_data.raw, max_image_pixels=2_000_000_000)


def test_load_image_names_a_file_in_the_repository_by_its_relative_path(tmp_path, monkeypatch):
    """Its messages land in the answer tables labelling writes: no clone's path in them, from the OS or Pillow."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images/bad.jpg").write_bytes(b"not an image")
    monkeypatch.chdir(tmp_path)
    for name, words in (("bad.jpg", "is not a readable image (cannot identify image file"), ("gone.jpg", "not exist")):
        with pytest.raises(BadItem) as caught:
            load_image("x", tmp_path / "images" / name)  # as read_items gives it: absolute
        assert f"item 'x': image file images/{name} " in str(caught.value) and words in str(caught.value)
        assert str(tmp_path) not in str(caught.value) and "_io." not in str(caught.value)


def test_load_image_refuses_a_header_too_large_to_decode_without_decoding_it(tmp_path, monkeypatch):
    """``mmkd predict`` and hand-made item files take any file: with Pillow's limit lifted, ours stands in."""
    import mmkd.items

    path = tmp_path / "big.png"
    Image.new("L", (200, 100)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"IDAT") + 6])  # the header, and two bytes of pixels: a decode would fail
    monkeypatch.setattr(mmkd.items, "LOAD_MAX_PIXELS", 19_999)
    with pytest.raises(BadItem, match=r"item 'x': image file .*big.png is 200x100 pixels, more than the 19999"):
        load_image("x", path)
    monkeypatch.setattr(mmkd.items, "LOAD_MAX_PIXELS", 20_000)  # within the limit: decoded, and truncated
    with pytest.raises(BadItem, match="not a readable image"):
        load_image("x", path)


# --- 7. No limits on text -------------------------------------------------------------------------------------------


def test_a_huge_caption_is_cut_and_reported(raw_data, tmp_path):
    add_records(raw_data.raw, [record(90, "word " * 1_000_000, "./bbc/images/0001/2.jpg")])
    (item_id,) = add_annotations(raw_data.raw, "train", [annotation(90, 90, False)])
    out = tmp_path / "prepared"
    run(raw_data.raw, out)
    assert new_rows(out) == [("train", item_id, "caption_cut", False)]
    caption = items_of(out)[item_id]["caption"]
    assert len(caption) == 2000 and caption.endswith("word…")
    assert "4999999 characters; cut to 2000" in row_of(out, item_id, "caption_cut")["detail"]


def test_control_and_bidi_characters_are_removed_from_captions_and_evidence(raw_data, tmp_path):
    add_records(
        raw_data.raw,
        [
            record(91, "Ministers\x00 meet\u202e in\u2066 Rome\x07\u200b.\tToday\nagain.", "./bbc/images/0001/2.jpg"),
            record(92, "Cafe\u0301 opens\tin  Paris.", "./bbc/images/0001/2.jpg"),  # only spacing and NFC: no row
        ],
    )
    ids = add_annotations(raw_data.raw, "train", [annotation(91, 91, False), annotation(92, 92, False)])
    folder = raw_data.raw / "queries_dataset/merged_balanced/inverse_search/train/bidi"
    folder.mkdir()
    (folder / "inverse_annotation.json").write_text(json.dumps({"entities": ["Rome\u202egnirts", "Italy\x1b[31m"]}))
    add_evidence(raw_data.raw, "train", new_index("train"), "inverse_search/train/bidi")
    out = tmp_path / "prepared"
    run(raw_data.raw, out)
    assert new_rows(out) == [("train", ids[0], "caption_cleaned", False), ("train", ids[0], "evidence_cleaned", False)]
    items = items_of(out)
    assert items[ids[0]]["caption"] == "Ministers meet in Rome. Today again."
    assert items[ids[1]]["caption"] == "Caf\u00e9 opens in Paris."
    assert items[ids[0]]["evidence_entities"] == ["Romegnirts", "Italy[31m"]
    detail = row_of(out, ids[0], "caption_cleaned")["detail"]
    assert "2 control characters removed" in detail and "3 bidirectional or invisible characters removed" in detail


# --- 8. The input can be deleted ----------------------------------------------------------------------------------


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("out", "how"),
    [("raw", "is"), (".", "contains"), ("raw/visual_news", "lies inside"), ("raw/out", "lies inside"), ("link", "is")],
)
def test_an_output_overlapping_the_input_is_refused_and_nothing_deleted(raw_data, tmp_path, out, how):
    os.symlink(raw_data.raw, tmp_path / "link")
    before = tree(raw_data.raw)
    with pytest.raises(PrepareInputError, match=rf"data\.dir .* {how} the input raw"):
        prepare_newsclippings(settings_for(raw_data.raw), tmp_path / out)
    assert tree(raw_data.raw) == before


def test_a_failed_run_leaves_the_previous_output_as_it_was(raw_data, tmp_path):
    out = tmp_path / "prepared"
    prepare_newsclippings(settings_for(raw_data.raw), out)
    before = tree(out)
    annotation_file(raw_data.raw, "val").write_text(json.dumps({"annotations": [annotation("1", 1, 0)]}))
    with pytest.raises(PrepareInputError, match="malformed"):
        prepare_newsclippings(settings_for(raw_data.raw), out)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


# --- 9. Messages that mislead ---------------------------------------------------------------------------------------


def test_each_wrong_path_has_its_own_reason(raw_data, tmp_path):
    root = raw_data.image_root
    os.mkfifo(root / "pipe.jpg")
    (root / "folder.jpg").mkdir()
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    os.symlink("nowhere.jpg", root / "dangling.jpg")
    os.symlink("/dev/null", root / "null.jpg")
    cases = [
        ("pipe.jpg", "not_a_regular_file", "a FIFO (named pipe)"),
        ("folder.jpg", "not_a_regular_file", "is a folder"),
        ("null.jpg", "not_a_regular_file", "a character device"),
        ("bbc/images/0001/1.jpg\x00.png", "bad_path", "NUL byte"),
        ("loop_a.jpg", "symlink_loop", "loop"),
        ("", "empty_image_path", "empty"),
        ("dangling.jpg", "missing_image", "is a symbolic link to nowhere.jpg, which is missing"),
        ("bbc/images/0001/absent.jpg", "missing_image", "does not exist"),
    ]
    add_records(raw_data.raw, [record(100 + i, f"Caption {i}.", path) for i, (path, _, _) in enumerate(cases)])
    ids = add_annotations(raw_data.raw, "train", [annotation(100 + i, 100 + i, False) for i in range(len(cases))])
    out = tmp_path / "prepared"
    run(raw_data.raw, out, link_roots=["/dev"])  # /dev/null resolves inside a link root: its kind is what is wrong
    assert new_rows(out) == [("train", i, reason, True) for i, (_, reason, _) in zip(ids, cases, strict=True)]
    for item_id, (_, reason, words) in zip(ids, cases, strict=True):
        assert words in row_of(out, item_id, reason)["detail"]


def test_a_fifo_as_an_input_file_is_named_and_never_opened(raw_data, tmp_path):
    data_json = raw_data.image_root / "data.json"
    data_json.unlink()
    os.mkfifo(data_json)
    with pytest.raises(
        PrepareInputError, match=r"data\.json is a FIFO \(named pipe\), not a regular file.*visualnews"
    ):
        prepare_newsclippings(settings_for(raw_data.raw), tmp_path / "prepared")


def test_settings_report_their_own_impossible_values(tmp_path):
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        NewsClippingsSettings(raw=str(tmp_path), max_aspect_ratio=0.5)
    with pytest.raises(ValueError, match="max_caption_chars"):
        NewsClippingsSettings(raw=str(tmp_path), max_caption_chars=0)
    assert NewsClippingsSettings(raw=str(tmp_path)).link_roots == (".dvc/cache",)
    assert PRISTINE != FALSIFIED
