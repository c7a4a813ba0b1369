"""Stage `label@<teacher>`: one teacher answers every item of train, val, test and each extra test set
(`data.test_sets`) -> data/answers/<teacher>/, metrics/teachers/<teacher>.json (mmkd.labelling.teachers).

Outside DVC, the same script spreads a large run over machines: ``--shard I/N`` labels shard I of N (0-based) into
the answer cache only, ``--merge FILE...`` copies shard caches into this machine's cache, and then
``dvc repro label@<teacher>`` writes the outputs from the cache without sending a request (docs/teacher_servers.md).
``--retry-unparsed`` asks again the items whose cached answer does not parse (cached for good otherwise); the new
answers replace them in the cache, for the next ``dvc repro`` to record.
"""

# ruff: noqa: E402
from mmkd.numerics import pin_stage_numerics

if __name__ == "__main__":  # first: torch, MKL and oneDNN fix their kernels' ISA and threads as they load
    pin_stage_numerics()  # the `numerics` params (mmkd.numerics)
import argparse
import logging

from mmkd.console import setup_logging
from mmkd.labelling import teachers
from mmkd.stage_io import read_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher")
    parser.add_argument(
        "--shard", type=teachers.shard_arg, metavar="I/N", help="label shard I of N into the cache only"
    )
    parser.add_argument("--merge", nargs="+", metavar="FILE", help="copy shard caches (.sqlite) into the cache")
    parser.add_argument("--retry-unparsed", action="store_true", help="ask again cached answers that do not parse")
    args = parser.parse_args()
    setup_logging()
    params, name = read_params(), args.teacher
    if name not in params["teachers"]:
        raise SystemExit(f"label: no teacher {name!r} in params.yaml; teachers are {sorted(params['teachers'])}")
    teacher, data = params["teachers"][name], params["data"]
    try:
        if args.merge:
            return teachers.merge_shard_caches(name, teacher, args.merge)
        run, settings, cache = teachers.label_teacher(
            name,
            teacher,
            data["dir"],
            shard=args.shard,
            retry_unparsed=args.retry_unparsed,
            test_sets=data["test_sets"],
        )
        teachers.write_run(name, run, args.shard)
        if (warning := teachers.error_budget(name, run, settings, cache)) is not None:
            logging.getLogger("label").warning(warning)
    except teachers.LabelStageError as exc:
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:  # each answer was committed to the cache as it came: the next run resumes from there
        raise SystemExit(teachers.interrupted(name)) from None


if __name__ == "__main__":
    main()
