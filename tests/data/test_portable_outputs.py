"""No machine paths in what `prepare` writes: the same hostile raw folders (NewsCLIPpings and VERITE, with corrupt,
truncated, missing, oversized and misshapen images and symbolic links leading out, spelled with the clone's
absolute path) prepared by the stage script in two clones at different absolute paths give byte-identical outputs
and metrics, none of which names either clone."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml
from newsclippings_fixture import MAX_PIXELS, add_annotations, add_records, annotation, build_raw, record
from verite_fixture import build_verite

SCRIPT = Path(__file__).resolve().parents[2] / "stages/prepare.py"
OUTPUTS = ("data/newsclippings", "data/test_sets/verite", "data/test_gold/verite", "metrics")


def clone(folder: Path) -> Path:
    """A project folder with hostile NewsCLIPpings and VERITE raw folders and params.yaml that prepares both."""
    folder = folder.resolve()
    raw = build_raw(folder / "data/raw")
    build_verite(folder / "data/raw_verite")  # links images/evil.jpg to data/outside.jpg by its absolute path
    origin = raw.image_root
    (folder / "data/elsewhere").mkdir()
    os.link(origin / "bbc/images/0001/1.jpg", folder / "data/elsewhere/1.jpg")
    os.symlink(folder / "data/elsewhere/1.jpg", origin / "bbc/evil.jpg")  # a link out, by absolute path
    os.symlink(folder / "data/elsewhere", origin / "bbc/evil_dir")  # a folder link out
    os.symlink(folder / "data/gone.jpg", origin / "bbc/dangling.jpg")  # a missing target, by absolute path
    paths = ["bbc/evil.jpg", "bbc/evil_dir/1.jpg", "bbc/dangling.jpg", "bbc/../../x.jpg"]
    add_records(raw.raw, [record(60 + i, f"Caption {60 + i}.", p) for i, p in enumerate(paths)])
    add_annotations(raw.raw, "train", [annotation(60 + i, 60 + i, False) for i in range(len(paths))])
    newsclippings = {"raw": "data/raw", "evidence": "queries_dataset/merged_balanced", "max_image_pixels": MAX_PIXELS}
    verite = {"kind": "verite", "raw": "data/raw_verite", "max_image_pixels": MAX_PIXELS}
    params = {
        "data": {
            "dir": "data/newsclippings",
            "prepare": {"newsclippings": newsclippings},
            "prepare_test": {"verite": verite},
        }
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output file of both stages, by its path in the project, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for out in OUTPUTS
        for p in sorted((folder / out).rglob("*"))
        if p.is_file()
    }


def test_two_clones_at_different_paths_prepare_byte_identical_outputs(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("prepare_stage", SCRIPT)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    found = {}
    for where in ("a/clone", "another/folder/deeper/clone"):
        folder = clone(tmp_path / where)
        monkeypatch.chdir(folder)  # as `dvc repro` runs it: in the repository root
        stage.main(["newsclippings"])
        stage.main(["verite", "--test-set"])
        found[where] = outputs(folder)
    first, second = found.values()
    assert "data/newsclippings/prepare_report.jsonl" in first and "metrics/prepare_verite.json" in first
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    report = first["data/newsclippings/prepare_report.jsonl"].decode()
    for words in (
        "is a symbolic link to data/elsewhere/1.jpg, outside the image root data/raw/visual_news/origin",
        "lies below data/raw/visual_news/origin/bbc/evil_dir, a symbolic link to data/elsewhere",
        "data/raw/visual_news/origin/bbc/dangling.jpg is a symbolic link to data/gone.jpg, which is missing",
        "data/raw/visual_news/origin/washington_post/images/0004/7.jpg is not a readable image (cannot identify",
        "data/raw/visual_news/origin/bbc/images/0005/9.jpg is not a readable image (image file is truncated",
    ):
        assert words in report
    verite = first["data/test_sets/verite/prepare_report.jsonl"].decode()
    assert "data/raw_verite/images/evil.jpg is a symbolic link to data/outside.jpg" in verite
    for name, data in first.items():
        assert str(tmp_path).encode() not in data, name
