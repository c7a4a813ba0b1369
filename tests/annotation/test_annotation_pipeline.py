"""From a table of unlabeled posts to an evaluated student, through real DVC, with people labelling only what mmkd
asks: a temp repo composed with ``data=table bootstrap=none``, a table of 40 demo-world posts with no ``label``
column, and the demo's shipped models (pretrained/demo, copied in as a user's downloaded checkpoints) as the two
teachers and the student base, as the default config names them. Nothing is trained before the pipeline runs: the
shipped teachers write the answer format and, blind to different kinds of negative, disagree on some posts.

``dvc repro`` labels every post and stops at ``split``, before any training, naming how many items need a label
and the commands; ``mmkd annotate export`` queues the conflicts and an evaluation sample; the test labels the queue
as a person would (from the world's own gold, in a CSV) and ``mmkd annotate import`` appends it; ``dvc repro``
then re-runs ``split`` and what follows (one epoch of each training stage), and nothing upstream, with exactly
those labels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from dvc_env import describe, offline_env, pipeline_repo
from dvc_env import dvc_ok as dvc
from dvc_env import run_ok as run

from mmkd.annotation.labels import read_label_rows, resolve
from mmkd.cli import compose
from mmkd.demo.world import make_world
from mmkd.paths import answers_file
from mmkd.schema import read_answers, read_gold, read_items

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TEACHERS = ("teacher_qwen", "teacher_llava")  # conf/teachers/demo.yaml: pretrained/demo/<name>
EVAL_SAMPLE = {"val": 4, "test": 6}
OVERRIDES = [
    "data=table",
    "bootstrap=none",
    "baselines.stage2=[]",  # random_budget would ask people for as many labels again
    "baselines.supervised=[]",  # (trains like Stage 1; nothing here is about it)
    "evaluate.zero_shot=false",
    "numerics.threads=1",  # beside the other tests on 2 cores: one thread a stage (tests/conftest.py says why)
    *(f"annotation.eval_sample.{s}={n}" for s, n in EVAL_SAMPLE.items()),
    "stage1.targets=all",
    "stage1.train.epochs=1",
    "stage2.sft.epochs=1",
    "stage2.dpo.epochs=1",
]
AFTER_LABELS = {*(f"label@{t}" for t in TEACHERS), "split", "stage1", "stage2", "evaluate"}


def running(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}


def mmkd(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmkd.cli", *args], cwd=repo, capture_output=True, text=True, env=offline_env()
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict:
    params = compose(OVERRIDES, ROOT / "conf")
    repo = pipeline_repo(ROOT, tmp_path_factory.mktemp("annotation_repo"), params)
    assert tuple(params["teachers"]) == TEACHERS
    models = [params["teachers"][name]["model"] for name in TEACHERS] + [params["student"]["model"]]
    assert all(m.startswith("pretrained/demo/") for m in models), models  # the shipped ones, not a bootstrap's
    for model in models:  # as a clone has them: in the repo, git-tracked (not DVC's), read where params say
        shutil.copytree(ROOT / model, repo / model)
    world = tmp_path_factory.mktemp("posts_world")
    # Seed and sizes fix the posts, and with them what the shipped teachers answer (pinned numerics, greedy): they
    # disagree on 4 of these 24 train posts (train-000013, -14, -19 and -21; every answer parses), so the queue has
    # conflicts to label. val and test are larger than their evaluation samples (EVAL_SAMPLE), so that a sample is
    # a choice and `evaluate` scoring exactly the test sample means something.
    make_world(world, seed=7, sizes={"train": 24, "val": 8, "test": 8})
    raw = repo / params["data"]["prepare"]["posts"]["raw"]
    shutil.copytree(world / "images", raw / "images")
    rows = [
        read_items(
            world / f"{split}.parquet"
        ).select(  # read_items resolves image_path: the table names it under images/
            "id", "caption", image_path=pl.lit("images/") + pl.col("id") + ".png", split=pl.lit(split)
        )
        for split in ("train", "val", "test")
    ]
    pl.concat(rows).write_csv(raw / "posts.csv")  # no label column: nobody has labelled anything
    gold = pl.concat([read_gold(world / f"{s}.gold.parquet") for s in ("train", "val", "test")])
    dvc(repo, "add", "-q", str(raw.relative_to(repo)))
    return {"path": repo, "params": params, "gold": dict(zip(gold["id"], gold["gold_label"], strict=True))}


@pytest.fixture(scope="module")
def stopped(repo) -> subprocess.CompletedProcess:
    """The first `dvc repro`: it must fail at split."""
    return subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=repo["path"], capture_output=True, text=True, env=offline_env()
    )


def test_the_dag_stops_before_training_naming_the_count_and_the_commands(repo, stopped):
    assert stopped.returncode != 0, describe(stopped)
    output = stopped.stdout + stopped.stderr
    assert (repo["path"] / "metrics/teachers/teacher_qwen.json").exists(), describe(stopped)  # labelled first
    assert "split: " in output and "selected item(s) have no gold label" in output, describe(stopped)
    assert "`mmkd annotate export`" in output and "`mmkd annotate import <file>`" in output
    assert not (repo["path"] / "models/stage1").exists()
    assert running(stopped) >= {"prepare@posts", *(f"label@{t}" for t in TEACHERS), "split"}


@pytest.fixture(scope="module")
def labelled(repo, stopped) -> dict:
    """Export the queue, label it as a person would (the world's gold), import, and `dvc repro` again."""
    path = repo["path"]
    exported = mmkd(path, "annotate", "export")
    assert exported.returncode == 0, describe(exported)
    queue = pl.read_csv(path / "annotation/queue/queue.csv")
    labels = queue.select("id").with_columns(label=pl.col("id").replace_strict(repo["gold"]))
    labels.write_csv(path / "answers.csv")
    imported = mmkd(path, "annotate", "import", "answers.csv", "--annotator", "desk-1")
    assert imported.returncode == 0, describe(imported)
    again = dvc(path, "repro")
    return {"queue": queue, "export": exported, "import": imported, "repro": again}


def test_the_queue_holds_the_conflicts_then_the_evaluation_sample(repo, labelled):
    queue = labelled["queue"]
    split = json.loads((repo["path"] / "metrics/split.json").read_text())
    selection = queue.filter(pl.col("purpose") == "selection")
    assert len(selection) == split["gold_labels_read"] > 0
    train = [read_answers(repo["path"] / answers_file(t, "train")).select("id", "status", "label") for t in TEACHERS]
    pairs = train[0].join(train[1], on="id", suffix="_other")
    conflicts = pairs.filter(
        (pl.col("status") != "ok") | (pl.col("status_other") != "ok") | (pl.col("label") != pl.col("label_other"))
    )
    assert sorted(selection["id"]) == sorted(conflicts["id"])  # the conflict rule, no budget: all of them, only them
    assert set(selection["split"]) == {"train"}
    evaluation = queue.filter(pl.col("purpose") == "evaluation")
    assert evaluation.group_by("split").len().sort("split").rows() == [("test", 6), ("val", 4)]
    assert queue["purpose"].to_list() == sorted(queue["purpose"], key=["selection", "evaluation"].index)


def test_after_the_import_repro_resumes_from_split_with_exactly_those_labels(repo, labelled):
    path = repo["path"]
    assert running(labelled["repro"]) == AFTER_LABELS, labelled["repro"].stdout[-3000:]  # prepare is not re-run
    split = json.loads((path / "metrics/split.json").read_text())
    assert split["human_labels_read"] == split["gold_labels_read"] == split["gold_labels_read_with_baselines"]
    assert split["baselines"] == {}  # neither baseline asked people for labels
    evaluate = json.loads((path / "metrics/evaluate.json").read_text())
    assert evaluate["stage2"]["n"] == EVAL_SAMPLE["test"]  # scored on the people's test sample only
    people = resolve(read_label_rows(path / "annotation/labels/train.jsonl")).gold
    assert dict(zip(people["id"], people["gold_label"], strict=True)) == {
        i: repo["gold"][i] for i in labelled["queue"].filter(pl.col("split") == "train")["id"]
    }
    status = json.loads(dvc(path, "status", "--json").stdout)
    assert set(status) <= {f"label@{t}" for t in TEACHERS}, status


def test_a_second_export_queues_nothing_and_a_bad_import_changes_nothing(repo, labelled):
    path = repo["path"]
    again = mmkd(path, "annotate", "export")
    assert again.returncode == 0 and "0 item(s) to label" in again.stdout, describe(again)
    before = (path / "annotation/labels/train.jsonl").read_bytes()
    (path / "bad.csv").write_text("id,label\nnot-an-item,pristine\n")
    refused = mmkd(path, "annotate", "import", "bad.csv", "--annotator", "desk-1")
    assert refused.returncode == 2 and "not-an-item" in refused.stdout and "nothing was imported" in refused.stdout
    assert (path / "annotation/labels/train.jsonl").read_bytes() == before
    run(path, "git", "status", "--porcelain")  # the repo is still a working git repo
