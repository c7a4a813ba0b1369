"""Moving items out to people and labels back in: ``mmkd annotate export`` and ``mmkd annotate import``.

Export writes, into one folder: ``tasks.json`` (Label Studio tasks), ``label_config.xml`` (the project's
labelling interface), ``queue.jsonl`` and ``queue.csv`` (the same queue as plain rows, with the item's fields),
and keeps ``queue.jsonl`` as the record an import is checked against. Import reads Label Studio's JSON export, or
plain JSONL/CSV rows (``id``, ``label``, ``annotator``, ``time``, optional ``note``), checks every row, and either
appends all of them to the per-split labels files or changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mmkd.annotation.label_studio import DEFAULT_CHOICES, answer_text, judgements_from_export, label_config, task
from mmkd.annotation.labels import append_label_rows, read_label_rows, resolve, row_problem
from mmkd.annotation.queue import QueuedItem

QUEUE_FILE = "queue.jsonl"


def export_queue(
    queue: list[QueuedItem],
    items: dict[str, pl.DataFrame],
    items_dirs: dict[str, Path],
    answers: dict[str, dict[str, pl.DataFrame]],
    out: str | Path,
    *,
    show_teachers: bool,
    choices: dict[str, str] = DEFAULT_CHOICES,
) -> dict[str, int]:
    """Write the queue for people. ``items``/``items_dirs``: per split, the items table and the folder its
    ``image_path`` is relative to; ``answers``: per split, teacher -> answers. Returns counts by purpose."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teachers = sorted({t for by_teacher in answers.values() for t in by_teacher})
    by_id = {split: {row["id"]: row for row in frame.iter_rows(named=True)} for split, frame in items.items()}
    tasks, plain = [], []
    for rank, queued in enumerate(queue, start=1):
        item = by_id[queued.split][queued.id]
        shown = {}
        if show_teachers:
            for t in teachers:
                frame = answers.get(queued.split, {}).get(t)
                hit = None if frame is None else frame.filter(pl.col("id") == queued.id)
                shown[t] = None if hit is None or hit.is_empty() else hit.row(0, named=True)
        image = items_dirs[queued.split] / item["image_path"]
        tasks.append(task(item, image, queued.split, queued.purpose, rank, shown))
        row = {"rank": rank, **queued.__dict__, "image_path": image.as_posix(), "caption": item["caption"]}
        plain.append(row | {f"{t}_answer": answer_text(a) for t, a in shown.items()})
    (out / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n")
    (out / "label_config.xml").write_text(label_config(teachers, show_teachers=show_teachers, choices=choices))
    (out / QUEUE_FILE).write_text("".join(json.dumps(row) + "\n" for row in plain))
    pl.DataFrame(plain, infer_schema_length=None).write_csv(out / "queue.csv")
    counts: dict[str, int] = {}
    for queued in queue:
        counts[queued.purpose] = counts.get(queued.purpose, 0) + 1
    return counts


@dataclass
class ImportResult:
    """What an import found: rows it would append per split, fatal problems, skipped tasks, agreement."""

    rows: dict[str, list[dict]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    disputed: list[str] = field(default_factory=list)
    agreement: dict = field(default_factory=dict)


def read_judgements(path: str | Path, *, annotator: str | None, choices: dict[str, str]) -> tuple[list, list, list]:
    """(judgements, problems, skipped) from a Label Studio JSON export, or a plain .jsonl/.csv file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        try:
            return judgements_from_export(json.loads(text), choices)
        except json.JSONDecodeError as exc:
            return [], [f"{path}: not JSON ({exc.msg} at line {exc.lineno})"], []
    if path.suffix == ".jsonl":
        rows, problems = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    problems.append(f"{path}:{number}: not JSON ({exc.msg})")
    elif path.suffix == ".csv":
        rows, problems = list(csv.DictReader(io.StringIO(text))), []
    else:
        return [], [f"{path}: unknown format; give a Label Studio .json export, or .jsonl or .csv rows"], []
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for row in rows:
        if isinstance(row, dict):
            row.setdefault("annotator", annotator)
            row["time"] = row.get("time") or now
            row.setdefault("origin", path.suffix.lstrip("."))
            for key in [k for k, v in row.items() if v in (None, "") and k in ("note",)]:
                del row[key]
    return rows, problems, []


def check_import(
    judgements: list[dict], queue_dir: str | Path, labels_files: dict[str, Path], problems: list[str]
) -> ImportResult:
    """Check judgements against the exported queue; route each to its split's labels file. Nothing is written."""
    queue_path = Path(queue_dir) / QUEUE_FILE
    if not queue_path.exists():
        return ImportResult(problems=[f"{queue_path} not found: run `mmkd annotate export` first"])
    split_of = {row["id"]: row["split"] for row in map(json.loads, queue_path.read_text().splitlines())}
    result = ImportResult(problems=list(problems))
    for row in judgements:
        problem = row_problem(row)
        if problem is None and row["id"] not in split_of:
            problem = f"item {row['id']!r} is not in the exported queue ({queue_path}): a typo, or another queue"
        if problem:
            result.problems.append(problem)
            continue
        result.rows.setdefault(split_of[row["id"]], []).append(row)
    for split, rows in result.rows.items():
        resolution = resolve(read_label_rows(labels_files[split]) + rows)
        result.disputed += [i for i in resolution.disputed if any(r["id"] == i for r in rows)]
        result.agreement[split] = resolution.agreement
    return result


def apply_import(result: ImportResult, labels_files: dict[str, Path]) -> None:
    """Append the checked judgements, split by split (each file atomically); only when there is no problem."""
    if result.problems:
        raise ValueError("an import with problems writes nothing")
    for split, rows in result.rows.items():
        append_label_rows(labels_files[split], rows)
