"""Scoring through the project's own `evaluate` metric module, loaded by local path with no Hub."""

import importlib.util

import polars as pl
import pytest

from mmkd.evaluation.metrics import MODULE_DIR, SYSTEM_KEYS, confusion_rows, score
from mmkd.schema import LABELS, answers_frame


def _answers(preds: dict[str, str]) -> pl.DataFrame:
    rows = []
    for i, p in preds.items():
        ok = p in LABELS
        rows.append({"id": i, "source": "m", "label": p if ok else None, "status": "ok" if ok else p})
    return answers_frame(rows)


GOLD = pl.DataFrame({"id": list("123456"), "gold_label": ["pristine"] * 3 + ["falsified"] * 3})


def test_hand_computed_metrics(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preds = {"1": "pristine", "2": "pristine", "3": "falsified", "4": "falsified", "5": "unparsed", "6": "skipped"}
    m = score(_answers(preds), GOLD)
    assert set(m) == set(SYSTEM_KEYS)
    assert m["n"] == 6
    assert m["coverage"] == pytest.approx(4 / 6, abs=1e-6)
    # Wilson, 3 of 6: centre 0.5, half-width 1.96 * sqrt(.25 / 6 + 1.96**2 / 144) / (1 + 1.96**2 / 6) = 0.31238
    assert m["accuracy_ci95"] == pytest.approx([0.18762, 0.81238], abs=1e-5)
    assert m["accuracy"] == pytest.approx(3 / 6, abs=1e-6)
    assert m["accuracy_pristine"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["accuracy_falsified"] == pytest.approx(1 / 3, abs=1e-6)
    assert m["unparsed_rate"] == pytest.approx(2 / 6, abs=1e-6)
    # pristine: tp 2, fp 0, fn 1 -> 0.8; falsified: tp 1, fp 1, fn 2 -> 0.4; unparsed is a miss, not a positive
    assert m["macro_f1"] == pytest.approx(0.6, abs=1e-6)


def test_perfect_and_missing_answers():
    perfect = {i: g for i, g in zip(GOLD["id"], GOLD["gold_label"], strict=True)}
    assert score(_answers(perfect), GOLD)["accuracy"] == 1.0
    del perfect["6"]
    with pytest.raises(ValueError, match="no answer for 1 test item"):
        score(_answers(perfect), GOLD)


def test_confusion_rows_keep_unparsed_as_its_own_column():
    rows = confusion_rows(_answers({"1": "pristine", "2": "unparsed"}), GOLD.head(2))
    assert rows.to_dicts() == [
        {"actual": "pristine", "predicted": "pristine"},
        {"actual": "pristine", "predicted": "unparsed"},
    ]


def test_metric_module_labels_match_the_schema():
    spec = importlib.util.spec_from_file_location("ooc_accuracy", MODULE_DIR / "ooc_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert tuple(module.LABELS) == LABELS
