"""Ranking and calibration metrics and the val threshold (``mmkd.evaluation.ranking``), against hand-worked
values: ties, one-class sets and missing scores included."""

import math

import pytest

from mmkd.evaluation.ranking import (
    auprc,
    auroc,
    brier,
    choose_threshold,
    expected_calibration_error,
    ranking_metrics,
)

SCORES = [0.9, 0.8, 0.4, 0.4, 0.1]  # P(falsified); the two 0.4s are a tie across the classes
LABELS = [1, 0, 1, 0, 0]


def test_auroc_counts_a_tie_as_half():
    # positive-negative pairs: (.9 > .8, .4, .1) = 3, (.4 vs .8) = 0, (.4 vs .4) = 0.5, (.4 > .1) = 1 -> 4.5 / 6
    assert auroc(SCORES, LABELS) == pytest.approx(0.75)


def test_auprc_is_stepwise_average_precision_with_ties_as_one_threshold():
    # thresholds .9: P 1, R .5; .8: P .5, R .5; .4: P 2/4, R 1 -> .5 * 1 + .5 * .5
    assert auprc(SCORES, LABELS) == pytest.approx(0.75)


def test_ece_and_brier_by_hand():
    # bins of width .1: .9 -> gap .1; .8 -> .8; .4, .4 -> |.5 - .4| x 2; .1 -> .1: (0.1 + 0.8 + 0.2 + 0.1) / 5
    assert expected_calibration_error(SCORES, LABELS) == pytest.approx(0.24)
    assert brier(SCORES, LABELS) == pytest.approx((0.01 + 0.64 + 0.36 + 0.16 + 0.01) / 5)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # a score of exactly 1 falls in the last bin


def test_one_class_sets_have_no_auroc_and_missing_scores_are_left_out():
    assert auroc([0.2, 0.7], [1, 1]) is None and auprc([0.2, 0.7], [0, 0]) is None
    assert auprc([0.2, 0.7], [1, 1]) == pytest.approx(1.0)
    metrics = ranking_metrics([*SCORES, math.nan], [*LABELS, 1])  # an unparsed answer has no score
    assert metrics["n_scored"] == 5 and metrics["auroc"] == pytest.approx(0.75)
    assert ranking_metrics([math.nan], [1]) == {
        "auroc": None,
        "auprc": None,
        "ece": None,
        "brier": None,
        "n_scored": 0,
    }
    with pytest.raises(ValueError, match="probabilities in"):
        auroc([1.5, 0.2], [1, 0])


def test_the_threshold_maximises_accuracy_and_respects_a_false_positive_cap():
    # flag >= .9: 4 of 5 right (only the .4 positive missed); >= .8: 3; >= .4: 3; >= .1: 2; flag nothing: 3
    assert choose_threshold(SCORES, LABELS) == pytest.approx(0.9)
    # at most 1/3 false positives allows >= .8 (one of three negatives flagged), and .9 is still the best
    assert choose_threshold(SCORES, LABELS, max_fpr=1 / 3) == pytest.approx(0.9)
    # all-equal scores: flagging everything is right on 2 of 3, flagging nothing on 1
    assert choose_threshold([0.5, 0.5, 0.5], [1, 1, 0]) == pytest.approx(0.5)
    assert choose_threshold([0.5, 0.5, 0.5], [1, 1, 0], max_fpr=0.0) > 0.5  # no false positive: flag nothing
    assert choose_threshold([math.nan], [1]) is None
