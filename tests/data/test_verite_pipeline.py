"""Train on NewsCLIPpings, test on NewsCLIPpings and VERITE, through real DVC: a temp repo composed with
``data=newsclippings_verite bootstrap=none`` (the config docs/verite.md gives), both raw folders built by the
fixtures and tracked with ``dvc add``; ``dvc repro`` of ``prepare@newsclippings`` and ``prepare_test@verite``, then
of the rest of the DAG: labelling by two local teachers, split, Stage 1, Stage 2, the baselines and ``evaluate``.

The teachers are tiny models fine-tuned on the prepared items to write the answer format (a random model's answers
never parse, and Stage 1 would have no row), each with one fixed label: teacher_qwen always answers falsified,
teacher_llava always pristine, so that they disagree on every train item and Stage 2 has conflicts to train on. The
student is a random tiny LLaVA. The numbers mean nothing; what is checked is that every stage runs on the two
datasets, that each teacher labels VERITE, that ``evaluate`` writes both test sets in the same shape with VERITE's
per-class and per-pair accuracies equal to the answers and gold on disk, and that in the DAG DVC resolved no stage
but ``evaluate`` reads VERITE's gold.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml
from answering_models import trained_like
from dvc_env import dvc_ok as dvc
from dvc_env import pipeline_repo
from newsclippings_fixture import BASE_ITEMS, MAX_PIXELS, build_raw
from newsclippings_fixture import EXPECTED_SUMMARY as NEWS_SUMMARY
from verite_fixture import EXPECTED_SUMMARY as VERITE_SUMMARY
from verite_fixture import build_verite

from mmkd import paths  # (its test_set_* functions, imported by name, would be collected as tests)
from mmkd.cli import compose
from mmkd.evaluation.metrics import SYSTEM_KEYS
from mmkd.schema import FALSIFIED, PRISTINE, read_answers, read_gold, read_items
from mmkd.training.config import TrainSettings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TEACHERS = {"teacher_qwen": "qwen2_vl", "teacher_llava": "llava"}  # name -> architecture of its tiny model
TEACHER_LABELS = {"teacher_qwen": FALSIFIED, "teacher_llava": PRISTINE}  # the one label each is taught (see below)
OVERRIDES = [
    "data=newsclippings_verite",
    "bootstrap=none",
    f"data.prepare.newsclippings.max_image_pixels={MAX_PIXELS}",
    f"data.prepare_test.verite.max_image_pixels={MAX_PIXELS}",
    *(f"teachers.{name}.model=models/teachers/{arch}" for name, arch in TEACHERS.items()),
    "student.model=models/student_base",
    # The fixture has 4 train items: every parsed answer is a target, and a few steps are enough to run.
    "stage1.targets=all",
    "stage1.train.epochs=2",
    "stage2.sft.epochs=1",
    "stage2.dpo.epochs=1",
    # The student is random: it never writes the format, and each of its answers runs to max_new_tokens (Stage 1's,
    # Stage 2's and the baselines' val answers, and evaluate's five students on val, test and VERITE). 16 tokens
    # run the same code as 64 in a quarter of the decoding; nothing checked reads a student's answer text.
    "evaluate.max_new_tokens=16",
    # One torch thread per stage (the config pins two), as tests/test_pipeline_e2e.py: the suite runs pipelines side
    # by side on a 2-core machine, where a two-thread stage that shares its cores stalls at every op's barrier.
    "numerics.threads=1",
]
PREPARE = ("prepare@newsclippings", "prepare_test@verite")
STAGES = {  # what the second repro runs
    *(f"label@{t}" for t in TEACHERS),
    "split",
    "stage1",
    "stage2",
    "baseline@random_budget",
    "supervised@gold_only",
    "evaluate",
}
# 100 steps of 4 on the short items: 60 already teach both tiny models to write one fixed answer in the format,
# 40 leave the tiny LLaVA writing `Label: Label: "the caption fits"`; the rest is margin (a few s of CPU each).
TEACHER_TRAIN = TrainSettings(max_steps=100, batch_size=4, learning_rate=3e-3, logging_steps=25)
# The fine-tuning leaves out items with a longer caption: VERITE's cut caption (verite_fixture.LONG_CAPTION, about
# 1,700 text tokens against 60 for the others) would pad every batch it falls in to its length and take over 90 % of
# the training time. The teachers are still asked it (labelling reads every item); unseen, it may not parse.
TEACHER_TRAIN_MAX_CAPTION = 200
VERITE_CLASSES = ("miscaptioned", "out-of-context", "true")


def running(result: subprocess.CompletedProcess) -> set[str]:
    """The stages a `dvc repro` ran."""
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}


def teachers_for(repo: Path, params: dict, tiny_models: dict[str, Path]) -> None:
    """Each teacher's tiny model, fine-tuned to answer in the format with its one label (``TEACHER_LABELS``) on the
    prepared items of both datasets, in its configured folder. The demo-world ``answering_models`` do not: a tiny
    model's format does not carry over to NewsCLIPpings' or VERITE's captions.

    One fixed label each, not a label per item: 100 steps do not reliably teach a tiny model which label goes with
    which item (taught the gold labels with two train items flipped, the tiny LLaVA answered pristine on all four),
    so teachers taught to differ on a few items may agree on every train item and leave Stage 2 nothing to train
    on. Opposite fixed labels disagree on every train item, and one of the two is always right: Stage 2 has a chosen
    and a rejected answer for each."""
    data = repo / params["data"]["dir"]
    items = pl.concat([read_items(data / f"{s}.parquet") for s in ("train", "val", "test")])
    items = pl.concat([items, read_items(repo / paths.test_set_items("verite"))], how="diagonal_relaxed")
    items = items.filter(pl.col("caption").str.len_chars() <= TEACHER_TRAIN_MAX_CAPTION)
    assert len(items) == len(BASE_ITEMS) + VERITE_SUMMARY["items"] - 1, items["id"].to_list()  # less the long one
    for name, arch in TEACHERS.items():
        labels = pl.DataFrame({"id": items["id"], "gold_label": [TEACHER_LABELS[name]] * len(items)})
        trained_like(tiny_models[arch], items, labels, repo / params["teachers"][name]["model"], train=TEACHER_TRAIN)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_models) -> tuple[Path, subprocess.CompletedProcess]:
    """The temp repo after `dvc repro` of the two prepare stages, then of the rest; and the second repro's result."""
    params = compose(OVERRIDES, ROOT / "conf")
    # no commit: a run must not need one (dvclive alone stops there: "Empty git repo")
    repo = pipeline_repo(ROOT, tmp_path_factory.mktemp("verite_repo"), params)

    build_raw(repo / params["data"]["prepare"]["newsclippings"]["raw"])
    verite = build_verite(repo / params["data"]["prepare_test"]["verite"]["raw"])
    # `dvc add` would store the link's target as a file in the cache; the link's own case is tested in test_verite.
    (verite / "images/evil.jpg").unlink()
    dvc(repo, "add", "-q", "data/raw", "data/raw_verite")
    prepared = dvc(repo, "repro", *PREPARE)
    assert running(prepared) == set(PREPARE), prepared.stdout[-3000:]

    teachers_for(repo, params, tiny_models)
    shutil.copytree(tiny_models["llava"], repo / params["student"]["model"])
    dvc(repo, "add", "-q", *(params["teachers"][t]["model"] for t in TEACHERS), params["student"]["model"])
    return repo, dvc(repo, "repro")


def test_the_config_composes_the_two_datasets(repo):
    params = yaml.safe_load((repo[0] / "params.yaml").read_text())
    assert params["data"]["dir"] == "data/newsclippings" and params["data"]["test_sets"] == ["verite"]
    assert params["data"]["prepare_test"]["verite"]["kind"] == "verite"
    assert set(params["teacher_names"]) == set(TEACHERS)


def test_the_repro_runs_every_stage_on_both_datasets(repo):
    path, result = repo
    assert running(result) == STAGES, result.stdout[-3000:]
    verite = json.loads((path / "metrics/prepare_verite.json").read_text())
    assert verite["items"] == VERITE_SUMMARY["items"] and verite["classes"] == VERITE_SUMMARY["classes"]
    # the link removed before `dvc add` is now a missing image: one more than the fixture's own report
    assert verite["dropped_by_reason"]["missing_image"] == VERITE_SUMMARY["dropped_by_reason"]["missing_image"] + 1
    # the teachers' opposite labels: every train item is a conflict
    assert (
        json.loads((path / "metrics/split.json").read_text())["conflict_count"]
        == NEWS_SUMMARY["splits"]["train"]["items"]
    )
    assert json.loads((path / "dvclive/stage2/dpo/metrics.json").read_text())  # Stage 2 trained on them
    status = json.loads(dvc(path, "status", "--json").stdout)
    assert set(status) <= {f"label@{t}" for t in TEACHERS}, status  # labelling is always_changed, by design


def test_each_teacher_labels_verite_with_answers_that_parse(repo):
    path = repo[0]
    items = read_items(path / paths.test_set_items("verite"))
    assert len(items) == VERITE_SUMMARY["items"]
    for teacher in TEACHERS:
        answers = read_answers(path / paths.test_set_answers(teacher, "verite"))
        assert sorted(answers["id"]) == sorted(items["id"]), teacher
        assert (answers["status"] == "ok").any(), (teacher, answers["raw_text"].to_list())


def test_evaluate_reports_both_test_sets_in_the_same_shape_with_verite_per_class(repo):
    path = repo[0]
    metrics = json.loads((path / "metrics/evaluate.json").read_text())
    verite = metrics["test_sets"]["verite"]
    assert set(verite) == set(metrics) - {"test_sets"}
    gold = read_gold(path / paths.test_set_gold("verite"))
    assert sorted(gold["gold_class"].unique()) == list(VERITE_CLASSES)
    for teacher in TEACHERS:
        own, cross = metrics["teachers"][teacher], verite["teachers"][teacher]
        assert set(SYSTEM_KEYS) <= set(own) and set(SYSTEM_KEYS) <= set(cross)
        assert own["n"] == 2 and cross["n"] == VERITE_SUMMARY["items"]  # the fixture's test split, and VERITE
        # per class, from the files: an unparsed answer counts as wrong
        answers = read_answers(path / paths.test_set_answers(teacher, "verite")).select("id", "label")
        hits = gold.join(answers, on="id", how="left").with_columns(
            (pl.col("label") == pl.col("gold_label")).fill_null(False).alias("hit")
        )
        by_class = {c: hits.filter(pl.col("gold_class") == c)["hit"].mean() for c in VERITE_CLASSES}
        assert cross["accuracy_by_class"] == pytest.approx(by_class, abs=1e-6)
        assert cross["accuracy"] == pytest.approx(hits["hit"].mean(), abs=1e-6)
        pairs = {
            f"true_vs_{c}": hits.filter(pl.col("gold_class").is_in(["true", c]))["hit"].mean()
            for c in VERITE_CLASSES[:2]
        }
        assert cross["accuracy_by_pair"] == pytest.approx(pairs, abs=1e-6)
        assert "accuracy_by_class" not in own  # NewsCLIPpings has no finer class
    assert (path / "data/predictions/test_sets/verite").is_dir()


def test_in_the_resolved_dag_only_evaluate_reads_the_test_sets_gold(repo):
    lock = yaml.safe_load((repo[0] / "dvc.lock").read_text())["stages"]
    readers = {
        stage
        for stage, entry in lock.items()
        for dep in entry.get("deps", [])
        if Path(dep["path"]) in (paths.TEST_GOLD, paths.TEST_GOLD / "verite")
    }
    assert readers == {"evaluate"}, readers
    writers = {s for s, e in lock.items() for out in e.get("outs", []) if out["path"].startswith(str(paths.TEST_GOLD))}
    assert writers == {"prepare_test@verite"}
    labelling = {s for s in lock if s.startswith("label@")}
    assert all(str(paths.TEST_SETS) in {d["path"] for d in lock[s]["deps"]} for s in labelling)
