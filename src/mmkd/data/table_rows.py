"""Reading a table of posts (``mmkd.data.table``) one row at a time, whatever its format: CSV, JSONL or Parquet,
chosen by the file's extension.

Each format gives its column names before any row is read, so a missing column stops the run before anything is
written: a CSV's header; for JSONL, every key of every object (one pass over the file first); a Parquet file's
schema. A row that cannot be read at all (a CSV row with another number of fields than the header, a JSONL line
that is not a JSON object) is a ``TableRow`` with a problem instead of values, so it gets a report line and the
run goes on. Missing and empty values are None: an empty CSV cell, a JSONL key the object lacks, a Parquet null.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmkd.data import PrepareInputError
from mmkd.data.raw_paths import Resolved, open_regular
from mmkd.data.records import short_repr

FORMATS: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}  # extension -> format
BATCH_ROWS = 4096  # Parquet rows read at a time


@dataclass(frozen=True)
class TableRow:
    """One data row: where it is (for messages), its position and its values, or why it could not be read."""

    where: str  # "posts.csv line 7" (a CSV record over several lines: its last), "posts.parquet row 3"
    index: int  # the data row's position in the table, from 0 (the report's ``index``)
    values: dict[str, object] | None  # column -> value (None: missing or empty); None when the row is unreadable
    problem: str | None = None  # why the row could not be read


@dataclass(frozen=True)
class OpenTable:
    """A table ready to read: its format, its columns (in file order) and its rows (read once, in order)."""

    format: str
    columns: tuple[str, ...]
    rows: Iterator[TableRow]


def table_format(path: str) -> str:
    """The format of a table by its extension; a PrepareInputError for any other extension."""
    found = FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise PrepareInputError(
            f"data.prepare.<name>.table is {path!r}; a table of posts must be a .csv, .jsonl or .parquet file "
            "(docs/own_data.md): convert it, or fix the setting"
        )
    return found


def open_table(file: Resolved, shown: Path) -> OpenTable:
    """Open the table at ``file`` (``shown`` names it in messages); its columns are checked by the caller."""
    fmt = table_format(shown.name)
    read = {"csv": _csv, "jsonl": _jsonl, "parquet": _parquet}[fmt]
    columns, rows = read(file, shown)
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise PrepareInputError(f"{shown} has the column(s) {repeated} more than once; give each column one name")
    return OpenTable(fmt, tuple(columns), rows)


def _csv(file: Resolved, shown: Path) -> tuple[list[str], Iterator[TableRow]]:
    """A CSV file with a header line. Bytes that are not UTF-8 become U+FFFD (reported by the caption check, or a
    path that matches no file); a byte-order mark is dropped; blank lines are no rows."""
    text = io.TextIOWrapper(open_regular(file), encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        text.close()
        raise PrepareInputError(f"{shown} is not a readable CSV file ({exc}); export it again") from exc
    if header is None:
        text.close()
        raise PrepareInputError(f"{shown} is empty; it needs a header line (id,image_path,caption,...) and rows")

    def rows() -> Iterator[TableRow]:
        index = 0
        with text:
            try:
                for fields in reader:
                    if not fields:
                        continue
                    where = f"{shown.name} line {reader.line_num}"
                    if len(fields) != len(header):
                        problem = f"{len(fields)} fields, the header {len(header)}: {short_repr.repr(fields)}"
                        yield TableRow(where, index, None, problem)
                    else:
                        yield TableRow(where, index, {c: v or None for c, v in zip(header, fields, strict=True)})
                    index += 1
            except csv.Error as exc:  # e.g. a field over csv's size limit: an unclosed quote swallowed the rest
                raise PrepareInputError(
                    f"{shown} cannot be parsed at line {reader.line_num} ({exc}); look for an unclosed quote at or "
                    "before that line"
                ) from exc

    return header, rows()


def _json_lines(file: Resolved) -> Iterator[tuple[int, object]]:
    """``(line number, the line's JSON value or the error text)`` for each non-blank line of a JSONL file."""
    with open_regular(file) as f:
        for number, line in enumerate(f, start=1):
            text = line.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                yield number, json.loads(text)
            except (ValueError, RecursionError) as exc:
                yield number, f"not valid JSON ({'it nests too deeply' if isinstance(exc, RecursionError) else exc})"


def _jsonl(file: Resolved, shown: Path) -> tuple[list[str], Iterator[TableRow]]:
    """One JSON object per line; the columns are the keys of all objects, in the order first seen."""
    columns: dict[str, None] = {}
    for _, value in _json_lines(file):
        if isinstance(value, dict):
            columns.update(dict.fromkeys(value))
    if not columns:
        raise PrepareInputError(
            f"{shown} has no JSON object on any line; expected one object per line, e.g. "
            '{"id": "p1", "image_path": "p1.jpg", "caption": "..."}'
        )

    def rows() -> Iterator[TableRow]:
        for index, (number, value) in enumerate(_json_lines(file)):
            where = f"{shown.name} line {number}"
            if isinstance(value, dict):
                yield TableRow(where, index, {c: (None if v == "" else v) for c, v in value.items()})
            elif isinstance(value, str) and value.startswith("not valid JSON"):
                yield TableRow(where, index, None, value)
            else:
                yield TableRow(where, index, None, f"a JSON {type(value).__name__}, not an object")

    return list(columns), rows()


def _parquet(file: Resolved, shown: Path) -> tuple[list[str], Iterator[TableRow]]:
    """A Parquet file, read in batches of ``BATCH_ROWS`` rows."""
    f = open_regular(file)
    try:
        parquet = pq.ParquetFile(f)
        columns = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        f.close()
        raise PrepareInputError(f"{shown} is not a readable Parquet file ({exc}); export it again") from exc

    def rows() -> Iterator[TableRow]:
        index = 0
        with f:
            try:
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                    for values in batch.to_pylist():
                        values = {c: (None if v == "" else v) for c, v in values.items()}
                        yield TableRow(f"{shown.name} row {index + 1}", index, values)
                        index += 1
            except (pa.ArrowException, OSError) as exc:
                raise PrepareInputError(f"{shown} cannot be read after row {index} ({exc}); export it again") from exc

    return columns, rows()
