"""Gold files are read strictly: a label that is missing or unknown is a named error, never a silent drop."""

from __future__ import annotations

import polars as pl
import pytest

from mmkd.schema import FALSIFIED, PRISTINE, SchemaError, read_gold


def write_gold(path, labels: list[str | None]):
    ids = [f"item-{i}" for i in range(len(labels))]
    pl.DataFrame({"id": ids, "gold_label": labels}, schema={"id": pl.String, "gold_label": pl.String}).write_parquet(
        path
    )
    return path


def test_known_labels_are_read_as_they_are(tmp_path):
    gold = read_gold(write_gold(tmp_path / "g.parquet", [FALSIFIED, PRISTINE]))
    assert gold["gold_label"].to_list() == [FALSIFIED, PRISTINE]


def test_a_null_label_names_the_count_an_item_and_the_fix(tmp_path):
    path = write_gold(tmp_path / "g.parquet", [FALSIFIED, None, None])
    with pytest.raises(SchemaError, match=r"g\.parquet: 2 item\(s\) have no gold_label \(null\), e.g. 'item-1'"):
        read_gold(path)


def test_an_unknown_label_names_the_item_and_the_labels(tmp_path):
    path = write_gold(tmp_path / "g.parquet", [FALSIFIED, "fake"])
    with pytest.raises(SchemaError, match=r"item 'item-1' has gold_label 'fake'; use one of"):
        read_gold(path)
