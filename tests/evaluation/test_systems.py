"""The systems `evaluate` compares and how one test set is scored (mmkd.evaluation.systems), on hand-made answer
tables whose right values are worked out in the comments; a stand-in answerer returns fixed scores per student."""

import json

import polars as pl
import pytest

from mmkd import paths
from mmkd.evaluation.systems import (
    Student,
    best_teacher,
    evaluate_set,
    grouped,
    students,
    val_thresholds,
    write_system_files,
)
from mmkd.modeling import ADAPTER_INFO
from mmkd.schema import answers_frame

F, P = "falsified", "pristine"


def scored(source: str, scores: list[float | None], prefix: str = "t") -> pl.DataFrame:
    """One answer per score, labelled by score >= 0.5."""
    rows = [
        {"id": f"{prefix}{i}", "source": source, "status": "ok", "score": s, "label": F if s >= 0.5 else P}
        for i, s in enumerate(scores)
    ]
    return answers_frame(rows)


def labelled(source: str, labels: list[str]) -> pl.DataFrame:
    """One unscored answer per label (a teacher served without logprobs)."""
    return answers_frame([{"id": f"t{i}", "source": source, "status": "ok", "label": x} for i, x in enumerate(labels)])


def gold(labels: list[str], prefix: str = "t") -> pl.DataFrame:
    return pl.DataFrame({"id": [f"{prefix}{i}" for i in range(len(labels))], "gold_label": labels})


class FixedAnswers:
    """An answerer that returns each student's fixed scores and records whom it asked."""

    def __init__(self, scores: dict[str, list[float]], prefix: str = "t"):
        self.scores, self.prefix, self.asked = scores, prefix, []

    def __call__(self, student: Student, items: pl.DataFrame) -> pl.DataFrame:
        self.asked.append(student)
        return scored(student.source, self.scores[student.source], self.prefix)


def test_the_students_are_named_by_where_their_files_go():
    found = students(zero_shot=True, baselines=["random_budget", "gold_only"])
    assert found == {
        "zero_shot": Student("zero_shot", None),
        "stage1": Student("stage1", str(paths.STAGE1_ADAPTER)),
        "stage2": Student("stage2", str(paths.STAGE2_ADAPTER)),
        "baselines/random_budget": Student("random_budget", str(paths.BASELINE_MODELS / "random_budget")),
        "baselines/gold_only": Student("gold_only", str(paths.BASELINE_MODELS / "gold_only")),
    }
    assert list(students(zero_shot=False, baselines=["random_budget"])) == [
        "stage1",
        "stage2",
        "baselines/random_budget",
    ]
    assert list(students(zero_shot=False, baselines=[])) == [
        "stage1",
        "stage2",
    ]  # baselines.stage2: [] switches it off


def test_val_thresholds_read_adapters_and_calibrate_the_rest_on_val(tmp_path):
    recorded = {"value": 0.42, "rule": "max_fpr", "max_fpr": 0.1, "val_n": 9, "val_n_scored": 9, "val_accuracy": 0.8}
    with_one, without = tmp_path / "stage1", tmp_path / "random_budget"
    for d, info in ((with_one, {"threshold": recorded}), (without, {})):
        d.mkdir()
        (d / ADAPTER_INFO).write_text(json.dumps({"base": "b", "parent": None} | info))
    systems = {
        "zero_shot": Student("zero_shot", None),
        "stage1": Student("stage1", str(with_one)),
        "baselines/random_budget": Student("random_budget", str(without)),
    }
    # zero-shot's val scores: falsified 0.3, 0.9, pristine 0.1, 0.4 -> 0.9 (tests/test_calibration.py works it out).
    # The teacher's: falsified 0.8, 0.7, pristine 0.2, 0.6: t=0.7 flags exactly the falsified two, 4/4.
    answer = FixedAnswers({"zero_shot": [0.3, 0.9, 0.1, 0.4]}, prefix="v")
    val_gold = gold([F, F, P, P], prefix="v")
    teacher = scored("ta", [0.8, 0.7, 0.2, 0.6], prefix="v")
    thresholds = val_thresholds(systems, {"ta": teacher}, val_gold.select("id"), val_gold, answer, max_fpr=None)
    assert answer.asked == [Student("zero_shot", None)]  # an adapter's threshold is read, not re-chosen
    assert thresholds["stage1"] == recorded
    assert thresholds["baselines/random_budget"] is None
    assert (thresholds["zero_shot"]["value"], thresholds["zero_shot"]["val_accuracy"]) == (0.9, 0.75)
    assert (thresholds["teachers/ta"]["value"], thresholds["teachers/ta"]["val_accuracy"]) == (0.7, 1.0)
    assert set(thresholds) == {"zero_shot", "stage1", "baselines/random_budget", "teachers/ta"}


def test_grouped_nests_teachers_and_baselines_by_their_own_names():
    by_system = {"stage2": 1, "teachers/ta": 2, "baselines/majority_vote": 3}
    assert grouped(by_system) == {"stage2": 1, "teachers": {"ta": 2}, "baselines": {"majority_vote": 3}}
    assert grouped({"stage1": 0}) == {"stage1": 0, "teachers": {}, "baselines": {}}


def test_the_best_teacher_is_the_most_accurate_and_a_tie_goes_to_the_first_name():
    assert best_teacher({"b": {"accuracy": 0.6}, "a": {"accuracy": 0.5}}) == "b"
    assert best_teacher({"b": {"accuracy": 0.5}, "a": {"accuracy": 0.5}}) == "a"


@pytest.fixture
def one_set():
    """Test gold F, F, P, P; two unscored teachers at 3/4 each; three students with fixed scores."""
    systems = {
        "stage1": Student("stage1", "models/stage1"),
        "stage2": Student("stage2", "models/stage2"),
        "baselines/random_budget": Student("random_budget", "models/baselines/random_budget"),
    }
    answer = FixedAnswers(
        {
            "stage1": [0.95, 0.35, 0.2, 0.6],  # at 0.5: F P P F, 2/4; at 0.9 only 0.95 is flagged: 3/4
            "stage2": [0.9, 0.8, 0.1, 0.2],  # 4/4
            "random_budget": [0.95, 0.35, 0.2, 0.6],
        }
    )
    teachers = {"tb": labelled("tb", [F, P, P, P]), "ta": labelled("ta", [F, F, P, F])}
    thresholds = {
        "stage1": {"value": 0.9, "rule": "max_accuracy"},
        "stage2": None,
        "baselines/random_budget": {"value": 0.9, "rule": "max_fpr"},
    }
    return systems, teachers, gold([F, F, P, P]), thresholds, answer


def test_one_test_set_scores_every_system_at_its_own_val_threshold(one_set):
    systems, teachers, test_gold, thresholds, answer = one_set
    metrics, answers = evaluate_set(systems, teachers, test_gold.select("id"), test_gold, thresholds, answer, seed=0)
    assert set(answers) == {*systems, "teachers/ta", "teachers/tb", "baselines/majority_vote"}
    assert answers["baselines/random_budget"]["source"].unique().to_list() == ["random_budget"]
    assert set(metrics) == {"stage1", "stage2", "teachers", "baselines", "significance"}
    assert set(metrics["baselines"]) == {"random_budget", "majority_vote"}
    assert (metrics["stage1"]["accuracy"], metrics["stage1"]["accuracy_at_threshold"]) == (0.5, 0.75)
    trained = metrics["baselines"]["random_budget"]  # its threshold is found under its system name
    assert (trained["threshold"], trained["threshold_rule"], trained["accuracy_at_threshold"]) == (
        0.9,
        "max_fpr",
        0.75,
    )
    assert metrics["stage2"]["threshold"] is None and metrics["stage2"]["accuracy"] == 1.0
    # the vote of ta (F F P F) and tb (F P P P): F, abstain, P, abstain -> 2/4 right, half covered; no score
    vote = metrics["baselines"]["majority_vote"]
    assert (vote["accuracy"], vote["coverage"], vote["threshold"], vote["n_scored"]) == (0.5, 0.5, None, 0)
    # ta and tb tie at 3/4: the first name is the best teacher
    assert set(metrics["significance"]) == {
        "stage2_vs_best_teacher (ta)",
        "stage2_vs_stage1",
        "stage2_vs_random_budget",
        "stage2_vs_majority_vote",
    }
    assert metrics["significance"]["stage2_vs_stage1"]["accuracy_diff"] == 0.5
    assert metrics["significance"]["stage2_vs_best_teacher (ta)"]["only_system_right"] == 1


def test_a_finer_gold_class_adds_accuracies_per_class(one_set):
    systems, teachers, test_gold, thresholds, answer = one_set
    finer = test_gold.with_columns(gold_class=pl.Series(["ooc", "ooc", "true", "true"]))
    metrics, _ = evaluate_set(systems, teachers, finer.select("id"), finer, thresholds, answer, seed=0)
    assert metrics["stage1"]["accuracy_by_class"] == {"ooc": 0.5, "true": 0.5}
    assert (
        "accuracy_by_class"
        not in evaluate_set(systems, teachers, test_gold, test_gold, thresholds, answer, seed=0)[0]["stage1"]
    )


def test_every_system_gets_its_files_and_only_scored_ones_get_curves(one_set, tmp_path, monkeypatch):
    systems, teachers, test_gold, thresholds, answer = one_set
    _, answers = evaluate_set(systems, teachers, test_gold.select("id"), test_gold, thresholds, answer, seed=0)
    monkeypatch.chdir(tmp_path)
    write_system_files(answers, test_gold, "test_sets/ood/")
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    names = [f"test_sets/ood/{name}" for name in sorted(answers)]
    curves = [f"test_sets/ood/{name}" for name in ("stage1", "stage2", "baselines/random_budget")]
    assert written == {
        *(f"{paths.PREDICTIONS}/{n}.parquet" for n in names),
        *(f"{paths.CONFUSION}/{n}.csv" for n in names),
        *(f"{paths.ROC}/{n}.csv" for n in curves),
        *(f"{paths.RELIABILITY}/{n}.csv" for n in curves),
    }
    assert pl.read_parquet(paths.PREDICTIONS / "test_sets/ood/stage2.parquet").equals(answers["stage2"])
