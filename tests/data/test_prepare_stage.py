"""The `prepare` stage through real DVC, in a temp repo composed with `data=newsclippings bootstrap=none`: the
stage list has `prepare@newsclippings` and no demo stages; `dvc repro` of it on a `dvc add`-ed raw folder writes
the items and metrics; a change to a raw file makes it stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dvc_env import dvc_ok as dvc
from dvc_env import pipeline_repo
from newsclippings_fixture import EXPECTED_SUMMARY, MAX_PIXELS, build_raw

from mmkd.cli import compose
from mmkd.schema import read_items

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["data=newsclippings", "bootstrap=none", f"data.prepare.newsclippings.max_image_pixels={MAX_PIXELS}"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """dvc.yaml, stages/, src/ and conf/ of this checkout, with params composed for NewsCLIPpings."""
    return pipeline_repo(ROOT, tmp_path_factory.mktemp("newsclippings_repo"), compose(OVERRIDES, ROOT / "conf"))


def test_stage_list_has_prepare_and_no_demo_stages(repo):
    names = {line.split()[0] for line in dvc(repo, "stage", "list").stdout.splitlines() if line.strip()}
    assert "prepare@newsclippings" in names
    assert not {n for n in names if n.split("@")[0] in ("world", "bootstrap")}, names


def test_repro_prepares_the_raw_folder_and_tracks_it(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())["data"]
    raw = repo / params["prepare"]["newsclippings"]["raw"]
    build_raw(raw)
    dvc(repo, "add", "-q", str(raw.relative_to(repo)))
    dvc(repo, "repro", "prepare@newsclippings")

    assert json.loads((repo / "metrics/prepare.json").read_text()) == EXPECTED_SUMMARY
    items = read_items(repo / params["dir"] / "train.parquet")
    assert len(items) == 4 and all(Path(p).is_file() for p in items["image_path"])
    status = dvc(repo, "status", "prepare@newsclippings")
    assert "up to date" in status.stdout, status.stdout

    data_json = raw / "visual_news/origin/data.json"
    data_json.write_text(data_json.read_text().replace("Flood waters rise", "Flood waters fall"))
    status = json.loads(dvc(repo, "status", "--json", "prepare@newsclippings").stdout)
    assert "prepare@newsclippings" in status, status
