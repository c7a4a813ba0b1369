"""Stage `prepare@<name>`: turn a raw dataset folder into items, by the entry's `kind` (default: its name).

The kinds are registered in mmkd.data.kinds.KINDS. `newsclippings`: raw NewsCLIPpings + VisualNews (+ CCN evidence)
into data.dir (mmkd.data.newsclippings), counts to metrics/prepare.json. `verite`: the VERITE CSV and images into the
entry's `out` folder, a test split (mmkd.data.verite), counts to metrics/prepare_<name>.json. Each writes
`<split>.parquet`, `<split>.gold.parquet`, `images/` and `prepare_report.jsonl`; its folder is replaced only by a
finished build, and never when it overlaps the raw data (mmkd.data.staging).

Stage `prepare_test@<name>` (``--test-set``): an extra test set from ``data.prepare_test.<name>`` (e.g. VERITE),
written as a ``test`` split into data/test_sets/<name>, with its gold labels moved apart into data/test_gold/<name>
(labelling reads the first folder, only evaluate the second); counts to metrics/prepare_<name>.json."""

import argparse

from mmkd.console import setup_logging
from mmkd.data import PrepareInputError
from mmkd.data.kinds import prepare_job, run_job
from mmkd.stage_io import read_params, write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--test-set", action="store_true", help="an extra test set (data.prepare_test.NAME)")
    args = parser.parse_args(argv)
    setup_logging()
    stage = f"{'prepare_test' if args.test_set else 'prepare'}@{args.name}"
    try:
        job = prepare_job(args.name, read_params()["data"], test_set=args.test_set)
        summary = run_job(job)  # checks the inputs, then rebuilds the folder whole
    except PrepareInputError as exc:
        raise SystemExit(f"{stage}: {exc}") from None
    write_json(job.metrics, summary)


if __name__ == "__main__":
    main()
