"""The baselines' training data built beside the method's split (mmkd.selection.baselines), on the three teachers
and six items of tests/test_selection.py, whose conflicts and agreeing teachers are worked out in the comments."""

import pytest
from test_conflict import _answers, _gold
from test_selection import GOLD, ROWS

from mmkd.selection.baselines import BASELINE_KEYS, split_with_baselines, unknown_supervised
from mmkd.selection.conflicts import Selection, sample_order

# Conflicts (unparsed answers disagree): 2 (P F F), 3 (P F -), 4 (F F -), 6 (P - -); 1 agrees; 5 is unusable.
# Teachers that match gold: 2: b, c; 3: b; 4: a, b; 6: a (six SFT rows); 1: a, b, c.
CONFLICTS, USABLE = ["2", "3", "4", "6"], ["1", "2", "3", "4", "6"]


@pytest.fixture
def answers():
    return {t: _answers(t, rows) for t, rows in ROWS.items()}


def split(answers, tmp_path, supervised):
    return split_with_baselines(
        answers, _gold(tmp_path, GOLD), unparsed="conflict", selection=Selection(), supervised=supervised
    )


def test_random_budget_reads_as_many_labels_as_the_method_on_a_seeded_sample(answers, tmp_path):
    tables, metrics = split(answers, tmp_path, [])
    assert set(tables) == {None, "random_budget"}
    method, sample = tables[None][0], tables["random_budget"][0]
    assert sorted(method["id"]) == CONFLICTS and metrics["gold_labels_read"] == 4
    assert sorted(sample["id"]) == sorted(sample_order(USABLE, seed=0)[:4])
    random_budget = metrics["baselines"]["random_budget"]
    assert list(metrics["baselines"]) == ["random_budget"] and set(random_budget) == set(BASELINE_KEYS)
    assert random_budget["gold_labels_read"] == 4 and random_budget["stage2_sft_rows"] == len(
        tables["random_budget"][1]
    )
    assert metrics["gold_labels_read_with_baselines"] == len(set(CONFLICTS) | set(sample["id"]))


def test_supervised_baselines_train_on_gold_with_no_pairs(answers, tmp_path):
    tables, metrics = split(answers, tmp_path, ["gold_only", "full_supervision"])
    assert set(tables) == {None, "random_budget", "gold_only", "full_supervision"}
    selected, rows, pairs = tables["gold_only"]
    assert selected.equals(tables[None][0]) and len(pairs) == 0  # the method's labels, without the other answers
    assert sorted(zip(rows["id"], rows["source"], strict=True)) == [
        ("2", "b"), ("2", "c"), ("3", "b"), ("4", "a"), ("4", "b"), ("6", "a"),
    ]  # fmt: skip
    every, every_rows, every_pairs = tables["full_supervision"]
    assert sorted(every["id"]) == USABLE and len(every_rows) == 9 and len(every_pairs) == 0  # item 1 adds a, b, c
    assert metrics["baselines"]["gold_only"] == {
        "gold_labels_read": 4,
        "human_labels_read": 0,  # every label came from the dataset's gold table
        "labelled_fraction": round(4 / 6, 6),
        "selected_without_chosen": 0,
        "stage2_sft_rows": 6,
        "stage2_dpo_pairs": 0,
    }
    assert metrics["baselines"]["full_supervision"]["gold_labels_read"] == 5
    assert metrics["stage2_dpo_pairs"] == 7  # the method's own: 2: (b|c, a); 3: (b, a|c); 4: (a|b, c); 6: (a, c)
    assert metrics["gold_labels_read_with_baselines"] == 5  # full supervision reads every usable item


def test_an_unknown_supervised_baseline_is_named_with_the_choices():
    assert unknown_supervised(["gold_only", "full_supervision"]) is None
    assert unknown_supervised(["gold_only", "oracle"]) == (
        "baselines.supervised: unknown ['oracle']; use ['gold_only', 'full_supervision']"
    )
    assert unknown_supervised([], ["random_budget", "random"]) == (
        "baselines.stage2: unknown ['random']; use ['random_budget']"
    )
