"""`mmkd.data.kinds`: a params entry becomes a checked job (kind, settings, folder, metrics file, gold file) or a
message naming the setting and the fix; `run_job` prepares the folder and moves a test set's gold labels apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from verite_fixture import EXPECTED_SUMMARY, MAX_PIXELS, build_verite

from mmkd.data import PrepareInputError
from mmkd.data.kinds import KINDS, prepare_job, run_job
from mmkd.data.newsclippings import NewsClippingsSettings, prepare_newsclippings
from mmkd.data.verite import VeriteSettings, prepare_verite
from mmkd.schema import read_gold, read_items

VERITE = {"kind": "verite", "raw": "data/verite_raw", "max_image_pixels": MAX_PIXELS}


def data(prepare: dict | None = None, prepare_test: dict | None = None) -> dict:
    """The ``data`` section of params.yaml with these entries."""
    return {"dir": "data/newsclippings", "prepare": prepare or {}, "prepare_test": prepare_test or {}}


def test_each_kind_names_its_settings_and_prepare_function():
    assert KINDS["newsclippings"].settings is NewsClippingsSettings
    assert KINDS["newsclippings"].prepare is prepare_newsclippings
    assert KINDS["verite"].settings is VeriteSettings and KINDS["verite"].prepare is prepare_verite
    assert KINDS["newsclippings"].writes_data_dir and not KINDS["newsclippings"].test_set
    assert KINDS["verite"].test_set and not KINDS["verite"].writes_data_dir  # a test set never replaces data.dir


def test_a_newsclippings_entry_writes_data_dir_and_metrics_prepare():
    job = prepare_job("newsclippings", data({"newsclippings": {"raw": "data/raw", "limit": 5}}))
    assert job.kind is KINDS["newsclippings"] and job.settings == NewsClippingsSettings(raw="data/raw", limit=5)
    assert (job.out_dir, job.metrics, job.gold) == (Path("data/newsclippings"), Path("metrics/prepare.json"), None)


def test_a_kind_by_field_writes_its_out_folder_and_its_own_metrics():
    job = prepare_job("vt", data({"vt": VERITE | {"out": "data/vt"}}))
    assert job.kind is KINDS["verite"] and job.settings.split == "test"
    assert (job.out_dir, job.metrics, job.gold) == (Path("data/vt"), Path("metrics/prepare_vt.json"), None)


def test_a_test_set_is_written_under_data_test_sets_with_its_gold_apart():
    job = prepare_job("verite", data(prepare_test={"verite": VERITE | {"split": "val"}}), test_set=True)
    assert job.settings.split == "test"  # what evaluate reads, whatever the entry says
    assert job.out_dir == Path("data/test_sets/verite") and job.metrics == Path("metrics/prepare_verite.json")
    assert job.gold == Path("data/test_gold/verite/test.gold.parquet")


@pytest.mark.parametrize(
    ("name", "entries", "test_set", "message"),
    [
        ("absent", {}, False, r"^no entry data\.prepare\.absent in params\.yaml$"),
        ("absent", {}, True, r"^no entry data\.prepare_test\.absent in params\.yaml$"),
        ("coco", {"coco": {"raw": "r", "out": "d"}}, False, r"data\.prepare\.coco is of kind 'coco' .*'verite'\]$"),
        ("no_out", {"no_out": VERITE}, False, r"^data\.prepare\.no_out\.out is not set; .* e\.g\. data/no_out$"),
        ("bad", {"bad": VERITE | {"out": "o", "split": "a/b"}}, False, r"data\.prepare\.bad in params\.yaml: split"),
        ("big", {"big": VERITE | {"out": "o", "max_image_pixels": 2 * 10**9}}, False, r"more than the 400000000"),
        ("typo", {"typo": VERITE | {"out": "o", "rwa": "x"}}, False, r"data\.prepare\.typo in params\.yaml: .*'rwa'"),
        ("news", {"news": {"raw": "r", "kind": "newsclippings"}}, True, r"kind 'newsclippings' is not a test set"),
        ("with_out", {"with_out": VERITE | {"out": "x"}}, True, r"^remove data\.prepare_test\.with_out\.out; "),
        ("../up", {"../up": VERITE}, True, r"^a test set's name is a folder under data/test_sets"),
    ],
)
def test_an_entry_that_cannot_run_is_refused_naming_the_setting(name, entries, test_set, message):
    params = data(prepare_test=entries) if test_set else data(entries)
    with pytest.raises(PrepareInputError, match=message):
        prepare_job(name, params, test_set=test_set)


def test_run_job_prepares_the_test_set_and_moves_its_gold_labels_apart(tmp_path, monkeypatch):
    build_verite(tmp_path / "data/verite_raw")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/test_gold/verite").mkdir(parents=True)
    (tmp_path / "data/test_gold/verite/stale.parquet").write_bytes(b"from an earlier run")
    job = prepare_job("verite", data(prepare_test={"verite": VERITE}), test_set=True)
    assert run_job(job) == EXPECTED_SUMMARY
    assert sorted(p.name for p in (tmp_path / "data/test_gold/verite").iterdir()) == ["test.gold.parquet"]
    assert not (tmp_path / "data/test_sets/verite/test.gold.parquet").exists()
    gold = read_gold(tmp_path / "data/test_gold/verite/test.gold.parquet")
    assert gold["id"].to_list() == read_items(tmp_path / "data/test_sets/verite/test.parquet")["id"].to_list()
