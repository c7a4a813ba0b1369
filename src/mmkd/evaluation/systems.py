"""The systems the ``evaluate`` stage compares, and how they are scored on one test set.

A system is named by where its files go (``stage2``, ``teachers/<teacher>``, ``baselines/<baseline>``), and
evaluate.json nests its metrics the same way: the students at the top level, the teachers under ``teachers`` and
the baselines under ``baselines``. The students (zero-shot, Stage 1, Stage 2 and every trained baseline) answer
through an ``Answerer``; the teachers' answers and the majority vote come from the labelling stages' files.

A test set is the test split of ``data.dir`` or an extra set of ``data.test_sets`` (items in data/test_sets/<set>,
gold in data/test_gold/<set>; e.g. the demo's out-of-distribution set or VERITE). Every system gets ``score_ranked``'s
metrics; where a set's gold has a finer class (``gold_class``, e.g. VERITE's true / miscaptioned / out-of-context),
accuracies per class and per pair of classes are added (``class_accuracies``).

Thresholds come from val only, before any test label is read: a trained student's is the one its training stage
recorded in its adapter; zero-shot and every teacher are calibrated here on their val answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mmkd import paths
from mmkd.annotation.labels import ORIGIN, GoldSource, split_gold
from mmkd.evaluation.calibration import with_score_calibration
from mmkd.evaluation.metrics import class_accuracies, compare, confusion_rows, reliability_rows, roc_rows, score_ranked
from mmkd.evaluation.thresholds import calibrate, recorded_calibration
from mmkd.inference.answering import label_items
from mmkd.inference.local import LocalBackend, LocalConfig
from mmkd.schema import read_answers, read_gold, read_items
from mmkd.selection.majority import majority_vote

TEACHERS, BASELINES = "teachers", "baselines"  # evaluate.json's groups, and the folders of their files


@dataclass(frozen=True)
class Student:
    """A student system: the name its answers carry (``source``) and its adapter (None: the base model)."""

    source: str
    adapter: str | None


Answerer = Callable[[Student, pl.DataFrame], pl.DataFrame]  # a student's answers to a table of items


@dataclass(frozen=True)
class StudentAnswerer:
    """Answers items with the student base model plus a ``Student``'s adapter (the ``evaluate`` params)."""

    model: str  # the base model (student.model)
    dtype: str
    prompt_version: str
    batch_size: int
    max_new_tokens: int

    def __call__(self, student: Student, items: pl.DataFrame) -> pl.DataFrame:
        config = LocalConfig(
            model=self.model,
            adapter=student.adapter,
            dtype=self.dtype,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
        )
        backend = LocalBackend(config, name=student.source)
        return label_items(backend, items, source=student.source, prompt_version=self.prompt_version)


def students(*, zero_shot: bool, baselines: Iterable[str]) -> dict[str, Student]:
    """Every student system, by system name: zero-shot (when asked for), Stage 1, Stage 2, then the trained
    ``baselines`` (``baselines.stage2`` and ``baselines.supervised``)."""
    found = {"zero_shot": Student("zero_shot", None)} if zero_shot else {}
    found |= {"stage1": Student("stage1", str(paths.STAGE1_ADAPTER))}
    found |= {"stage2": Student("stage2", str(paths.STAGE2_ADAPTER))}
    for name in baselines:
        found[f"{BASELINES}/{name}"] = Student(name, str(paths.baseline_dirs(name)[0]))
    return found


def val_thresholds(
    systems: dict[str, Student],
    teacher_val_answers: dict[str, pl.DataFrame],
    val_items: pl.DataFrame,
    val_gold: pl.DataFrame,
    answer: Answerer,
    *,
    max_fpr: float | None,
) -> dict[str, dict | None]:
    """Each scored system's val calibration (``calibrate``'s result with its score calibration, None where an
    adapter recorded none), by system name: recorded in a student's adapter, or fitted here from val answers where
    it has no adapter and for every teacher. Reads val only."""
    thresholds = {}
    for name, student in systems.items():
        if student.adapter is None:
            answers = answer(student, val_items)
            thresholds[name] = with_score_calibration(calibrate(answers, val_gold, max_fpr=max_fpr), answers, val_gold)
        else:
            thresholds[name] = recorded_calibration(student.adapter)
    for teacher, answers in teacher_val_answers.items():
        chosen = calibrate(answers, val_gold, max_fpr=max_fpr)
        thresholds[f"{TEACHERS}/{teacher}"] = with_score_calibration(chosen, answers, val_gold)
    return thresholds


def answer_all(
    systems: dict[str, Student], teacher_answers: dict[str, pl.DataFrame], items: pl.DataFrame, answer: Answerer
) -> dict[str, pl.DataFrame]:
    """Every system's answers to one test set's items, by system name: the students', the teachers' (given) and
    the teachers' majority vote (a baseline without a student, and without a score)."""
    answers = {name: answer(student, items) for name, student in systems.items()}
    answers |= {f"{TEACHERS}/{t}": a for t, a in teacher_answers.items()}
    answers[f"{BASELINES}/majority_vote"] = majority_vote(teacher_answers)
    return answers


def grouped(by_system: dict) -> dict:
    """``by_system`` (keyed by system name) in evaluate.json's shape: students at the top level, the rest under
    their group (``teachers``, ``baselines``), each by its own name; both groups are always there."""
    tree = {TEACHERS: {}, BASELINES: {}}
    for name, value in by_system.items():
        group, _, own = name.rpartition("/")
        (tree[group] if group else tree)[own] = value
    return tree


def best_teacher(teachers: dict[str, dict]) -> str:
    """The teacher with the highest accuracy on this set (the strongest comparison); a tie goes to the name that
    sorts first, so that the choice does not depend on the order of the teachers in params."""
    return max(sorted(teachers), key=lambda t: teachers[t]["accuracy"])


def stage2_comparisons(answers: dict, gold: pl.DataFrame, best: str, *, seed: int) -> dict:
    """Stage 2 against the best teacher, Stage 1 and every baseline, paired on the same items (``compare``);
    ``answers`` is in evaluate.json's shape (``grouped``)."""
    others = {f"best_teacher ({best})": answers[TEACHERS][best], "stage1": answers["stage1"]} | answers[BASELINES]
    return {f"stage2_vs_{name}": compare(answers["stage2"], other, gold, seed=seed) for name, other in others.items()}


def evaluate_set(
    systems: dict[str, Student],
    teacher_answers: dict[str, pl.DataFrame],
    items: pl.DataFrame,
    gold: pl.DataFrame,
    thresholds: dict[str, dict | None],
    answer: Answerer,
    *,
    seed: int,
) -> tuple[dict, dict[str, pl.DataFrame]]:
    """Every system on one test set: its metrics in evaluate.json's shape (with Stage 2's paired comparisons under
    ``significance``), and every system's answers by system name."""
    answers = answer_all(systems, teacher_answers, items, answer)
    scored = {
        name: score_ranked(a, gold, thresholds.get(name)) | class_accuracies(a, gold)  # {} without finer classes
        for name, a in answers.items()
    }
    metrics = grouped(scored)
    best = best_teacher(metrics[TEACHERS])
    metrics["significance"] = stage2_comparisons(grouped(answers), gold, best, seed=seed)
    return metrics, answers


def write_system_files(answers: dict[str, pl.DataFrame], gold: pl.DataFrame, where: str = "") -> None:
    """Each system's predictions, confusion rows and, where it has scores, ROC and reliability rows, named
    ``<where><system name>`` under mmkd.paths' folders (``where``: e.g. ``test_sets/<set>/``)."""
    for folder in (paths.ROC, paths.RELIABILITY):
        folder.mkdir(parents=True, exist_ok=True)  # outputs of the stage even when no system has a score
    for system, table in answers.items():
        name = f"{where}{system}"
        for folder in (paths.PREDICTIONS, paths.CONFUSION, paths.ROC, paths.RELIABILITY):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
        table.write_parquet(paths.PREDICTIONS / f"{name}.parquet")
        confusion_rows(table, gold).write_csv(paths.CONFUSION / f"{name}.csv")
        if table["score"].is_not_null().any():  # a system without scores has no curve
            roc_rows(table, gold).write_csv(paths.ROC / f"{name}.csv")
            reliability_rows(table, gold).write_csv(paths.RELIABILITY / f"{name}.csv")


def evaluate_test_set(
    test_set: str | None,
    *,
    data_dir: str | Path,
    teachers: list[str],
    systems: dict[str, Student],
    thresholds: dict[str, dict | None],
    answer: Answerer,
    seed: int,
    prefer: str = "dataset",
) -> dict:
    """``evaluate_set`` on the test split of ``data_dir`` (``test_set`` None) or on an extra test set (its name),
    read from the paths of mmkd.paths, with every system's files written (``write_system_files``; an extra set's
    under ``test_sets/<set>/``); returns its metrics."""
    if test_set is None:
        items_file, where = paths.items_file(data_dir, "test"), ""
        gold_file = split_gold(data_dir, "test", prefer)  # the dataset's and people's (``prefer``) labels
        answer_files = {t: paths.answers_file(t, "test") for t in teachers}
    else:
        items_file, where = paths.test_set_items(test_set), f"test_sets/{test_set}/"
        gold_file, answer_files = (
            paths.test_set_gold(test_set),
            {t: paths.test_set_answers(t, test_set) for t in teachers},
        )
    gold = gold_file.require("test").drop(ORIGIN) if isinstance(gold_file, GoldSource) else read_gold(gold_file)
    teacher_answers = {t: read_answers(f) for t, f in answer_files.items()}
    metrics, answers = evaluate_set(
        systems, teacher_answers, read_items(items_file), gold, thresholds, answer, seed=seed
    )
    write_system_files(answers, gold, where)
    return metrics
