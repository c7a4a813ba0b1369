"""One teacher labels the dataset: the work of ``label@<teacher>``, and of its ``--shard`` / ``--merge`` modes.

- ``label_teacher`` answers every item of the labelled splits (or one shard of them, into the cache only) and
  returns the answers and the accounting; answers come from the answer cache, or from this stage's previous
  outputs, before anything is asked (the stage re-runs on every ``dvc repro``, so that earlier failures are retried);
- ``merge_shard_caches`` copies the caches that shards filled on other machines into this machine's cache;
- ``error_budget`` says whether the failed items are within ``max_errors`` (the stage fails when not, after writing
  its outputs, so that a re-run asks only the failed items).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mmkd.inference.answer_cache import AnswerCache, cache_dir_for, cache_path
from mmkd.inference.answering import LabelTally, label_items, run_accounting, shard_items, teacher_metrics
from mmkd.labelling.backends import LabelSettings, label_settings, make_backend
from mmkd.labelling.server.faults import ConfigError
from mmkd.paths import (
    LABELLED_SPLITS,
    answers_file,
    items_file,
    metrics_file,
    missing_test_set_inputs,
    run_log_file,
    test_set_answers,
    test_set_items,
)
from mmkd.schema import SchemaError, answers_frame, read_answers, read_items
from mmkd.stage_io import write_json

log = logging.getLogger(__name__)


class LabelStageError(RuntimeError):
    """A problem the user must fix before this teacher can label (the message names the teacher and the fix)."""


@dataclass
class TeacherRun:
    """What one labelling run produced."""

    answers: dict[str, pl.DataFrame] = field(default_factory=dict)  # answers file -> answers (none for a shard)
    metrics: dict = field(default_factory=dict)  # metrics/teachers/<teacher>.json: the labels (tracked)
    accounting: dict = field(default_factory=dict)  # logs/label/<teacher>.json: this run (untracked)
    tally: LabelTally = field(default_factory=LabelTally)


def teacher_settings(name: str, params: dict) -> LabelSettings:
    """The labelling settings of teacher ``name``, or a ``LabelStageError`` naming what is wrong."""
    try:
        return label_settings(name, params)
    except ValueError as exc:
        raise LabelStageError(f"label@{name}: {exc}") from None


def open_cache(name: str, settings: LabelSettings, *, required: bool = False) -> AnswerCache | None:
    """This machine's answer cache for teacher ``name`` (None without ``cache_dir``, refused when ``required``)."""
    cache_dir = cache_dir_for(settings.cache_dir)
    if cache_dir is None:
        if required:
            raise LabelStageError(f"label: --shard/--merge keep answers in the cache; set teachers.{name}.cache_dir")
        return None
    return AnswerCache(cache_path(cache_dir, name))


def merge_shard_caches(name: str, params: dict, files: list[str]) -> list[tuple[str, int]]:
    """Copy shard caches (``.sqlite`` files) into this machine's cache; returns (file, answers added) per file."""
    cache = open_cache(name, teacher_settings(name, params), required=True)
    merged = []
    try:
        for other in files:
            try:
                added = cache.merge_from(other)
            except FileNotFoundError as exc:
                raise LabelStageError(f"label@{name}: {exc}") from None
            log.info("%s: merged %d new answers from %s into %s", name, added, other, cache.path)
            merged.append((other, added))
    finally:
        cache.close()
    return merged


def labelled_files(teacher: str, data_dir: str | Path, test_sets: list[str]) -> list[tuple[Path, Path]]:
    """What one labelling run of ``teacher`` answers: (items file, answers file) pairs, for the splits of
    ``data_dir`` (``LABELLED_SPLITS``) and each extra test set (``data/test_sets/<set>``)."""
    files = [(items_file(data_dir, split), answers_file(teacher, split)) for split in LABELLED_SPLITS]
    return files + [(test_set_items(s), test_set_answers(teacher, s)) for s in test_sets]


def previous_answers(name: str, path: Path) -> pl.DataFrame:
    """The answers this stage wrote last time at ``path`` (kept by DVC: ``persist``; or pulled from a remote); empty
    when there are none. An unreadable file is ignored with a warning: its items are then asked again."""
    if not path.is_file():
        return answers_frame([])
    try:
        return read_answers(path)
    except (SchemaError, pl.exceptions.PolarsError, OSError) as exc:
        log.warning("%s: ignoring the previous answers in %s (%s); their items are asked again", name, path, exc)
        return answers_frame([])


def label_teacher(
    name: str,
    params: dict,
    data_dir: str | Path,
    *,
    shard: tuple[int, int] | None = None,
    retry_unparsed: bool = False,
    test_sets: list[str] = (),
) -> tuple[TeacherRun, LabelSettings, AnswerCache | None]:
    """Teacher ``name`` answers every item of ``LABELLED_SPLITS`` and of the extra ``test_sets`` (only shard I of N
    with ``shard=(I, N)``). With ``retry_unparsed``, answers that do not parse (empty, or not in the answer format)
    are asked again. ``run.answers`` maps each answers file to its answers.

    Returns the run, the teacher's labelling settings and its cache (still open, or None)."""
    settings = teacher_settings(name, params)
    if problems := missing_test_set_inputs(test_sets):  # before the first request, not after hours of them
        raise LabelStageError(f"label@{name}: " + "\n".join(problems))
    try:
        backend = make_backend(name, params)
    except ValueError as exc:  # bad settings, or the API key's environment variable is not set
        raise LabelStageError(f"label@{name}: {exc}") from None
    cache = open_cache(name, settings, required=shard is not None)
    run, start = TeacherRun(), time.perf_counter()
    for items_path, answers_path in labelled_files(name, data_dir, list(test_sets)):
        items = read_items(items_path)
        if shard is not None:
            items = shard_items(items, *shard)
        try:
            answers = label_items(
                backend,
                items,
                source=name,
                prompt_version=settings.prompt_version,
                cache=cache,
                tally=run.tally,
                previous=previous_answers(name, answers_path),
                retry_unparsed=retry_unparsed,
            )
        except ConfigError as exc:  # the server refused the key, the model or the URL
            raise LabelStageError(str(exc)) from None
        if shard is None:
            run.answers[str(answers_path)] = answers
    run.metrics = teacher_metrics(backend, run.tally)
    run.accounting = run_accounting(backend, run.tally, time.perf_counter() - start)
    return run, settings, cache


def error_budget(name: str, run: TeacherRun, settings: LabelSettings, cache: AnswerCache | None) -> str | None:
    """None when no item failed; else the message to show, raised as ``LabelStageError`` when the failures are
    more than ``max_errors`` (the caller writes its outputs first)."""
    if not run.tally.errors:
        return None
    where = f"the answer cache {cache.path}" if cache is not None else "no cache (set cache_dir to keep them)"
    failed = run.tally.failed
    ids = ", ".join(item_id for item_id, _ in failed) + (", ..." if run.tally.errors > len(failed) else "")
    message = (
        f"label@{name}: {run.tally.errors} of {run.tally.items} items failed ({ids + '; ' if failed else ''}status "
        f"'error' in {answers_file(name, '<split>')}){f'; first error: {failed[0][1]}' if failed else ''}. The other "
        f"answers are in {where}. Re-run to retry only the failed items"
    )
    if run.tally.errors > settings.max_errors:
        raise LabelStageError(message + f" (teachers.{name}.max_errors is {settings.max_errors}).")
    return message + "."


def shard_arg(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N), 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: write it as I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def write_run(name: str, run: TeacherRun, shard: tuple[int, int] | None) -> None:
    """A run's outputs: the answer tables and metrics/teachers/<name>.json (not for a shard, which fills the cache
    only), and its accounting in the git-ignored run log."""
    if not shard:
        for path, answers in run.answers.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            answers.write_parquet(path)
        write_json(metrics_file(f"teachers/{name}"), run.metrics)
    write_json(run_log_file(f"label/{name}{'.shard' if shard else ''}"), run.accounting)
    log.info("%s: %s", name, run.accounting)


def interrupted(name: str) -> str:
    """What an interrupted run says: each answer was committed to the cache as it came, so nothing is lost."""
    return (
        f"label@{name}: interrupted; the answers received so far are in the answer cache "
        f"(teachers.{name}.cache_dir) and the next run asks only the others"
    )
