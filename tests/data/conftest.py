"""Fixtures of the ingestion tests: a freshly built NewsCLIPpings-format raw folder per test."""

from __future__ import annotations

import pytest
from newsclippings_fixture import RawData, build_raw


@pytest.fixture
def raw_data(tmp_path) -> RawData:
    return build_raw(tmp_path / "raw")
