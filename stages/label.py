"""Stage `label@<teacher>`: one teacher answers every train, val and test item, and every item of each extra test
set (`data.test_sets`) -> data/answers/<teacher>/<split>.parquet and test_sets/<set>.parquet, with its accounting in
metrics/teachers/<teacher>.json (see mmkd.labelling.teachers).

Outside DVC, the same script spreads a large run over machines: ``--shard I/N`` labels shard I of N (0-based) into
the answer cache only, ``--merge FILE...`` copies shard caches into this machine's cache, and then
``dvc repro label@<teacher>`` writes the outputs from the cache without sending a request (docs/teacher_servers.md).
``--retry-unparsed`` asks again the items whose answer was cached but does not parse (an empty reply, a reply not in
the answer format): they are cached for good otherwise; the new answers replace them in the cache, so the next
``dvc repro`` (run it after, to record the outputs) uses them.
"""

import argparse
import logging
from pathlib import Path

from mmkd.console import setup_logging
from mmkd.labelling.teachers import LabelStageError, error_budget, label_teacher, merge_shard_caches
from mmkd.paths import metrics_file, run_log_file
from mmkd.stage_io import read_params, write_json

log = logging.getLogger("label")


def shard_arg(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: write it as I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher")
    parser.add_argument("--shard", type=shard_arg, metavar="I/N", help="label shard I of N into the cache only")
    parser.add_argument("--merge", nargs="+", metavar="FILE", help="copy shard caches (.sqlite) into the cache")
    parser.add_argument(
        "--retry-unparsed",
        action="store_true",
        help="ask again the items whose cached answer does not parse (empty, or not in the answer format)",
    )
    args = parser.parse_args()
    setup_logging()
    params = read_params()
    name = args.teacher
    if name not in params["teachers"]:
        raise SystemExit(f"label: no teacher {name!r} in params.yaml; teachers are {sorted(params['teachers'])}")
    try:
        if args.merge:
            merge_shard_caches(name, params["teachers"][name], args.merge)
            return
        run, settings, cache = label_teacher(
            name,
            params["teachers"][name],
            params["data"]["dir"],
            shard=args.shard,
            retry_unparsed=args.retry_unparsed,
            test_sets=params["data"]["test_sets"],
        )
        if not args.shard:  # a shard fills the cache only; the stage's outputs come from the merged cache
            for path, answers in run.answers.items():
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                answers.write_parquet(path)
            write_json(metrics_file(f"teachers/{name}"), run.metrics)
        write_json(run_log_file(f"label/{name}{'.shard' if args.shard else ''}"), run.accounting)
        log.info("%s: %s", name, run.accounting)
        if (warning := error_budget(name, run, settings, cache)) is not None:
            log.warning(warning)
    except LabelStageError as exc:
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:  # each answer was committed to the cache as it came: the next run resumes from there
        raise SystemExit(
            f"label@{name}: interrupted; the answers received so far are in the answer cache "
            f"(teachers.{name}.cache_dir) and the next run asks only the others"
        ) from None


if __name__ == "__main__":
    main()
