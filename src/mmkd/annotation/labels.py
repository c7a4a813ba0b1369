"""Human labels, a versioned input of the DAG: one JSONL file per split (``annotation/labels/<split>.jsonl``).

Each line is one judgement: ``{"id", "label", "annotator", "time", "note"?, "origin"?}``. Files are append-only:
importing again adds lines and never rewrites old ones, so who said what, and when, stays in git's history. The
gold label of an item is resolved from its lines by ``resolve``: each annotator's latest judgement counts once;
the majority label wins; a tie is left for adjudication and not used (a person adds a line to break it).
One file per split keeps the DAG's rule that test labels reach ``evaluate`` only (tests/test_dvc_yaml.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mmkd.console import UserError
from mmkd.paths import human_labels_file, items_file
from mmkd.schema import GOLD_SCHEMA, LABELS, SchemaError, gold_path, read_gold

REQUIRED = ("id", "label", "annotator", "time")
OPTIONAL = ("note", "origin")


class LabelFileError(UserError, ValueError):
    """A labels file that cannot be read as labels: names the file, the line and the fix."""


def read_label_rows(path: str | Path) -> list[dict]:
    """Every judgement in ``path`` (none when the file does not exist or is empty), checked line by line."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabelFileError(f"{path}:{number}: not JSON ({exc.msg}); fix or remove that line") from None
        problem = row_problem(row)
        if problem:
            raise LabelFileError(f"{path}:{number}: {problem}; fix that line (the file is append-only otherwise)")
        rows.append(row)
    return rows


def row_problem(row: object) -> str | None:
    """What is wrong with one judgement, or None."""
    if not isinstance(row, dict):
        return "a judgement must be a JSON object"
    missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        return f"item {row.get('id')!r}: missing or empty {missing}"
    if row["label"] not in LABELS:
        return f"item {row['id']!r}: label {row['label']!r} is not one of {list(LABELS)}"
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        return f"item {row['id']!r}: unknown field(s) {unknown}"
    return None


def append_label_rows(path: str | Path, rows: list[dict]) -> None:
    """Append judgements to ``path`` atomically: the file is either as before or has every new line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    keep = (*REQUIRED, *OPTIONAL)
    new = "".join(json.dumps({k: row[k] for k in keep if k in row}, sort_keys=True) + "\n" for row in rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(old + new.encode())
    os.replace(tmp, path)


@dataclass
class Resolution:
    """Gold labels resolved from judgements, with what could not be resolved and how much annotators agree."""

    gold: pl.DataFrame  # GOLD_SCHEMA: one row per item with a resolved label
    disputed: list[str] = field(default_factory=list)  # items whose annotators tie: left for adjudication
    agreement: dict = field(default_factory=dict)  # see ``agreement``


def latest_by_annotator(rows: list[dict]) -> dict[str, dict[str, str]]:
    """item id -> annotator -> label, keeping each annotator's latest judgement (by ``time``, then file order)."""
    latest: dict[str, dict[str, tuple[str, int, str]]] = {}
    for order, row in enumerate(rows):
        key = (row["time"], order)
        seen = latest.setdefault(row["id"], {}).get(row["annotator"])
        if seen is None or key >= seen[:2]:
            latest[row["id"]][row["annotator"]] = (row["time"], order, row["label"])
    return {i: {a: v[2] for a, v in by.items()} for i, by in latest.items()}


def resolve(rows: list[dict]) -> Resolution:
    """Majority of each item's annotators (latest judgement each); a tie is disputed and gets no gold label."""
    by_item = latest_by_annotator(rows)
    gold, disputed = [], []
    for item, votes in sorted(by_item.items()):
        counts = Counter(votes.values()).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            disputed.append(item)
        else:
            gold.append({"id": item, "gold_label": counts[0][0]})
    return Resolution(pl.DataFrame(gold, schema=GOLD_SCHEMA), disputed, agreement(by_item))


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two annotators' labels on the same items; None when chance agreement is total."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    expected = sum((first.count(label) / n) * (second.count(label) / n) for label in LABELS)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def agreement(by_item: dict[str, dict[str, str]]) -> dict:
    """Items seen by two or more annotators, the share on which all agree, and Cohen's kappa for each pair of
    annotators who share items (``"a|b"``, names sorted)."""
    shared = {i: v for i, v in by_item.items() if len(v) >= 2}
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    for votes in shared.values():
        names = sorted(votes)
        for x, a in enumerate(names):
            for b in names[x + 1 :]:
                pair = pairs.setdefault(f"{a}|{b}", ([], []))
                pair[0].append(votes[a])
                pair[1].append(votes[b])
    return {
        "items_with_several_annotators": len(shared),
        "all_agree": sum(len(set(v.values())) == 1 for v in shared.values()),
        "cohen_kappa": {pair: cohen_kappa(*labels) for pair, labels in sorted(pairs.items())},
    }


PREFERENCES = ("dataset", "human")  # annotation.prefer: whose label wins where both exist
ORIGIN = "origin"  # the column ``merged_gold`` adds: where each gold label came from (dataset or human)


def merged_gold(dataset_gold: pl.DataFrame | None, human: pl.DataFrame, prefer: str = "dataset") -> pl.DataFrame:
    """The gold labels a stage reads: the dataset's own (with any finer class it has) and the resolved human ones,
    with ``origin``. Where an item has both, ``prefer`` decides (``dataset``: a benchmark's gold is the reference;
    ``human``: your annotators correct it)."""
    if prefer not in PREFERENCES:
        raise ValueError(f"annotation.prefer must be one of {list(PREFERENCES)}, got {prefer!r}")
    dataset = pl.DataFrame(schema=GOLD_SCHEMA) if dataset_gold is None else dataset_gold
    dataset = dataset.with_columns(pl.lit("dataset").alias(ORIGIN))
    people = human.select(list(GOLD_SCHEMA)).with_columns(pl.lit("human").alias(ORIGIN))
    first, second = (dataset, people) if prefer == "dataset" else (people, dataset)
    rest = second.filter(~pl.col("id").is_in(first["id"].implode()))
    return pl.concat([first, rest], how="diagonal_relaxed").sort("id")


@dataclass(frozen=True)
class GoldSource:
    """Where one split's gold labels come from: the dataset's gold table (absent for unlabeled data) and people's
    labels file (absent: none yet), merged by ``prefer``."""

    dataset_file: Path | None
    human_file: Path | None = None
    prefer: str = "dataset"

    def read(self) -> pl.DataFrame:
        """The merged gold labels (mmkd.schema.GOLD_SCHEMA, any finer class, and ``origin``)."""
        dataset = read_gold(self.dataset_file) if self.dataset_file and Path(self.dataset_file).exists() else None
        human = resolve(read_label_rows(self.human_file)).gold if self.human_file else pl.DataFrame(schema=GOLD_SCHEMA)
        return merged_gold(dataset, human, self.prefer)

    def require(self, split: str) -> pl.DataFrame:
        """``read``, stopping with what to do when there is no gold label at all (a split nobody labelled yet)."""
        gold = self.read()
        if gold.is_empty():
            raise SchemaError(
                f"{self.describe()}: no gold label for any {split} item. Have people label a sample: "
                f"`mmkd annotate export` queues annotation.eval_sample.{split} of them; then `mmkd annotate import "
                "<file>` and `dvc repro` (docs/annotation.md)"
            )
        return gold

    def describe(self) -> str:
        """The files it reads, for messages."""
        return " and ".join(str(f) for f in (self.dataset_file, self.human_file) if f is not None)


def split_gold(data_dir: str | Path, split: str, prefer: str = "dataset") -> GoldSource:
    """The gold of a split of ``data.dir``: ``<split>.gold.parquet`` and ``annotation/labels/<split>.jsonl``."""
    return GoldSource(gold_path(items_file(data_dir, split)), human_labels_file(split), prefer)
