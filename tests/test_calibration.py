"""The val-chosen operating threshold (mmkd.evaluation.thresholds) and the metrics at it
(mmkd.evaluation.metrics.score_ranked), on small hand-made answer tables whose right values are worked out in the
comments."""

import json

import polars as pl
import pytest

from mmkd.evaluation.metrics import RANKING_KEYS, SYSTEM_KEYS, THRESHOLD_KEYS, score_ranked
from mmkd.evaluation.thresholds import calibrate, record_threshold, recorded_threshold, thresholded
from mmkd.modeling import ADAPTER_INFO
from mmkd.schema import answers_frame

F, P = "falsified", "pristine"


def answers(scores: list[float | None], labels: list[str | None] | None = None) -> pl.DataFrame:
    """One answer per score; label from the score (>= 0.5), unparsed where the score is None."""
    rows = []
    for i, s in enumerate(scores):
        label = (labels[i] if labels else None) or (None if s is None else (F if s >= 0.5 else P))
        rows.append(
            {"id": f"i{i}", "label": label, "score": s, "status": "ok" if label else "unparsed", "source": "m"}
        )
    return answers_frame(rows)


def gold(labels: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"i{i}" for i in range(len(labels))], "gold_label": labels})


# val: the falsified items score 0.3 and 0.9, the pristine ones 0.1 and 0.4. Accuracy of the rule score >= t:
# above all (flag none) 2/4; t=0.9 (flags 0.9) 3/4; t=0.4 (0.9, 0.4) 2/4; t=0.3 (0.9, 0.4, 0.3) 3/4; t=0.1 2/4.
# The best, 3/4, ties 0.9 and 0.3: the higher one (fewer flags) wins.
VAL_SCORES, VAL_GOLD = [0.3, 0.9, 0.1, 0.4], [F, F, P, P]


def test_the_threshold_maximises_val_accuracy_and_ties_go_to_the_higher_one():
    result = calibrate(answers(VAL_SCORES), gold(VAL_GOLD))
    assert result == {
        "value": 0.9,
        "rule": "max_accuracy",
        "max_fpr": None,
        "val_n": 4,
        "val_n_scored": 4,
        "val_accuracy": 0.75,
    }


def test_a_false_positive_budget_keeps_the_threshold_above_the_pristine_scores():
    # FPR <= 0: no pristine item may be flagged, so t > 0.4: t = 0.9 (3/4) beats flagging nothing (2/4)
    assert calibrate(answers(VAL_SCORES), gold(VAL_GOLD), max_fpr=0.0)["value"] == 0.9
    # FPR <= 0.5 allows flagging 0.4: still 0.9 or 0.3 at 3/4, the higher one
    assert calibrate(answers(VAL_SCORES), gold(VAL_GOLD), max_fpr=0.5)["rule"] == "max_fpr"
    with pytest.raises(ValueError, match="max_fpr=1.5"):
        calibrate(answers(VAL_SCORES), gold(VAL_GOLD), max_fpr=1.5)


def test_without_scores_there_is_no_threshold():
    result = calibrate(answers([None, None]), gold([F, P]))
    assert result["value"] is None and result["val_accuracy"] is None and result["val_n_scored"] == 0


def test_a_threshold_relabels_scored_answers_only():
    a = answers([0.95, 0.6, None], labels=[None, None, None])
    out = thresholded(a, 0.7)
    assert out["label"].to_list() == [F, P, None]  # 0.6 < 0.7: pristine; the unparsed answer stays unlabelled
    assert thresholded(a, None).equals(a)


def test_metrics_at_the_val_threshold_on_test():
    # test: F items score 0.95, 0.35; P items 0.2, 0.6. At 0.5: F, P, P, F -> 2/4 right. At the val threshold 0.9:
    # only 0.95 is flagged -> F right, 0.35 wrong, both P right -> 3/4.
    val = calibrate(answers(VAL_SCORES), gold(VAL_GOLD))
    metrics = score_ranked(answers([0.95, 0.35, 0.2, 0.6]), gold([F, F, P, P]), val)
    assert set(metrics) == {*SYSTEM_KEYS, *RANKING_KEYS, *THRESHOLD_KEYS}
    assert metrics["accuracy"] == metrics["accuracy_at_half"] == 0.5
    assert metrics["accuracy_at_threshold"] == 0.75 and metrics["threshold"] == 0.9
    # AUROC: pairs (F, P): (0.95, 0.2) (0.95, 0.6) (0.35, 0.2) right, (0.35, 0.6) wrong -> 3/4
    assert metrics["auroc"] == 0.75 and metrics["n_scored"] == 4


def test_a_system_without_scores_gets_nulls_not_numbers():
    unscored = answers_frame([{"id": "i0", "label": F, "status": "ok"}, {"id": "i1", "label": P, "status": "ok"}])
    metrics = score_ranked(unscored, gold([F, F]), None)
    assert metrics["accuracy"] == 0.5
    assert {k: metrics[k] for k in (*RANKING_KEYS, *THRESHOLD_KEYS)} == {
        "auroc": None,
        "auprc": None,
        "ece": None,
        "brier": None,
        "ece_calibrated": None,
        "brier_calibrated": None,
        "n_scored": 0,
        "accuracy_at_half": None,
        "accuracy_at_threshold": None,
        "threshold": None,
        "threshold_rule": None,
    }


def test_the_threshold_is_recorded_in_the_adapter(tmp_path):
    (tmp_path / ADAPTER_INFO).write_text(json.dumps({"base": "b", "parent": None}))
    assert recorded_threshold(tmp_path) is None and recorded_threshold(None) is None
    record_threshold(tmp_path, calibrate(answers(VAL_SCORES), gold(VAL_GOLD)))
    assert recorded_threshold(tmp_path) == 0.9
    assert json.loads((tmp_path / ADAPTER_INFO).read_text())["base"] == "b"  # the rest is kept


def test_a_val_item_without_an_answer_stops_calibration_instead_of_counting_as_wrong():
    # stale val answers (an item added since labelling) would otherwise lower val_accuracy without a word
    with pytest.raises(ValueError, match="no answer for 1 val item"):
        calibrate(answers(VAL_SCORES[:3]), gold(VAL_GOLD))


def test_evaluate_reports_ece_after_the_val_fitted_score_calibration():
    """Saturated scores (0.9999 for 10 items, 8 falsified; 0.0001 for 10, 1 falsified): raw ECE is
    (10 * |0.9999 - 0.8| + 10 * |0.0001 - 0.1|) / 20 = 0.1499; the Platt fit on the same items moves the two groups
    towards their rates, so the calibrated ECE is lower, and the decisions at the threshold do not change."""
    from mmkd.evaluation.calibration import fit_platt

    scores = [0.9999] * 10 + [0.0001] * 10
    labels = [F] * 8 + [P] * 2 + [F] + [P] * 9
    fit = fit_platt(scores, [1.0 if label == F else 0.0 for label in labels])
    calibration = {"value": 0.5, "rule": "best val accuracy", "score_calibration": fit}
    metrics = score_ranked(answers(scores), gold(labels), calibration)
    assert metrics["ece"] == pytest.approx(0.1499)
    assert metrics["ece_calibrated"] == pytest.approx(fit["ece"]) and metrics["ece_calibrated"] < 0.1499 - 0.05
    assert metrics["brier_calibrated"] < metrics["brier"]
    uncalibrated = score_ranked(answers(scores), gold(labels), {"value": 0.5, "rule": "best val accuracy"})
    assert uncalibrated["ece_calibrated"] is None
    assert metrics["accuracy_at_threshold"] == uncalibrated["accuracy_at_threshold"] == 0.85
