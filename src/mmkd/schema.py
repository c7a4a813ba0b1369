"""The one definition of every table that flows between stages: news items, gold labels, model answers, and the
conflict split's tables (conflicts, Stage-2 SFT rows, DPO pairs). Each has a validating reader.

Gold labels live in their own file (``<split>.gold.parquet``) beside the items (``<split>.parquet``), so the DVC
graph itself shows which stages can see them: only ``split`` (conflict items only) and ``evaluate`` (test).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mmkd.console import UserError

PRISTINE = "pristine"
FALSIFIED = "falsified"
LABELS: tuple[str, ...] = (PRISTINE, FALSIFIED)

# A news item: an image plus a caption, with optional web evidence. ``image_path`` is relative to the directory
# that holds the Parquet file (absolute paths are allowed too).
ITEM_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "image_path": pl.String(),
    "caption": pl.String(),
    "evidence_entities": pl.List(pl.String()),  # visual entities of the image (may be null)
    "evidence_captions": pl.List(pl.String()),  # captions found by inverse image search (may be null)
}

GOLD_SCHEMA: dict[str, pl.DataType] = {"id": pl.String(), "gold_label": pl.String()}
# A dataset's own finer class, where it has one (VERITE: true, miscaptioned, out-of-context): kept by read_gold,
# so that per-class accuracy can be reported (mmkd.evaluation.metrics.class_accuracies)
GOLD_CLASS_SCHEMA: dict[str, pl.DataType] = {**GOLD_SCHEMA, "gold_class": pl.String()}

# Status of one answer. ``ok``: parsed; ``unparsed``: the text did not follow the answer format (kept, never
# guessed); ``error``: the backend failed on this item; ``skipped``: the item itself is bad (missing image, ...);
# ``abstain``: a combination of models gives no label (the majority-vote baseline on a tie).
STATUSES: tuple[str, ...] = ("ok", "unparsed", "error", "skipped", "abstain")

# One answer of one model (a teacher, or a student variant at evaluation) to one item.
ANSWER_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "source": pl.String(),  # teacher name, or zero_shot / stage1 / stage2 / a baseline
    "label": pl.String(),  # one of LABELS, null unless status == "ok"
    "rationale": pl.String(),
    "raw_text": pl.String(),
    "status": pl.String(),
    "error": pl.String(),  # what went wrong and how to fix it, null when status == "ok"
    "prompt_version": pl.String(),
    # The answer-cache key (mmkd.inference.answer_cache.answer_key: model, settings, prompt, image) and the tokens
    # the answer took, so that a later run can reuse the answer without asking again; null where unknown (a
    # predictions file).
    "answer_key": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    # P(falsified), read at the answer's Label: slot (mmkd.scoring); null when the answer did not parse or the
    # backend cannot read it (a server without logprobs).
    "score": pl.Float64(),
}
# Null when absent: an answers file from elsewhere (hand-made, another tool) need not know the cache key or the score
ANSWER_OPTIONAL = ("answer_key", "prompt_tokens", "completion_tokens", "score")


# The conflict split (``split`` writes them, ``stage2`` reads them; see mmkd.selection.conflicts).
CONFLICT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "gold_label": pl.String(),  # the only gold labels of train the pipeline reads
    "n_agree": pl.Int64(),  # how many teachers' labels match gold (0: no `chosen` answer)
}
SFT_ROW_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "source": pl.String(),  # the teacher whose answer is the target
    "completion": pl.String(),  # its raw answer text
}
PAIR_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "chosen_source": pl.String(),  # a teacher whose label matches gold
    "chosen": pl.String(),
    "rejected_source": pl.String(),  # a teacher whose label does not (or did not parse)
    "rejected": pl.String(),
}


class SchemaError(UserError, ValueError):
    """A table on disk does not have the columns or values a stage needs."""


def gold_path(items_path: str | Path) -> Path:
    """The gold-label file that belongs to an items file: ``train.parquet`` -> ``train.gold.parquet``."""
    p = Path(items_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".gold.parquet")


def _conform(
    df: pl.DataFrame,
    schema: dict[str, pl.DataType],
    path: Path,
    optional: tuple[str, ...] = (),
    unique_ids: bool = True,
) -> pl.DataFrame:
    missing = [c for c in schema if c not in df.columns and c not in optional]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}; expected columns {list(schema)}")
    for col in optional:
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=schema[col]).alias(col))
    try:
        df = df.select([pl.col(c).cast(t) for c, t in schema.items()])
    except pl.exceptions.PolarsError as exc:
        raise SchemaError(f"{path}: a column has the wrong type ({exc}); expected {schema}") from exc
    dupes = df.filter(pl.col("id").is_duplicated())["id"].unique().to_list() if unique_ids else []
    if dupes:
        raise SchemaError(f"{path}: duplicate item id(s) {dupes[:5]}; ids must be unique")
    return df


def conform_items(df: pl.DataFrame, path: str | Path) -> pl.DataFrame:
    """Validate an items table read from ``path`` and resolve ``image_path`` against the file's directory."""
    path = Path(path)
    df = _conform(df, ITEM_SCHEMA, path, optional=("evidence_entities", "evidence_captions"))
    root = path.parent.resolve()
    return df.with_columns(
        pl.col("image_path").map_elements(lambda p: str(root / p), return_dtype=pl.String()).alias("image_path")
    )


def read_items(path: str | Path) -> pl.DataFrame:
    """Read and validate a news-item table; ``image_path`` is returned resolved to an absolute path."""
    return conform_items(pl.read_parquet(path), path)


def read_gold(path: str | Path) -> pl.DataFrame:
    """Read gold labels and check every value is a known label (``gold_class`` is kept where the file has it)."""
    path = Path(path)
    raw = pl.read_parquet(path)
    df = _conform(raw, GOLD_CLASS_SCHEMA if "gold_class" in raw.columns else GOLD_SCHEMA, path)
    missing = df.filter(pl.col("gold_label").is_null())  # `is_in` is null there, and a filter drops nulls
    if len(missing):
        raise SchemaError(
            f"{path}: {len(missing)} item(s) have no gold_label (null), e.g. {missing['id'][0]!r}; give each one of "
            f"{LABELS}, or leave its row out (a gold file holds only labelled items)"
        )
    bad = df.filter(~pl.col("gold_label").is_in(LABELS))
    if len(bad):
        raise SchemaError(
            f"{path}: item {bad['id'][0]!r} has gold_label {bad['gold_label'][0]!r}; use one of {LABELS}"
        )
    return df


def read_answers(path: str | Path) -> pl.DataFrame:
    """Read and validate a table of answers."""
    path = Path(path)
    return _conform(pl.read_parquet(path), ANSWER_SCHEMA, path, optional=ANSWER_OPTIONAL)


def _read_rows(path: str | Path, schema: dict[str, pl.DataType], text_columns: tuple[str, ...]) -> pl.DataFrame:
    path = Path(path)
    df = _conform(pl.read_parquet(path), schema, path, unique_ids=False)  # an item has a row per teacher (pair)
    for col in text_columns:
        empty = df.filter(pl.col(col).is_null() | (pl.col(col).str.strip_chars() == ""))
        if len(empty):
            raise SchemaError(f"{path}: item {empty['id'][0]!r} has an empty {col!r}; re-run split")
    return df


def read_sft_rows(path: str | Path) -> pl.DataFrame:
    """Read and validate Stage-2 SFT rows (one per conflict item and gold-matching teacher)."""
    return _read_rows(path, SFT_ROW_SCHEMA, ("completion",))


def read_pairs(path: str | Path) -> pl.DataFrame:
    """Read and validate Stage-2 DPO pairs (one per conflict item and (gold-matching, other) teacher pair)."""
    return _read_rows(path, PAIR_SCHEMA, ("chosen", "rejected"))


def frame(rows: list[dict], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Build a table with an exact schema (also when ``rows`` is empty)."""
    return pl.DataFrame(rows, schema=schema)


def answers_frame(rows: list[dict]) -> pl.DataFrame:
    """Build an answers table with the exact schema (also when ``rows`` is empty)."""
    return frame(rows, ANSWER_SCHEMA)


def items_frame(rows: list[dict]) -> pl.DataFrame:
    """Build an items table with the exact schema."""
    return frame(rows, ITEM_SCHEMA)
