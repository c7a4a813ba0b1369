"""Which training items get a gold label (``split.select``), the majority-vote baseline, and the significance
figures, each against hand-worked answers."""

import numpy as np
import polars as pl
import pytest
from test_conflict import _answers, _gold

from mmkd.evaluation.metrics import compare, score
from mmkd.evaluation.significance import mcnemar_exact, paired_bootstrap, wilson_interval
from mmkd.selection.baselines import gold_sft_rows
from mmkd.selection.conflicts import Selection, conflict_split, sample_order
from mmkd.selection.majority import majority_vote

# Three teachers on six items. 1: all agree; 2: 2-1; 3: 1-1 and one unparsed (a tie); 4: 2 agree, one unparsed;
# 5: every teacher skipped it (unusable); 6: one label, two failures.
ROWS = {
    "a": [("1", "pristine", "ok"), ("2", "pristine", "ok"), ("3", "pristine", "ok"), ("4", "falsified", "ok"),
          ("5", None, "skipped"), ("6", "pristine", "ok")],
    "b": [("1", "pristine", "ok"), ("2", "falsified", "ok"), ("3", "falsified", "ok"), ("4", "falsified", "ok"),
          ("5", None, "skipped"), ("6", None, "error")],
    "c": [("1", "pristine", "ok"), ("2", "falsified", "ok"), ("3", None, "unparsed"), ("4", None, "unparsed"),
          ("5", None, "skipped"), ("6", None, "unparsed")],
}  # fmt: skip
GOLD = {"1": "pristine", "2": "falsified", "3": "falsified", "4": "falsified", "5": "pristine", "6": "pristine"}


@pytest.fixture
def answers():
    return {t: _answers(t, rows) for t, rows in ROWS.items()}


def read_ids(answers, tmp_path, **selection) -> list[str]:
    selected, _, _, metrics = conflict_split(answers, _gold(tmp_path, GOLD), selection=Selection(**selection))
    assert metrics["gold_labels_read"] == len(selected)
    return sorted(selected["id"])


@pytest.mark.parametrize(
    "selection, expected",
    [
        ({"rule": "conflict"}, ["2", "3", "4", "6"]),  # any disagreement or non-answer
        ({"rule": "no_majority"}, ["3", "6"]),  # 2 and 4 have a 2-of-3 majority; 3 is a tie; 6 has one vote of 3
        ({"rule": "all"}, ["1", "2", "3", "4", "6"]),  # every usable item, never the all-skipped one
    ],
)
def test_each_rule_reads_exactly_the_expected_gold_labels(answers, tmp_path, selection, expected):
    assert read_ids(answers, tmp_path, **selection) == expected


def test_no_majority_with_unparsed_ignored_counts_only_parsed_votes(answers, tmp_path):
    selected, _, _, _ = conflict_split(
        answers, _gold(tmp_path, GOLD), unparsed="ignore", selection=Selection("no_majority")
    )
    assert sorted(selected["id"]) == ["3"]  # 6: one parsed vote of one is a majority when the others are ignored


def test_random_is_seeded_and_the_budget_caps_any_rule_reproducibly(answers, tmp_path):
    first = read_ids(answers, tmp_path, rule="random", budget=3, seed=0)
    assert len(first) == 3 and first == read_ids(answers, tmp_path, rule="random", budget=3, seed=0)
    seeds = {tuple(read_ids(answers, tmp_path, rule="random", budget=3, seed=s)) for s in range(8)}
    assert len(seeds) > 1  # another seed, another sample
    usable = ["1", "2", "3", "4", "6"]
    assert first == sorted(sample_order(usable, 0)[:3])  # the documented order: SHA-256 of "<seed>:<id>"
    # a fraction of the usable items, rounded down; a cap on conflict keeps a nested seeded sub-sample
    assert len(read_ids(answers, tmp_path, rule="random", budget=0.5)) == 2
    two = read_ids(answers, tmp_path, rule="conflict", budget=2, seed=5)
    three = read_ids(answers, tmp_path, rule="conflict", budget=3, seed=5)
    assert len(two) == 2 and set(two) < set(three) <= {"2", "3", "4", "6"}
    assert read_ids(answers, tmp_path, rule="conflict", budget=10) == ["2", "3", "4", "6"]  # under the cap: all


@pytest.mark.parametrize(
    "selection, message",
    [
        ({"rule": "random"}, "random needs a budget"),
        ({"rule": "confict"}, "must be one of"),
        ({"budget": 1.5}, r"in \(0, 1\]"),
        ({"budget": -1}, ">= 0 items"),
        ({"budget": "ten"}, "a count, a fraction or null"),
    ],
)
def test_bad_selections_are_refused(selection, message):
    with pytest.raises(ValueError, match=message):
        Selection(**selection)


def test_the_split_metrics_record_the_rule_and_every_gold_label_read(answers, tmp_path):
    _, _, _, metrics = conflict_split(answers, _gold(tmp_path, GOLD), selection=Selection("no_majority", seed=3))
    assert metrics["selection"] == {"rule": "no_majority", "budget": None, "seed": 3, "candidates": 2}
    assert (metrics["gold_labels_read"], metrics["labelled_fraction"]) == (2, round(2 / 6, 6))
    assert metrics["conflict_count"] == 4  # the conflict count is reported whatever the rule


def test_majority_vote_labels_ties_as_abstentions(answers):
    votes = majority_vote(answers)
    got = dict(zip(votes["id"], zip(votes["label"], votes["status"], strict=True), strict=True))
    assert got == {
        "1": ("pristine", "ok"),
        "2": ("falsified", "ok"),
        "3": (None, "abstain"),  # 1-1 and an unparsed answer: no strict majority
        "4": ("falsified", "ok"),
        "5": (None, "abstain"),  # no teacher could answer
        "6": (None, "abstain"),  # one vote of three
    }
    gold = pl.DataFrame({"id": list(GOLD), "gold_label": list(GOLD.values())})
    metrics = score(votes, gold)
    assert metrics["accuracy"] == 0.5 and metrics["coverage"] == 0.5  # 1, 2, 4 right; abstentions are wrong


def test_wilson_interval_matches_the_hand_computation():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.490162, 0.943318), abs=1e-6)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) is None


def test_mcnemar_exact_matches_the_binomial_tail():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 0], dtype=bool)  # 6 items only a gets right, 1 only b
    b = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    p, only_a, only_b = mcnemar_exact(a, b)
    assert (only_a, only_b) == (6, 1) and p == pytest.approx(2 * (1 + 7) / 2**7)  # 0.125
    assert mcnemar_exact(a, a) == (1.0, 0, 0)


def test_paired_bootstrap_difference_and_interval():
    a = np.array([1] * 30 + [0] * 10)
    b = np.array([1] * 20 + [0] * 20)
    diff, low, high = paired_bootstrap(a, b, samples=4000, seed=1)
    assert diff == pytest.approx(0.25) and low < diff < high
    # the sd of the mean difference of 40 values that are 1 on 10 items and 0 elsewhere: sqrt(.25 * .75 / 40)
    assert (high - low) / (2 * 1.96) == pytest.approx(np.sqrt(0.25 * 0.75 / 40), rel=0.15)
    assert paired_bootstrap(a, b, samples=500, seed=7) == paired_bootstrap(a, b, samples=500, seed=7)
    assert paired_bootstrap(a, a, samples=100)[1:] == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(a, b[:5])


def test_compare_pairs_two_systems_on_the_same_items():
    gold = pl.DataFrame({"id": ["1", "2", "3", "4"], "gold_label": ["pristine", "falsified", "pristine", "falsified"]})

    def system(labels):
        return pl.DataFrame(
            {"id": ["4", "3", "2", "1"], "label": labels[::-1], "status": ["ok"] * 4}  # any row order
        )

    result = compare(system(["pristine", "falsified", "pristine", "pristine"]),
                     system(["falsified", "pristine", "falsified", "falsified"]), gold, samples=200)  # fmt: skip
    assert result["accuracy_diff"] == pytest.approx(0.75 - 0.25)
    assert (result["only_system_right"], result["only_other_right"]) == (3, 1)
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)


def test_gold_only_targets_keep_agreeing_answers_and_a_bare_label_where_no_teacher_was_right(answers, tmp_path):
    selected, sft, _, _ = conflict_split(answers, _gold(tmp_path, GOLD), selection=Selection("all"))
    rows = gold_sft_rows(selected, sft)
    got = sorted(zip(rows["id"], rows["source"], rows["completion"], strict=True))
    # 1: all three right; 2: b and c; 3: only b said falsified; 4: a and b; 6: only a, pristine (gold pristine)
    assert [(i, s) for i, s, _ in got] == [
        ("1", "a"), ("1", "b"), ("1", "c"), ("2", "b"), ("2", "c"), ("3", "b"), ("4", "a"), ("4", "b"), ("6", "a"),
    ]  # fmt: skip
    gold = {"1": "pristine", "2": "falsified", "3": "falsified", "4": "falsified", "6": "pristine"}
    wrong = {"5": "falsified"}  # every teacher skipped item 5: unusable, never a target
    assert all(c.endswith(gold[i]) for i, _, c in got) and not set(wrong) & {i for i, _, _ in got}
    none_right = {"x": {"a": ("x", "pristine", "ok"), "b": ("x", "pristine", "ok")}}
    two = {t: _answers(t, [none_right["x"][t]]) for t in ("a", "b")}
    selected, sft, _, _ = conflict_split(two, _gold(tmp_path, {"x": "falsified"}), selection=Selection("all"))
    bare = gold_sft_rows(selected, sft)
    assert bare.to_dicts() == [{"id": "x", "source": "gold", "completion": "Label: falsified. Rationale:"}]
