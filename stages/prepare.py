"""Stage `prepare@<name>`: turn a raw dataset folder into items, by the entry's `kind` (default: its name).

`newsclippings`: raw NewsCLIPpings + VisualNews (+ CCN evidence) into data.dir (mmkd.data.newsclippings), counts to
metrics/prepare.json. `verite`: the VERITE CSV and images into the entry's `out` folder, a test split
(mmkd.data.verite), counts to metrics/prepare_<name>.json. Each writes `<split>.parquet`, `<split>.gold.parquet`,
`images/` and `prepare_report.jsonl`; its folder is replaced only by a finished build, and never when it overlaps
the raw data (mmkd.data.staging)."""

import sys
from pathlib import Path

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.data import PrepareInputError
from mmkd.data.newsclippings import NewsClippingsSettings, prepare_newsclippings
from mmkd.data.verite import VeriteSettings, prepare_verite
from mmkd.stage_io import read_params, write_json

KINDS = {"newsclippings": (NewsClippingsSettings, prepare_newsclippings), "verite": (VeriteSettings, prepare_verite)}
WRITES_DATA_DIR = ("newsclippings",)  # the kinds whose output may be data.dir; a test set never replaces it


def main(name: str) -> None:
    setup_logging()
    data = read_params()["data"]
    entry = dict(data["prepare"][name])
    kind, out = entry.pop("kind", name), entry.pop("out", None)
    if kind not in KINDS:
        raise SystemExit(
            f"prepare@{name}: data.prepare.{name} is of kind {kind!r} (its `kind` field, else its name); set kind to "
            f"one of {sorted(KINDS)}"
        )
    if out is None and kind not in WRITES_DATA_DIR:
        raise SystemExit(
            f"prepare@{name}: data.prepare.{name}.out is not set; give the folder to write, e.g. data/{name}"
        )
    settings_class, prepare = KINDS[kind]
    try:
        settings = settings_class(**entry)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"prepare@{name}: data.prepare.{name} in params.yaml: {exc}") from None
    try:
        summary = prepare(settings, Path(out or data["dir"]))  # checks, then rebuilds the folder whole
    except PrepareInputError as exc:
        raise SystemExit(f"prepare@{name}: {exc}") from None
    write_json(paths.metrics_file("prepare" if out is None else f"prepare_{name}"), summary)


if __name__ == "__main__":
    main(sys.argv[1])
