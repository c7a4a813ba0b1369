"""The operating threshold of a scored detector, chosen on val and recorded with the model.

A system's answers carry ``score`` = P(falsified) (mmkd.scoring). ``calibrate`` chooses the threshold on the val
split with ``mmkd.evaluation.ranking.choose_threshold`` (the rule ``score >= t -> falsified`` that maximises val
accuracy, or, with ``max_fpr``, the most accurate one whose val false-positive rate is at most ``max_fpr``). It sees
val answers and val gold labels only: the test split is never an argument here, so it cannot be read for a threshold.

Each training stage (stage1, stage2 and every trained baseline) calibrates its own adapter after training and
records the result in the adapter's ``mmkd_adapter.json`` (``threshold``), so that ``mmkd predict`` and
``mmkd export`` use it by default; ``evaluate`` calibrates the systems without an adapter (zero-shot, teachers)
the same way, from their val answers.

A threshold applies only to answers that have a score: an answer without one keeps its parsed label (a server
that returned no logprobs) or stays without a label (unparsed), so accuracy at the threshold counts it as at 0.5.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from mmkd.evaluation.outcomes import accuracy, scores_and_labels
from mmkd.evaluation.ranking import choose_threshold
from mmkd.schema import FALSIFIED, PRISTINE

log = logging.getLogger(__name__)

THRESHOLD_KEY = "threshold"  # in mmkd_adapter.json


def thresholded(answers: pl.DataFrame, threshold: float | None) -> pl.DataFrame:
    """``answers`` labelled by the rule ``score >= threshold -> falsified`` where there is a score (None: as is)."""
    if threshold is None:
        return answers
    flag = pl.when(pl.col("score") >= threshold).then(pl.lit(FALSIFIED)).otherwise(pl.lit(PRISTINE))
    scored = (pl.col("status") == "ok") & pl.col("score").is_not_null()
    return answers.with_columns(pl.when(scored).then(flag).otherwise(pl.col("label")).alias("label"))


def calibrate(val_answers: pl.DataFrame, val_gold: pl.DataFrame, *, max_fpr: float | None = None) -> dict:
    """The val-chosen threshold of one system and what it gives on val (see the module docstring).

    ``value`` is None when no val answer has a score (or none meets ``max_fpr``); ``val_accuracy`` is the val
    accuracy at ``value`` (every val item counts; one without a label counts as wrong, and a val item without an
    answer is an error: the answers are stale)."""
    if max_fpr is not None and not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"calibration.max_fpr={max_fpr}: give a false-positive rate in [0, 1], or null")
    scores, labels = scores_and_labels(val_answers, val_gold)
    value = choose_threshold(scores, labels, max_fpr=max_fpr)
    result = {
        "value": None if value is None else round(value, 6),
        "rule": "max_accuracy" if max_fpr is None else "max_fpr",
        "max_fpr": max_fpr,
        "val_n": len(val_gold),
        "val_n_scored": int((~np.isnan(scores)).sum()),
        "val_accuracy": None,
    }
    if value is not None:
        result["val_accuracy"] = accuracy(thresholded(val_answers, value), val_gold, split="val")
    return result


def record_threshold(adapter_dir: str | Path, calibration: dict) -> None:
    """Write ``calibration`` into the adapter's ``mmkd_adapter.json`` (key ``threshold``), keeping the rest; the
    one writer of an adapter's threshold (``recorded_calibration`` is the one reader)."""
    from mmkd.modeling import ADAPTER_INFO, adapter_info

    info = adapter_info(adapter_dir) | {THRESHOLD_KEY: calibration}
    (Path(adapter_dir) / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")


def recorded_calibration(adapter_dir: str | Path | None) -> dict | None:
    """What ``record_threshold`` wrote for ``adapter_dir`` (``calibrate``'s result), or None (no adapter, or none
    recorded)."""
    if adapter_dir is None:
        return None
    from mmkd.modeling import adapter_info

    return adapter_info(adapter_dir).get(THRESHOLD_KEY)


def recorded_threshold(adapter_dir: str | Path | None) -> float | None:
    """The val threshold recorded for ``adapter_dir``, or None (no adapter, or none recorded)."""
    return (recorded_calibration(adapter_dir) or {}).get("value")


def calibrate_adapter(
    adapter_dir: str | Path,
    val_items: pl.DataFrame,
    val_gold: pl.DataFrame,
    *,
    base: str,
    prompt_version: str,
    dtype: str = "float32",
    batch_size: int = 16,
    max_new_tokens: int = 64,
    max_fpr: float | None = None,
) -> dict:
    """Answer the val items with the student ``base`` + ``adapter_dir``, choose its threshold and record it."""
    from mmkd.evaluation.calibration import with_score_calibration
    from mmkd.inference.answering import label_items
    from mmkd.inference.local import LocalBackend, LocalConfig

    config = LocalConfig(
        model=base, adapter=str(adapter_dir), dtype=dtype, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    answers = label_items(LocalBackend(config, name="val"), val_items, source="val", prompt_version=prompt_version)
    # the Platt fit of the same val answers goes with the threshold, for `mmkd predict` (mmkd.evaluation.calibration)
    result = with_score_calibration(calibrate(answers, val_gold, max_fpr=max_fpr), answers, val_gold)
    record_threshold(adapter_dir, result)
    log.info("%s: val threshold %s", adapter_dir, result)
    return result


def calibrate_from_params(adapter_dir: str | Path, params: dict) -> dict:
    """``calibrate_adapter`` for a training stage's output, with the run's student, data and ``calibration``
    params (the val split of ``data.dir``; its gold: the dataset's and people's, mmkd.annotation.labels)."""
    from mmkd.annotation.labels import ORIGIN, split_gold
    from mmkd.paths import items_file
    from mmkd.schema import read_items

    student, cfg = params["student"], params["calibration"]
    val_file = items_file(params["data"]["dir"], "val")
    return calibrate_adapter(
        adapter_dir,
        read_items(val_file),
        split_gold(params["data"]["dir"], "val", params["annotation"]["prefer"]).require("val").drop(ORIGIN),
        base=student["model"],
        prompt_version=student["prompt_version"],
        dtype=student["dtype"],
        batch_size=cfg["batch_size"],
        max_new_tokens=cfg["max_new_tokens"],
        max_fpr=cfg["max_fpr"],
    )
