"""The conflict split: which items are conflicts, which gold labels are read, and what Stage 2 gets."""

import polars as pl
import pytest

from mmkd.schema import SchemaError, answers_frame
from mmkd.selection.conflicts import answers_wide, conflict_split, find_conflicts
from mmkd.selection.targets import stage1_rows


def _answers(source: str, rows: list[tuple[str, str | None, str]]) -> pl.DataFrame:
    """rows: (id, label or None, status); raw_text is derived so pairs can be checked."""
    return answers_frame(
        [
            {
                "id": i,
                "source": source,
                "label": label,
                "status": status,
                "raw_text": None if status in ("error", "skipped") else f"{source} says {label or 'garbage'}",
                "prompt_version": "v1",
            }
            for i, label, status in rows
        ]
    )


@pytest.fixture
def three_teachers():
    a = _answers(
        "a",
        [
            ("1", "pristine", "ok"),
            ("2", "pristine", "ok"),
            ("3", "falsified", "ok"),
            ("4", "pristine", "ok"),
            ("5", None, "skipped"),
        ],
    )
    b = _answers(
        "b",
        [
            ("1", "pristine", "ok"),
            ("2", "falsified", "ok"),
            ("3", "falsified", "ok"),
            ("4", None, "unparsed"),
            ("5", None, "skipped"),
        ],
    )
    c = _answers(
        "c",
        [
            ("1", "pristine", "ok"),
            ("2", "falsified", "ok"),
            ("3", "falsified", "ok"),
            ("4", "pristine", "ok"),
            ("5", None, "skipped"),
        ],
    )
    return {"a": a, "b": b, "c": c}


def _gold(tmp_path, labels: dict[str, str]):
    path = tmp_path / "train.gold.parquet"
    pl.DataFrame({"id": list(labels), "gold_label": list(labels.values())}).write_parquet(path)
    return path


def test_rule_for_three_teachers_and_unparsed(three_teachers):
    wide = find_conflicts(answers_wide(three_teachers), ["a", "b", "c"], "conflict")
    got = dict(zip(wide["id"], wide["conflict"], strict=True))
    # 1: all agree; 2: a disagrees; 3: all agree; 4: b unparsed -> conflict; 5: skipped by all -> unusable
    assert got == {"1": False, "2": True, "3": False, "4": True, "5": False}
    assert wide.filter(pl.col("id") == "5")["usable"].item() is False

    ignore = find_conflicts(answers_wide(three_teachers), ["a", "b", "c"], "ignore")
    assert dict(zip(ignore["id"], ignore["conflict"], strict=True))["4"] is False  # a and c agree, b ignored


def test_split_outputs_and_metrics(three_teachers, tmp_path):
    gold = _gold(tmp_path, {"1": "pristine", "2": "falsified", "3": "pristine", "4": "falsified", "5": "pristine"})
    conflicts, sft, pairs, metrics = conflict_split(three_teachers, gold)
    assert conflicts["id"].to_list() == ["2", "4"]
    # Only conflict items carry gold; item 3 (all teachers wrong, but agreeing) is never checked.
    assert dict(zip(conflicts["id"], conflicts["gold_label"], strict=True)) == {"2": "falsified", "4": "falsified"}
    # Item 2: b and c agree with gold, a is rejected; item 4: nobody says falsified -> no chosen answer.
    assert sorted(zip(sft["id"], sft["source"], strict=True)) == [("2", "b"), ("2", "c")]
    assert sorted(zip(pairs["chosen_source"], pairs["rejected_source"], strict=True)) == [("b", "a"), ("c", "a")]
    assert pairs["chosen"].to_list()[0].endswith("falsified") and pairs["rejected"].to_list()[0].endswith("pristine")
    assert metrics["n_items"] == 5
    assert metrics["conflict_count"] == 2 and metrics["conflict_rate"] == 0.4
    assert metrics["labelled_fraction"] == 0.4 and metrics["gold_labels_read"] == 2
    assert metrics["selected_without_chosen"] == 1
    assert metrics["unparsed_rate"] == {"a": 0.0, "b": 0.2, "c": 0.0}
    assert metrics["agreement"]["a|b"]["rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["agreement"]["a|b"]["n_both_parsed"] == 3
    assert metrics["agreement"]["a|c"]["rate"] == pytest.approx(3 / 4)


def test_unparsed_answer_is_a_rejected_response(tmp_path):
    a = _answers("a", [("1", "falsified", "ok")])
    b = _answers("b", [("1", None, "unparsed")])
    _, sft, pairs, _ = conflict_split({"a": a, "b": b}, _gold(tmp_path, {"1": "falsified"}))
    assert sft["source"].to_list() == ["a"]
    assert pairs.select("chosen_source", "rejected_source").row(0) == ("a", "b")


def test_gold_is_needed_only_for_conflicts(three_teachers, tmp_path):
    # The gold file lacks the non-conflict items entirely: the split must not need them.
    _, _, _, metrics = conflict_split(three_teachers, _gold(tmp_path, {"2": "falsified", "4": "pristine"}))
    assert metrics["gold_labels_read"] == 2
    with pytest.raises(SchemaError, match="'4'"):
        conflict_split(three_teachers, _gold(tmp_path, {"2": "falsified"}))


def test_agreeing_teachers_give_an_empty_conflict_set(tmp_path):
    a = _answers("a", [("1", "pristine", "ok"), ("2", "falsified", "ok")])
    b = _answers("b", [("1", "pristine", "ok"), ("2", "falsified", "ok")])
    conflicts, sft, pairs, metrics = conflict_split({"a": a, "b": b}, _gold(tmp_path, {"1": "pristine"}))
    assert conflicts.is_empty() and sft.is_empty() and pairs.is_empty()
    assert metrics["conflict_count"] == 0 and metrics["labelled_fraction"] == 0.0


def test_teachers_must_answer_the_same_items(tmp_path):
    a = _answers("a", [("1", "pristine", "ok")])
    b = _answers("b", [("2", "pristine", "ok")])
    with pytest.raises(SchemaError, match="different set of items"):
        conflict_split({"a": a, "b": b}, _gold(tmp_path, {"1": "pristine"}))


def test_stage1_targets(three_teachers):
    rows = stage1_rows(three_teachers, policy="all")
    # every parsed answer: a 4, b 3, c 4
    assert len(rows) == 11
    assert set(rows.columns) == {"id", "source", "completion"}
    agreed = stage1_rows(three_teachers, policy="agreed")
    assert sorted(set(agreed["id"])) == ["1", "3"]
    with pytest.raises(ValueError, match="stage1.targets"):
        stage1_rows(three_teachers, policy="best")


def test_stage1_majority_targets_drop_the_outvoted_answer(three_teachers):
    rows = stage1_rows(three_teachers, policy="majority")
    kept = {(i, s) for i, s in rows.select("id", "source").iter_rows()}
    # item 2 is 2-1 (a says pristine): a's answer goes; 1 and 3 are unanimous; on 4, b did not parse
    assert kept == {
        ("1", "a"),
        ("1", "b"),
        ("1", "c"),
        ("2", "b"),
        ("2", "c"),
        ("3", "a"),
        ("3", "b"),
        ("3", "c"),
        ("4", "a"),
        ("4", "c"),
    }
    assert set(rows.columns) == {"id", "source", "completion"}


def test_stage1_majority_keeps_both_sides_of_a_tie():
    a = _answers("a", [("1", "pristine", "ok"), ("2", "falsified", "ok")])
    b = _answers("b", [("1", "falsified", "ok"), ("2", "falsified", "ok")])
    rows = stage1_rows({"a": a, "b": b}, policy="majority")
    assert rows.select("id", "source").rows() == [("1", "a"), ("1", "b"), ("2", "a"), ("2", "b")]
    assert rows.equals(stage1_rows({"a": a, "b": b}, policy="all"))
