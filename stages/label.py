"""Stage `label@<teacher>`: one teacher answers every train and test item -> data/answers/<teacher>/<split>.parquet,
with its accounting in metrics/teachers/<teacher>.json.

Outside DVC, the same script spreads a large run over machines: ``--shard I/N`` labels shard I of N (0-based) into
the answer cache only, ``--merge FILE...`` copies shard caches into this machine's cache, and then
``dvc repro label@<teacher>`` writes the outputs from the cache without sending a request (docs/teacher_servers.md).
"""

import argparse
import logging
import time
from pathlib import Path

from mmkd.answer_cache import AnswerCache, cache_dir_for, cache_path
from mmkd.labelling import LabelTally, label_items, shard_items, teacher_metrics
from mmkd.schema import read_items
from mmkd.stage_io import read_params, setup_logging, write_json
from mmkd.teachers import label_settings, make_teacher
from mmkd.teachers.openai_compat import ConfigError

SPLITS = ("train", "test")  # test answers score the teacher itself at evaluation
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
    args = parser.parse_args()
    setup_logging()
    params = read_params()
    name = args.teacher
    if name not in params["teachers"]:
        raise SystemExit(f"label: no teacher {name!r} in params.yaml; teachers are {sorted(params['teachers'])}")
    teacher_params = params["teachers"][name]
    try:
        settings = label_settings(name, teacher_params)
        backend = make_teacher(name, teacher_params) if not args.merge else None
    except ValueError as exc:  # bad settings, or the API key's environment variable is not set
        raise SystemExit(f"label@{name}: {exc}") from None
    cache_dir = cache_dir_for(settings.cache_dir)
    if (args.shard or args.merge) and cache_dir is None:
        raise SystemExit(f"label: --shard/--merge keep answers in the cache; set teachers.{name}.cache_dir")
    cache = AnswerCache(cache_path(cache_dir, name)) if cache_dir else None

    if args.merge:
        for other in args.merge:
            try:
                added = cache.merge_from(other)
            except FileNotFoundError as exc:
                raise SystemExit(f"label@{name}: {exc}") from None
            log.info("%s: merged %d new answers from %s into %s", name, added, other, cache.path)
        return

    tally, start = LabelTally(), time.perf_counter()
    for split in SPLITS:
        items = read_items(Path(params["data"]["dir"]) / f"{split}.parquet")
        if args.shard:
            items = shard_items(items, *args.shard)
        try:
            answers = label_items(
                backend, items, source=name, prompt_version=settings.prompt_version, cache=cache, tally=tally
            )
        except ConfigError as exc:  # the server refused the key, the model or the URL
            raise SystemExit(str(exc)) from None
        if not args.shard:
            out = Path("data/answers") / name
            out.mkdir(parents=True, exist_ok=True)
            answers.write_parquet(out / f"{split}.parquet")
    metrics = teacher_metrics(backend, tally, time.perf_counter() - start)
    log.info("%s: %s", name, metrics)
    if not args.shard:
        write_json(Path("metrics/teachers") / f"{name}.json", metrics)
    if tally.errors:
        where = f"the answer cache {cache.path}" if cache else "no cache (set cache_dir to keep them)"
        message = (
            f"label@{name}: {tally.errors} of {tally.items} items failed (status 'error' in data/answers/{name}/); "
            f"the other answers are in {where}. Re-run to retry only the failed items"
        )
        if tally.errors > settings.max_errors:
            raise SystemExit(message + f" (teachers.{name}.max_errors is {settings.max_errors}).")
        log.warning(message + ".")


if __name__ == "__main__":
    main()
