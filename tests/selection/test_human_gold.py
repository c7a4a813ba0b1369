"""The conflict split reading gold from people's labels (mmkd.annotation.labels.GoldSource): alone, merged with a
dataset's gold by the documented precedence, and stopping with the count and the commands when labels are missing.
The teachers and items are tests/test_selection.py's (conflicts 2, 3, 4, 6)."""

import pytest
from test_conflict import _answers, _gold
from test_selection import GOLD, ROWS

from mmkd.annotation.labels import GoldSource, append_label_rows
from mmkd.schema import SchemaError
from mmkd.selection.baselines import split_with_baselines
from mmkd.selection.conflicts import Selection, conflict_split, sample_order

CONFLICTS = ["2", "3", "4", "6"]


@pytest.fixture
def answers():
    return {t: _answers(t, rows) for t, rows in ROWS.items()}


def people(tmp_path, labels: dict[str, str], who="ann"):
    path = tmp_path / "annotation" / "labels" / "train.jsonl"
    append_label_rows(
        path, [{"id": i, "label": lab, "annotator": who, "time": "2026-12-07T09:00:00"} for i, lab in labels.items()]
    )
    return path


def test_people_alone_label_the_conflicts_of_an_unlabelled_dataset(answers, tmp_path):
    labels = people(tmp_path, {i: GOLD[i] for i in CONFLICTS})
    source = GoldSource(tmp_path / "no-such.gold.parquet", labels)
    selected, _, _, metrics = conflict_split(answers, source)
    with_dataset_gold = conflict_split(answers, _gold(tmp_path, GOLD))
    assert selected.equals(with_dataset_gold[0])  # the same split as from the dataset's gold
    assert metrics["gold_labels_read"] == 4 and metrics["human_labels_read"] == 4


def test_the_dataset_wins_by_default_and_people_win_when_preferred(answers, tmp_path):
    flipped = {i: ("pristine" if GOLD[i] == "falsified" else "falsified") for i in CONFLICTS[:2]}
    labels = people(tmp_path, flipped)
    dataset = _gold(tmp_path, GOLD)
    by_dataset, _, _, m1 = conflict_split(answers, GoldSource(dataset, labels, "dataset"))
    by_people, _, _, m2 = conflict_split(answers, GoldSource(dataset, labels, "human"))
    assert dict(zip(by_dataset["id"], by_dataset["gold_label"], strict=True)) == {i: GOLD[i] for i in CONFLICTS}
    assert (
        dict(zip(by_people["id"], by_people["gold_label"], strict=True)) == {i: GOLD[i] for i in CONFLICTS} | flipped
    )
    assert (m1["human_labels_read"], m2["human_labels_read"]) == (0, 2)


def test_missing_labels_stop_the_split_with_the_count_and_the_commands(answers, tmp_path):
    labels = people(tmp_path, {"2": GOLD["2"]})
    with pytest.raises(SchemaError) as stop:
        conflict_split(answers, GoldSource(None, labels))
    message = str(stop.value)
    assert "3 of the 4 selected item(s) have no gold label (e.g. ['3', '4', '6'])" in message
    assert "`mmkd annotate export`" in message and "`mmkd annotate import <file>`" in message
    assert str(labels) in message


def test_a_tie_between_annotators_is_not_a_label(answers, tmp_path):
    labels = people(tmp_path, {i: GOLD[i] for i in CONFLICTS})
    people(tmp_path, {"6": "pristine" if GOLD["6"] == "falsified" else "falsified"}, who="bob")  # 1 vs 1 on item 6
    with pytest.raises(SchemaError, match=r"1 of the 4 selected item\(s\) have no gold label \(e.g. \['6'\]\)"):
        conflict_split(answers, GoldSource(None, labels))


def test_random_budget_is_switchable_so_that_people_label_only_the_conflicts(answers, tmp_path):
    labels = people(tmp_path, {i: GOLD[i] for i in CONFLICTS})
    source = GoldSource(None, labels)
    tables, metrics = split_with_baselines(
        answers, source, unparsed="conflict", selection=Selection(), supervised=["gold_only"], stage2=()
    )
    assert set(tables) == {None, "gold_only"} and set(metrics["baselines"]) == {"gold_only"}
    assert metrics["gold_labels_read_with_baselines"] == 4 and metrics["human_labels_read"] == 4
    # random_budget would need labels of its own: with a seed whose sample holds item 1 (agreed, so unlabelled)
    seed = next(s for s in range(100) if "1" in sample_order(["1", "2", "3", "4", "6"], s)[:4])
    with pytest.raises(SchemaError, match="1 of the 4 selected item"):
        split_with_baselines(answers, source, unparsed="conflict", selection=Selection(seed=seed), supervised=[])


def scored(source: str, rows: dict[str, tuple[str, float | None]]):
    """answers with scores: id -> (label, score)."""
    from mmkd.schema import answers_frame

    return answers_frame(
        [
            {"id": i, "source": source, "label": lab, "status": "ok", "raw_text": f"{source}: {lab}", "score": s}
            for i, (lab, s) in rows.items()
        ]
    )


def test_uncertain_takes_the_conflicts_then_the_least_confident_agreements_within_the_budget(tmp_path):
    # a/b disagree on c1, c2; agree on the rest. Least confident teacher per agreement (1 - |2s - 1|):
    # u1: max(0.2, 0.8) -> 0.8 (0.6 is near 0.5); u2: 0.4; u3: 0.02; u4: no score -> last
    a = scored(
        "a",
        {
            "c1": ("falsified", 0.9),
            "c2": ("pristine", 0.1),
            "u1": ("falsified", 0.9),
            "u2": ("falsified", 0.8),
            "u3": ("pristine", 0.01),
            "u4": ("pristine", None),
        },
    )
    b = scored(
        "b",
        {
            "c1": ("pristine", 0.2),
            "c2": ("falsified", 0.7),
            "u1": ("falsified", 0.6),
            "u2": ("falsified", 0.99),
            "u3": ("pristine", 0.0),
            "u4": ("pristine", None),
        },
    )
    gold = _gold(
        tmp_path,
        {
            "c1": "falsified",
            "c2": "pristine",
            "u1": "falsified",
            "u2": "falsified",
            "u3": "pristine",
            "u4": "pristine",
        },
    )
    for budget, expected in [
        (3, {"c1", "c2", "u1"}),
        (4, {"c1", "c2", "u1", "u2"}),
        (5, {"c1", "c2", "u1", "u2", "u3"}),
        (1, None),
    ]:
        selected, _, _, metrics = conflict_split(
            {"a": a, "b": b}, gold, selection=Selection("uncertain", budget=budget)
        )
        if expected is None:  # fewer labels than conflicts: a seeded sample of the conflicts, as rule conflict does
            assert len(selected) == 1 and set(selected["id"]) <= {"c1", "c2"}
        else:
            assert set(selected["id"]) == expected and metrics["gold_labels_read"] == budget
    with pytest.raises(ValueError, match="uncertain needs a budget"):
        Selection("uncertain")
