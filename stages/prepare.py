"""Stage `prepare@<name>`: turn a raw dataset folder into items, by the entry's `kind` (default: its name).

`newsclippings`: raw NewsCLIPpings + VisualNews (+ CCN evidence) into data.dir (mmkd.data.newsclippings), counts to
metrics/prepare.json. `verite`: the VERITE CSV and images into the entry's `out` folder, a test split
(mmkd.data.verite), counts to metrics/prepare_<name>.json. Each writes `<split>.parquet`, `<split>.gold.parquet`,
`images/` and `prepare_report.jsonl`; its folder is replaced only by a finished build, and never when it overlaps
the raw data (mmkd.data.staging).

Stage `prepare_test@<name>` (``--test-set``): an extra test set from ``data.prepare_test.<name>`` (e.g. VERITE),
written as a ``test`` split into data/test_sets/<name>, with its gold labels moved apart into data/test_gold/<name>
(labelling reads the first folder, only evaluate the second); counts to metrics/prepare_<name>.json."""

import argparse
import shutil
from pathlib import Path

from mmkd import paths
from mmkd.console import setup_logging
from mmkd.data import PrepareInputError
from mmkd.data.newsclippings import NewsClippingsSettings, prepare_newsclippings
from mmkd.data.verite import VeriteSettings, prepare_verite
from mmkd.stage_io import read_params, write_json

KINDS = {"newsclippings": (NewsClippingsSettings, prepare_newsclippings), "verite": (VeriteSettings, prepare_verite)}
TEST_SET_KINDS = ("verite",)  # the kinds that prepare_test@<name> accepts (one test split each)
WRITES_DATA_DIR = ("newsclippings",)  # the kinds whose output may be data.dir; a test set never replaces it


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--test-set", action="store_true", help="an extra test set (data.prepare_test.NAME)")
    args = parser.parse_args(argv)
    setup_logging()
    name, data = args.name, read_params()["data"]
    group = "prepare_test" if args.test_set else "prepare"
    if name not in (data.get(group) or {}):
        raise SystemExit(f"prepare@{name}: no entry data.{group}.{name} in params.yaml")
    entry = dict(data[group][name])
    kind, out = entry.pop("kind", name), entry.pop("out", None)
    if args.test_set:
        if not paths.TEST_SET_NAME.fullmatch(name):
            raise SystemExit(
                f"prepare_test@{name}: a test set's name is a folder under {paths.TEST_SETS} (letters, digits, _ . -; "
                "no path): rename the data.prepare_test entry"
            )
        if out is not None:
            raise SystemExit(
                f"prepare_test@{name}: remove data.prepare_test.{name}.out; a test set is written to "
                f"{paths.TEST_SETS / name}"
            )
        out = str(paths.TEST_SETS / name)
    if kind not in KINDS:
        raise SystemExit(
            f"prepare@{name}: data.prepare.{name} is of kind {kind!r} (its `kind` field, else its name); set kind to "
            f"one of {sorted(KINDS)}"
        )
    if out is None and kind not in WRITES_DATA_DIR:
        raise SystemExit(
            f"prepare@{name}: data.prepare.{name}.out is not set; give the folder to write, e.g. data/{name}"
        )
    if args.test_set and kind not in TEST_SET_KINDS:
        raise SystemExit(f"prepare_test@{name}: kind {kind!r} is not a test set; use one of {TEST_SET_KINDS}")
    settings_class, prepare = KINDS[kind]
    if args.test_set:
        entry["split"] = "test"  # what evaluate reads: data/test_sets/<name>/test.parquet
    try:
        settings = settings_class(**entry)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"prepare@{name}: data.prepare.{name} in params.yaml: {exc}") from None
    try:
        summary = prepare(settings, Path(out or data["dir"]))  # checks, then rebuilds the folder whole
    except PrepareInputError as exc:
        raise SystemExit(f"prepare@{name}: {exc}") from None
    if args.test_set:  # the gold labels leave the folder labelling reads
        gold = paths.test_set_gold(name)
        if gold.parent.exists():
            shutil.rmtree(gold.parent)
        gold.parent.mkdir(parents=True)
        shutil.move(Path(out) / gold.name, gold)
    write_json(paths.metrics_file("prepare" if out is None else f"prepare_{name}"), summary)


if __name__ == "__main__":
    main()
