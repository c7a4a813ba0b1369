"""Score new items with a trained student: one image + caption, or a whole Parquet/JSONL file of items.

The score reported is the calibrated one (mmkd.evaluation.calibration: the Platt fit recorded with the adapter's val
threshold), with the raw P(falsified) in ``raw_score``; an adapter that recorded no fit gives the raw score in both.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mmkd.inference.answering import label_items
from mmkd.inference.local import LocalBackend, LocalConfig
from mmkd.schema import SchemaError, conform_items, read_items

DEFAULT_PROMPT_VERSION = "v1"  # for a bare base model, or an adapter saved before adapters recorded it


def trained_prompt_version(adapter: str | None) -> str:
    """The prompt version ``adapter`` was trained with (recorded in its ``mmkd_adapter.json``)."""
    if adapter is None:
        return DEFAULT_PROMPT_VERSION
    from mmkd.modeling import adapter_info

    return adapter_info(adapter).get("prompt_version", DEFAULT_PROMPT_VERSION)


def load_predictor(
    *, adapter: str | None, base: str | None, batch_size: int = 16, max_new_tokens: int = 64, dtype: str = "float32"
):
    """A local backend for the student: ``base`` defaults to the base model the adapter records."""
    if adapter is None and base is None:
        raise ValueError("give --adapter (a stage1/stage2 output) or --base (a model directory)")
    from mmkd.modeling import adapter_chain

    base = base or adapter_chain(adapter)[0]
    return LocalBackend(
        LocalConfig(model=base, adapter=adapter, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype),
        name="student",
    )


def read_item_file(path: str | Path) -> pl.DataFrame:
    """Items from ``.parquet`` or ``.jsonl`` (``id``, ``image_path``, ``caption``, optional evidence); relative
    image paths are taken from the file's directory."""
    path = Path(path)
    if path.suffix == ".parquet":
        return read_items(path)
    if path.suffix == ".jsonl":
        # Types are inferred from the whole file and conform_items casts them to ITEM_SCHEMA; schema overrides would
        # fail on a file without the optional evidence fields (polars rejects an override for an absent field).
        df = pl.read_ndjson(path, infer_schema_length=None)
        if "id" in df.columns:
            df = df.with_columns(pl.col("id").cast(pl.String))
        return conform_items(df, path)
    raise SchemaError(f"{path}: unsupported item file; use .parquet or .jsonl")


def operating_threshold(adapter: str | None, override: float | None) -> float | None:
    """The threshold that labels a scored answer: ``override`` (``--threshold``), else the val threshold recorded in
    the adapter (mmkd.evaluation.thresholds), else None (the label as the model wrote it, i.e. score >= 0.5)."""
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise ValueError(f"--threshold {override}: give a probability in [0, 1]")
        return override
    from mmkd.evaluation.thresholds import recorded_threshold

    return recorded_threshold(adapter)


def score_calibration(adapter: str | None) -> dict | None:
    """The Platt fit recorded with ``adapter``'s val threshold (mmkd.evaluation.calibration), or None (no adapter,
    or one calibrated before fits were recorded)."""
    from mmkd.evaluation.calibration import KEY
    from mmkd.evaluation.thresholds import recorded_calibration

    return (recorded_calibration(adapter) or {}).get(KEY)


def reported_threshold(adapter: str | None, override: float | None, calibration: dict | None) -> float | None:
    """The threshold on the reported score's scale: ``override`` as given, else the adapter's val threshold (on
    the raw score) mapped through ``calibration``, which flags the same items."""
    from mmkd.evaluation.calibration import calibrated_threshold

    raw = operating_threshold(adapter, override)
    return raw if override is not None else calibrated_threshold(raw, calibration)


def predict_items(
    predictor: LocalBackend,
    items: pl.DataFrame,
    prompt_version: str,
    threshold: float | None = None,
    calibration: dict | None = None,
) -> pl.DataFrame:
    """Answers (answers schema plus ``raw_score``) of the student to every item: ``score`` calibrated by
    ``calibration`` (None: raw), the raw P(falsified) in ``raw_score``; with ``threshold`` (on ``score``'s scale),
    a scored answer's label is ``falsified`` when its score is at least the threshold."""
    from mmkd.evaluation.calibration import calibrate_answers
    from mmkd.evaluation.thresholds import thresholded

    answers = label_items(predictor, items, source="student", prompt_version=prompt_version)
    return thresholded(calibrate_answers(answers, calibration), threshold)
