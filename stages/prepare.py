"""Stage `prepare@<name>`: turn raw NewsCLIPpings + VisualNews (+ CCN evidence) into items in data.dir.

Writes `<split>.parquet`, `<split>.gold.parquet`, `images/` and `prepare_report.jsonl` (see mmkd.data.newsclippings)
and the counts to metrics/prepare.json. data.dir is replaced only by a finished build, and never when it overlaps
the raw data (mmkd.data.staging)."""

import sys
from pathlib import Path

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.data import PrepareInputError
from mmkd.data.newsclippings import NewsClippingsSettings, prepare_newsclippings
from mmkd.stage_io import read_params, write_json


def main(name: str) -> None:
    setup_logging()
    data = read_params()["data"]
    try:
        settings = NewsClippingsSettings(**data["prepare"][name])
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"prepare@{name}: data.prepare.{name} in params.yaml: {exc}") from None
    try:
        summary = prepare_newsclippings(settings, Path(data["dir"]))  # checks, then rebuilds data.dir whole
    except PrepareInputError as exc:
        raise SystemExit(f"prepare@{name}: {exc}") from None
    write_json(paths.metrics_file("prepare"), summary)


if __name__ == "__main__":
    main(sys.argv[1])
