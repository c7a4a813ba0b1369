"""The `prepare` stage script run directly (as `python stages/prepare.py newsclippings` in a project folder): a
data.dir that holds the raw folder is refused with a one-line message and the raw data survives; a hostile raw
folder (a link out of the image root, one image spelled two ways) is prepared with its report and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from dvc_env import describe, offline_env
from newsclippings_fixture import MAX_PIXELS, add_annotations, add_records, annotation, build_raw, record

from mmkd.schema import read_items

SCRIPT = Path(__file__).resolve().parents[2] / "stages/prepare.py"


def project(folder: Path, data_dir: str) -> Path:
    """A project folder with params.yaml for NewsCLIPpings and the fixture's raw folder at data/raw."""
    build_raw(folder / "data/raw")
    settings = {"raw": "data/raw", "evidence": "queries_dataset/merged_balanced", "max_image_pixels": MAX_PIXELS}
    params = {"data": {"dir": data_dir, "prepare": {"newsclippings": settings}}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder / "data/raw"


def stage(folder: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "newsclippings"]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=offline_env(), timeout=300)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_data_dir_holding_the_raw_folder_is_refused_and_the_raw_data_kept(tmp_path):
    raw = project(tmp_path, data_dir="data")
    before = files(raw)
    result = stage(tmp_path)
    assert result.returncode != 0, describe(result)
    assert "prepare@newsclippings: data.dir data" in result.stderr and "contains the input raw" in result.stderr
    assert "Traceback" not in result.stderr
    assert files(raw) == before
    assert not (tmp_path / "metrics").exists()


def test_a_hostile_raw_folder_is_prepared_with_its_report(tmp_path):
    raw = project(tmp_path, data_dir="data/newsclippings")
    outside = tmp_path / "outside.jpg"
    os.link(raw / "visual_news/origin/bbc/images/0001/1.jpg", outside)
    os.symlink(outside, raw / "visual_news/origin/bbc/evil.jpg")
    add_records(
        raw, [record(50, "Caption 50.", "bbc/evil.jpg"), record(51, "Caption 51.", "bbc\\images\\0001\\1.jpg")]
    )
    ids = add_annotations(raw, "train", [annotation(50, 50, False), annotation(51, 51, False)])
    result = stage(tmp_path)
    assert result.returncode == 0, describe(result)
    out = tmp_path / "data/newsclippings"
    rows = [json.loads(line) for line in (out / "prepare_report.jsonl").read_text().splitlines()]
    assert [(r["item_id"], r["reason"], r["dropped"]) for r in rows if r["item_id"] in ids] == [
        (ids[0], "path_outside_root", True)
    ]
    train = read_items(out / "train.parquet")
    assert train["id"].to_list() == [f"train-{i:06d}" for i in range(4)] + [ids[1]]
    assert train["caption"].to_list()[-1] == "Caption 51."
    metrics = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert metrics["splits"]["train"]["dropped_by_reason"]["path_outside_root"] == 3
    assert metrics["images"] == {"distinct_used": 4, "hardlink": 4}
    assert not [p for p in out.rglob("*") if p.is_symlink()]
