"""Platt calibration of the scores (mmkd.evaluation.calibration), on hand-made score sets whose right values are
worked out in the comments."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mmkd.evaluation.calibration import (
    apply,
    calibrate_answers,
    calibrated_metrics,
    calibrated_threshold,
    fit_platt,
    with_score_calibration,
)
from mmkd.evaluation.ranking import auroc, expected_calibration_error
from mmkd.schema import answers_frame

# Saturated, as a distilled student's: 10 items at 0.9999 of which 8 are falsified, 10 at 0.0001 of which 1 is.
# Raw ECE (10 bins): (10 * |0.8 - 0.9999| + 10 * |0.1 - 0.0001|) / 20 = (1.999 + 0.999) / 20 = 0.1499.
# Two distinct scores and two parameters: the NLL fit gives each group the mean of its Platt targets, with
# 9 falsified and 11 pristine items: falsified 10/11, pristine 1/13. High group: (8 * 10/11 + 2 * 1/13) / 10
# = 1062/1430; low group: (1 * 10/11 + 9 * 1/13) / 10 = 229/1430. Calibrated ECE: (|1144 - 1062| + |143 - 229|)
# / 1430 / 2 = 84/1430 = 0.058741, so calibration lowers the ECE by 0.1499 - 84/1430 = 0.091159.
SATURATED = np.array([0.9999] * 10 + [0.0001] * 10)
LABELS = np.array([1.0] * 8 + [0.0] * 2 + [1.0] * 1 + [0.0] * 9)


def test_calibration_lowers_the_ece_of_saturated_scores_by_the_hand_computed_amount():
    fit = fit_platt(SATURATED, LABELS)
    calibrated = apply(SATURATED, fit)
    assert calibrated[:10] == pytest.approx([1062 / 1430] * 10, abs=1e-9)
    assert calibrated[10:] == pytest.approx([229 / 1430] * 10, abs=1e-9)
    raw_ece, ece = expected_calibration_error(SATURATED, LABELS), expected_calibration_error(calibrated, LABELS)
    assert raw_ece == pytest.approx(0.1499, abs=1e-12)
    assert ece == pytest.approx(84 / 1430, abs=1e-9)
    assert raw_ece - ece == pytest.approx(0.1499 - 84 / 1430, abs=1e-9)  # 0.091159
    assert fit["ece_raw"] == 0.1499 and fit["ece"] == 0.058741 and fit["a"] > 0


def test_calibration_keeps_the_ranking_and_the_decisions_at_the_val_threshold():
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.5).astype(float)
    logits = np.where(labels == 1, 9.0, -9.0) + rng.normal(0, 6, 200)  # saturated, one-sided errors
    scores = 1 / (1 + np.exp(-logits))
    fit = fit_platt(scores, labels)
    calibrated = apply(scores, fit)
    assert auroc(calibrated, labels) == auroc(scores, labels)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(scores, labels)
    for raw_threshold in (0.5, 0.999, scores[17]):
        assert ((calibrated >= calibrated_threshold(raw_threshold, fit)) == (scores >= raw_threshold)).all()


def test_exact_zero_and_one_and_missing_scores():
    scores = np.array([1.0, 1.0, 1.0, 0.0, 0.0, np.nan])
    fit = fit_platt(scores, [1, 1, 0, 0, 1, 1])  # the unscored item is left out
    assert fit["n"] == 5
    calibrated = apply(scores, fit)
    assert np.isfinite(calibrated[:5]).all() and 0 < calibrated[3] < calibrated[0] < 1
    assert np.isnan(calibrated[5])


@pytest.mark.parametrize(
    ("scores", "labels"),
    [([0.9, 0.2], [1, 1]), ([0.3, 0.3, 0.3], [1, 0, 1]), ([0.9, 0.8, 0.1], [0, 0, 1])],
    ids=["one class", "one score", "reversed ranking"],
)
def test_no_fit_where_there_is_nothing_to_fit_or_it_would_reverse_the_ranking(scores, labels):
    assert fit_platt(scores, labels) is None
    assert list(apply(scores, None)) == scores  # without a fit the raw scores stand
    assert calibrated_metrics(scores, labels, None) == {"ece_calibrated": None, "brier_calibrated": None}


def answers(scores: list[float | None]) -> pl.DataFrame:
    rows = [
        {"id": f"i{i}", "label": None if s is None else ("falsified" if s >= 0.5 else "pristine"), "score": s}
        | {"status": "unparsed" if s is None else "ok", "source": "m"}
        for i, s in enumerate(scores)
    ]
    return answers_frame(rows)


def test_answers_get_the_calibrated_score_and_keep_the_raw_one():
    val = answers([*SATURATED.tolist(), None])
    gold = pl.DataFrame(
        {"id": [f"i{i}" for i in range(21)], "gold_label": ["falsified" if y else "pristine" for y in [*LABELS, 1]]}
    )
    recorded = with_score_calibration({"value": 0.5, "rule": "max_accuracy"}, val, gold)
    fit = recorded["score_calibration"]
    assert recorded["value"] == 0.5 and fit["n"] == 20
    out = calibrate_answers(val, fit)
    assert out["raw_score"].to_list() == val["score"].to_list()
    assert out["score"][0] == pytest.approx(1062 / 1430) and out["score"][20] is None
    assert out.drop("raw_score").schema == val.schema
    assert calibrated_metrics(SATURATED, LABELS, fit) == {
        "ece_calibrated": 0.058741,
        "brier_calibrated": pytest.approx(
            (8 * (1 - 1062 / 1430) ** 2 + 2 * (1062 / 1430) ** 2 + (1 - 229 / 1430) ** 2 + 9 * (229 / 1430) ** 2) / 20,
            abs=1e-6,
        ),
    }
