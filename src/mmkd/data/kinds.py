"""What the ``prepare`` stages run: the registry of prepare kinds, and the check of one params entry into a job.

A ``data.prepare.<name>`` (or ``data.prepare_test.<name>``) entry names its dataset's ``kind`` (default: its name);
``KINDS`` maps each kind to its settings class and its prepare function, and says whether it can be an extra test
set and whether it may write ``data.dir``. ``prepare_job`` checks the entry against the kind and the stage (every
problem a ``PrepareInputError`` naming the setting and the fix), ``run_job`` prepares the folder; ``stages/prepare.py``
only reads params, calls these two and writes the metrics.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmkd import paths
from mmkd.data import PrepareInputError
from mmkd.data.newsclippings import NewsClippingsSettings, prepare_newsclippings
from mmkd.data.records import PrepareSettings
from mmkd.data.table import TableSettings, prepare_table
from mmkd.data.verite import VeriteSettings, prepare_verite


@dataclass(frozen=True)
class Kind:
    """One way of turning a raw folder into items: its settings (the entry's fields) and its prepare function."""

    settings: type[PrepareSettings]
    prepare: Callable[..., dict]  # (settings, out_dir) -> the summary written to the stage's metrics
    test_set: bool  # prepare_test@<name> accepts it: it writes one `split` (set to "test" there)
    writes_data_dir: bool  # its `out` may be left unset, meaning data.dir (the training data); else `out` is needed


# The one place a prepare kind is registered: an entry's `kind` is looked up here.
KINDS: dict[str, Kind] = {
    "newsclippings": Kind(NewsClippingsSettings, prepare_newsclippings, test_set=False, writes_data_dir=True),
    "verite": Kind(VeriteSettings, prepare_verite, test_set=True, writes_data_dir=False),
    "table": Kind(TableSettings, prepare_table, test_set=False, writes_data_dir=True),
}


@dataclass(frozen=True)
class PrepareJob:
    """One checked entry: what to run, on which settings, into which folder, and where its counts go."""

    kind: Kind
    settings: PrepareSettings
    out_dir: Path
    metrics: Path
    gold: Path | None  # a test set's gold labels go here, out of the folder labelling reads; None: they stay


def prepare_job(name: str, data: dict, *, test_set: bool = False) -> PrepareJob:
    """The job of entry ``data.prepare.<name>`` (``data.prepare_test.<name>`` when ``test_set``) of params'
    ``data`` section, or a PrepareInputError that names the setting and what to set."""
    group = "prepare_test" if test_set else "prepare"
    where = f"data.{group}.{name}"
    if name not in (data.get(group) or {}):
        raise PrepareInputError(f"no entry {where} in params.yaml")
    entry = dict(data[group][name])
    kind_name, out = entry.pop("kind", name), entry.pop("out", None)
    if test_set:
        if not paths.TEST_SET_NAME.fullmatch(name):
            raise PrepareInputError(
                f"a test set's name is a folder under {paths.TEST_SETS} (letters, digits, _ . -; no path): rename the "
                "data.prepare_test entry"
            )
        if out is not None:
            raise PrepareInputError(f"remove {where}.out; a test set is written to {paths.TEST_SETS / name}")
        out = str(paths.TEST_SETS / name)
    if kind_name not in KINDS:
        raise PrepareInputError(
            f"{where} is of kind {kind_name!r} (its `kind` field, else its name); set kind to one of {sorted(KINDS)}"
        )
    kind = KINDS[kind_name]
    if out is None and not kind.writes_data_dir:
        raise PrepareInputError(f"{where}.out is not set; give the folder to write, e.g. data/{name}")
    if test_set and not kind.test_set:
        tests = sorted(k for k, v in KINDS.items() if v.test_set)
        raise PrepareInputError(f"kind {kind_name!r} is not a test set; use one of {tests}")
    if test_set:
        entry["split"] = "test"  # what evaluate reads: data/test_sets/<name>/test.parquet
    try:
        settings = kind.settings(**entry)
    except (TypeError, ValueError) as exc:
        raise PrepareInputError(f"{where} in params.yaml: {exc}") from None
    return PrepareJob(
        kind,
        settings,
        Path(out or data["dir"]),
        paths.metrics_file("prepare" if out is None else f"prepare_{name}"),
        paths.test_set_gold(name) if test_set else None,
    )


def run_job(job: PrepareJob) -> dict:
    """Prepare the job's folder (checked, then rebuilt whole); move a test set's gold labels apart; return the
    summary."""
    summary = job.kind.prepare(job.settings, job.out_dir)
    if job.gold is not None:  # the gold labels leave the folder labelling reads
        if job.gold.parent.exists():
            shutil.rmtree(job.gold.parent)
        job.gold.parent.mkdir(parents=True)
        shutil.move(job.out_dir / job.gold.name, job.gold)
    return summary
