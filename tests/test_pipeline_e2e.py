"""End-to-end runs of the DVC pipeline at CI size in a temporary git copy of this repo.

``start_pipeline`` copies the tree (tracked plus untracked, non-ignored files), makes `data=demo_ci bootstrap=demo_ci`
the defaults in the copy's conf/config.yaml (so `dvc exp run` composes the CI size too) and commits; then it starts
two cold `dvc repro` side by side: one in that repo, one in a fresh clone of the commit (a teammate's cold run, to
compare byte for byte). tests/conftest.py calls it as the session starts, when a test of this module is selected,
so both runs overlap the other tests. The tests then check what the first run wrote, that the cold clone wrote the
same bytes, that DVC skips what did not change, that one teacher's setting invalidates only that teacher and what is
downstream of it, a push/pull round trip and a teammate's pull from that remote, and two experiments.
The tests share that one repo and run in file order: the experiments come last because they change the workspace.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dvc_env import Background, describe, offline_env
from expected_files import ADAPTER_FILES, DEMO_MODEL_FILES

from mmkd.cli import compose
from mmkd.evaluation.metrics import RANKING_KEYS, SYSTEM_KEYS, THRESHOLD_KEYS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CI_DEFAULTS = {"data": "demo_ci", "bootstrap": "demo_ci", "teachers": "demo_three"}  # three: more to check
# Stage 1's recipe (stage1, supervised@gold_only) for 4 epochs of the CI world's 2 batches, not the demo's 32, with
# a loss logged every 2 steps: the tests check that every stage runs and what it writes, not how well the student
# learns. Set in the copy's conf/config.yaml, so `dvc exp run` composes it too.
# One torch thread per stage (the demo pins two): the two cold runs go side by side beside the other tests on a 2-core
# machine, and a two-thread run that shares its cores stalls at every op's barrier (tiny ops: many barriers).
FEWER_STEPS = {"stage1": {"train": {"epochs": 4, "logging_steps": 2}}, "numerics": {"threads": 1}}
TEACHERS = ("teacher_qwen", "teacher_llava", "teacher_third")
STAGES = (
    "world@demo",
    "bootstrap@demo",
    *(f"label@{t}" for t in TEACHERS),
    "split",
    "stage1",
    "stage2",
    "baseline@random_budget",
    "supervised@gold_only",
    "evaluate",
)
# Everything DVC caches, so pushes and pulls: these outputs, and every folder in OUT_PARENTS (one per teacher/model).
CACHED_OUTS = (
    "data/world",
    "data/test_sets/ood",
    "data/test_gold/ood",
    "data/split",
    "data/predictions",
    "dvclive/bootstrap/demo",
    "dvclive/stage1",
    "dvclive/stage2",
    "data/baselines",
    "dvclive/baselines/random_budget",
    "dvclive/baselines/gold_only",
)
OUT_PARENTS = ("data/answers", "models", "models/baselines")  # each folder in them is an output, or a parent
RUNNING = re.compile(r"Running stage '([^']+)'")
DEMO_MODELS = (*TEACHERS, "student_base")
LIVE_TOP = {"metrics.json", "params.yaml", "plots"}  # a dvclive folder: summary, params, one TSV per logged value


def files_in(folder: Path) -> set[str]:
    """Every file under ``folder``, relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@dataclass
class Pipeline:
    """The temp repo, the environment to run commands in, and the result of the first `dvc repro`."""

    repo: Path
    env: dict[str, str]
    first_repro: subprocess.CompletedProcess | None
    cold: Background | None = None  # the cold `dvc repro` in a fresh clone (``cold.cwd``), started beside the first


def run(repo: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the temp repo; on failure, fail with its output (the tail: training logs are long)."""
    result = subprocess.run(list(args), cwd=repo, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, describe(result)
    return result


def git(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess:
    return run(pipeline.repo, pipeline.env, "git", *args)


def dvc(pipeline: Pipeline, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``dvc <args>`` through this interpreter (stage cmds find the same venv's python first on PATH)."""
    return run(pipeline.repo, pipeline.env, sys.executable, "-m", "dvc", *args, check=check)


def copy_tree(dest: Path) -> None:
    """Copy the files git would see (tracked and untracked, not ignored): recent work may not be committed yet."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.skip(f"e2e tests copy the repo with git, which failed here: {listed.stderr.strip()}")
    for name in filter(None, listed.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def make_ci_default(config: Path) -> None:
    """Point the defaults list of conf/config.yaml at the CI-size groups (a line edit keeps the comments), and add
    FEWER_STEPS as the config's own values, which come after the groups' (`_self_` is last)."""
    text = config.read_text()
    for group, option in CI_DEFAULTS.items():
        text, n = re.subn(rf"^(\s*-\s*{group}\s*:\s*)\S+", rf"\g<1>{option}", text, flags=re.MULTILINE)
        assert n == 1, f"{config}: expected one `- {group}: ...` line in the defaults list, found {n}"
    for key in FEWER_STEPS:
        assert not re.search(rf"^{key}:", text, flags=re.MULTILINE), f"{config} sets {key} itself: merge FEWER_STEPS"
    config.write_text(text + "\n" + yaml.safe_dump(FEWER_STEPS))


@dataclass
class Started:
    """A committed CI-size copy of the repo, and the two cold repros running: ``first`` in ``repo``, ``cold`` in a
    fresh clone of the same commit."""

    repo: Path
    env: dict[str, str]
    first: Background
    cold: Background

    def stop(self) -> None:
        """End both runs if they still run (the session ended before the tests waited for them)."""
        self.first.stop()
        self.cold.stop()


def start_pipeline(root: Path) -> Started:
    """Make the CI-size repo in ``root``/repo, commit, clone it to ``root``/teammate_cold, and start a cold `dvc repro`
    in each (logs beside them). Starting is quick; ``Background.result`` waits."""
    repo, clone = root / "repo", root / "teammate_cold"
    repo.mkdir()
    env = offline_env()
    copy_tree(repo)
    make_ci_default(repo / "conf" / "config.yaml")
    run(repo, env, sys.executable, "-m", "mmkd.cli", "compose")
    identity = (("config", "user.name", env["GIT_AUTHOR_NAME"]), ("config", "user.email", env["GIT_AUTHOR_EMAIL"]))
    for args in (("init", "-q"), *identity, ("add", "-A"), ("commit", "-q", "-m", "CI-size copy")):
        run(repo, env, "git", *args)
    run(root, env, "git", "clone", "-q", str(repo), str(clone))
    dvc_repro = (sys.executable, "-m", "dvc", "repro")
    first = Background(repo, env, *dvc_repro, log=root / "first_repro.log")
    # a fresh clone has no outputs and no cache; --no-run-cache says so, in case DVC ever shares one
    cold = Background(clone, env, *dvc_repro, "--no-run-cache", log=root / "cold_repro.log")
    return Started(repo, env, first, cold)


@pytest.fixture(scope="module")
def pipeline(e2e_pipeline_started, tmp_path_factory) -> Iterator[Pipeline]:
    """The committed CI-size repo once its first `dvc repro` has ended (its result is in first_repro), the results
    committed as a user would: the experiments' baseline.

    The two runs started with the session (tests/conftest.py), or, under pytest-xdist (``-n 2``), here: this module
    is the first its worker runs (tests/scheduling.py's ``run_order``), so they start as the session does there
    too, and the other worker runs the rest of the suite beside them."""
    started, own = e2e_pipeline_started, e2e_pipeline_started is None
    if own:
        started = start_pipeline(tmp_path_factory.mktemp("pipeline"))
    if isinstance(started, BaseException):  # raised as the session started: fail (or skip) these tests with it
        raise started
    try:
        pipeline = Pipeline(started.repo, started.env, first_repro=started.first.result(), cold=started.cold)
        if pipeline.first_repro.returncode == 0:
            git(pipeline, "add", "-A")
            git(pipeline, "commit", "-q", "-m", "dvc repro")
        yield pipeline
    finally:
        if own:
            started.stop()


@pytest.fixture
def reproduced(pipeline: Pipeline) -> Pipeline:
    """The pipeline, once the first repro is known to have worked (its own test reports why not)."""
    if pipeline.first_repro.returncode != 0:
        pytest.skip("the first `dvc repro` failed: see test_first_repro_writes_metrics_and_outputs")
    return pipeline


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def running_stages(result: subprocess.CompletedProcess) -> set[str]:
    """The stages a `dvc repro` (or `exp run`, or `repro --dry`) ran or would run."""
    return set(RUNNING.findall(result.stdout + result.stderr))


def test_first_repro_writes_metrics_and_outputs(pipeline: Pipeline):
    assert pipeline.first_repro.returncode == 0, describe(pipeline.first_repro)
    repo = pipeline.repo
    assert running_stages(pipeline.first_repro) == set(STAGES)

    evaluation = read_json(repo / "metrics/evaluate.json")
    systems = {"zero_shot", "stage1", "stage2", "teachers", "baselines", "significance"}
    assert set(evaluation) == systems | {"test_sets"}
    # the out-of-distribution test set: every system, the same keys as on the test split
    ood = evaluation["test_sets"]["ood"]
    assert set(evaluation["test_sets"]) == {"ood"} and set(ood) == systems
    for group in ("teachers", "baselines"):
        assert {k: set(v) for k, v in ood[group].items()} == {k: set(v) for k, v in evaluation[group].items()}
    assert {k: set(ood[k]) for k in ("zero_shot", "stage1", "stage2")} == {
        k: set(evaluation[k]) for k in ("zero_shot", "stage1", "stage2")
    }
    assert ood["stage2"]["n"] == read_json(repo / "metrics/world.json")["ood"]["n"]
    assert ood["stage2"]["threshold"] == evaluation["stage2"]["threshold"]  # one val threshold for every set
    assert set(evaluation["teachers"]) == set(TEACHERS)
    assert set(evaluation["baselines"]) == {"majority_vote", "random_budget", "gold_only"}
    entries = {name: evaluation[name] for name in ("zero_shot", "stage1", "stage2")}
    entries |= {f"teachers.{t}": m for t, m in evaluation["teachers"].items()}
    entries |= {f"baselines.{b}": m for b, m in evaluation["baselines"].items()}
    keys = {*SYSTEM_KEYS, *RANKING_KEYS, *THRESHOLD_KEYS}
    for name, metrics in entries.items():
        assert set(metrics) == keys, f"metrics/evaluate.json: {name} has keys {sorted(metrics)}"
        assert metrics["n"] > 0, f"metrics/evaluate.json: {name} scored no items"
        low, high = metrics["accuracy_ci95"]
        assert low <= metrics["accuracy"] <= high, (name, metrics)
        # every model's parsed answer has a score (the local backend reads it at the label slot); a vote has none
        scored = 0 if name == "baselines.majority_vote" else round(metrics["coverage"] * metrics["n"])
        assert metrics["n_scored"] == scored, (name, metrics)
        if scored == 0:  # e.g. the zero-shot base, whose answers do not parse: null, never a made-up number
            assert metrics["auroc"] is None and metrics["accuracy_at_half"] is None, (name, metrics)
            continue
        assert 0.0 <= metrics["ece"] <= 1.0 and 0.0 <= metrics["brier"] <= 1.0, (name, metrics)
        assert metrics["threshold"] is not None and metrics["accuracy_at_threshold"] is not None, (name, metrics)
        curve = "/".join(name.split(".")) + ".csv"
        assert (repo / "metrics/roc" / curve).is_file() and (repo / "metrics/reliability" / curve).is_file(), curve
    for stage in ("stage1", "stage2", "baselines/random_budget", "baselines/gold_only"):
        recorded = read_json(repo / "models" / stage / "mmkd_adapter.json")["threshold"]
        assert recorded["val_n"] > 0 and recorded["rule"] == "max_accuracy", recorded
        assert recorded["value"] == entries[stage.replace("/", ".")]["threshold"], stage
    compared = {name.split(" ")[0] for name in evaluation["significance"]}
    others = ("best_teacher", "stage1", "majority_vote", "random_budget", "gold_only")
    assert compared == {f"stage2_vs_{other}" for other in others}

    split = read_json(repo / "metrics/split.json")
    for key in ("n_items", "conflict_count", "conflict_rate", "labelled_fraction", "unparsed_rate", "agreement"):
        assert key in split, f"metrics/split.json has no {key!r}: {sorted(split)}"
    assert set(split["unparsed_rate"]) == set(TEACHERS)
    assert set(split["agreement"]) == {f"{a}|{b}" for a, b in itertools.combinations(sorted(TEACHERS), 2)}

    # The CI teachers are built to conflict (see conf/bootstrap/demo_ci.yaml), so Stage 2 really trains.
    assert split["conflict_count"] > 0 and split["stage2_dpo_pairs"] > 0, split
    for phase in ("sft", "dpo"):
        assert (repo / "dvclive/stage2" / phase / "metrics.json").is_file(), f"Stage 2 {phase} did not run"

    predictions = {
        str(p.relative_to(repo / "data/predictions")) for p in (repo / "data/predictions").rglob("*.parquet")
    }
    per_set = {"zero_shot.parquet", "stage1.parquet", "stage2.parquet"} | {f"teachers/{t}.parquet" for t in TEACHERS}
    per_set |= {f"baselines/{b}.parquet" for b in ("majority_vote", "random_budget", "gold_only")}
    assert predictions == per_set | {f"test_sets/ood/{p}" for p in per_set}, predictions
    for teacher in TEACHERS:  # each teacher labelled the extra test set too
        assert (repo / "data/answers" / teacher / "test_sets/ood.parquet").is_file(), teacher
    for stage in ("stage1", "stage2", "baselines/random_budget", "baselines/gold_only"):
        assert files_in(repo / "models" / stage) == ADAPTER_FILES, stage
    # random_budget reads exactly as many gold labels as the method, on other items
    assert split["baselines"]["random_budget"]["gold_labels_read"] == split["gold_labels_read"], split
    assert split["baselines"]["gold_only"]["gold_labels_read"] == split["gold_labels_read"], split
    assert {p.name for p in (repo / "models/demo").iterdir()} == set(DEMO_MODELS)
    for model in DEMO_MODELS:
        assert files_in(repo / "models/demo" / model) == DEMO_MODEL_FILES, model
    for live in ["stage1", "stage2/sft", "stage2/dpo", *(f"bootstrap/demo/{m}" for m in DEMO_MODELS)]:
        folder = repo / "dvclive" / live
        assert {p.name for p in folder.iterdir()} == LIVE_TOP, live
        assert {"loss.tsv", "learning_rate.tsv"} <= {p.name for p in (folder / "plots/metrics").iterdir()}, live


def test_a_cold_run_in_a_teammates_fresh_clone_is_byte_identical(reproduced: Pipeline):
    """A fresh clone of the same commit (no outputs, no cache) ran `dvc repro --no-run-cache` beside the first repro:
    every stage ran and wrote the same bytes (dvc.lock, the metrics, every cached output), so with the first run's
    commit checked out over its work tree, git sees no change."""
    cold = reproduced.cold.result()
    assert cold.returncode == 0, describe(cold)
    assert running_stages(cold) == set(STAGES), describe(cold)
    clone = Pipeline(reproduced.cold.cwd, reproduced.env, first_repro=None)
    mine, theirs = tracked_and_output_files(reproduced.repo), tracked_and_output_files(clone.repo)
    assert sorted(mine) == sorted(theirs)
    assert [name for name in mine if mine[name] != theirs[name]] == []
    git(clone, "fetch", "-q", str(reproduced.repo), "HEAD")
    git(clone, "reset", "-q", "FETCH_HEAD")  # the index and HEAD move to the first run's commit; files stay
    assert git(clone, "status", "--porcelain").stdout == ""


LABEL_STAGES = {f"label@{t}" for t in TEACHERS}


def changed_stages(pipeline: Pipeline) -> dict[str, list]:
    """`dvc status --json` without the label stages' permanent "always changed" (they re-run on every repro)."""
    status = dvc(pipeline, "status", "--json")
    return {name: why for name, why in json.loads(status.stdout).items() if why != ["always changed"]}


def test_second_repro_labels_from_what_it_has_and_runs_nothing_else(reproduced: Pipeline):
    """Labelling re-runs on every repro (so earlier failures are retried) and asks nothing when every item has an
    answer; its answers are the same bytes, so no later stage runs and git stays clean."""
    before = tracked_and_output_files(reproduced.repo)
    again = dvc(reproduced, "repro")
    output = again.stdout + again.stderr
    assert running_stages(again) == LABEL_STAGES, describe(again)
    for stage in set(STAGES) - LABEL_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in output, describe(again)
    for teacher in TEACHERS:
        run_log = read_json(reproduced.repo / f"logs/label/{teacher}.json")
        assert (run_log["sent"], run_log["reused"]) == (0, run_log["items"]), run_log  # nothing generated
    assert tracked_and_output_files(reproduced.repo) == before
    assert changed_stages(reproduced) == {}
    assert git(reproduced, "status", "--porcelain").stdout == ""


def test_thresholds_are_chosen_without_the_test_labels(reproduced: Pipeline):
    """Flip every test label and evaluate again: every system's accuracy changes, no threshold does (they come
    from val). Then DVC and git restore the real labels and outputs."""
    import polars as pl

    repo = reproduced.repo
    gold_file = repo / "data/world/test.gold.parquet"
    before = read_json(repo / "metrics/evaluate.json")
    gold = pl.read_parquet(gold_file)
    flipped = pl.when(pl.col("gold_label") == "falsified").then(pl.lit("pristine")).otherwise(pl.lit("falsified"))
    gold_file.unlink()  # a DVC output is a link into the cache: replace the file, never write through it
    gold.with_columns(flipped.alias("gold_label")).write_parquet(gold_file)
    try:
        run(repo, reproduced.env, sys.executable, "stages/eval.py")
        after = read_json(repo / "metrics/evaluate.json")
    finally:
        dvc(reproduced, "checkout", "--force")  # the cached outputs: test gold, predictions
        git(reproduced, "checkout", "--", "metrics")  # the metrics and plot data (in git, not in the cache)
    systems = ["zero_shot", "stage1", "stage2", *(f"teachers.{t}" for t in TEACHERS)]
    systems += [f"baselines.{b}" for b in ("random_budget", "gold_only")]
    for name in systems:
        first, second = (read_path(m, name) for m in (before, after))
        assert second["threshold"] == first["threshold"], name
        assert second["accuracy"] == pytest.approx(first["coverage"] - first["accuracy"], abs=1e-6), name
    assert changed_stages(reproduced) == {}


def read_path(metrics: dict, name: str) -> dict:
    for part in name.split("."):
        metrics = metrics[part]
    return metrics


def test_one_teacher_setting_invalidates_that_teacher_only(reproduced: Pipeline):
    params_file = reproduced.repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["teachers"]["teacher_llava"]["max_new_tokens"] += 16
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        # Only that teacher's labelling reads the setting; split, stage1, stage2 and evaluate depend on it through
        # its answers, so `status` leaves them out and --force-downstream puts them in.
        assert set(changed_stages(reproduced)) == {"label@teacher_llava"}
        dry = dvc(reproduced, "repro", "--dry")
        assert running_stages(dry) == LABEL_STAGES, describe(dry)
        downstream = dvc(reproduced, "repro", "--dry", "--force-downstream")
        later = {"split", "stage1", "stage2", "baseline@random_budget", "supervised@gold_only", "evaluate"}
        assert running_stages(downstream) == LABEL_STAGES | later, describe(downstream)
    finally:
        git(reproduced, "checkout", "--", "params.yaml")
    assert changed_stages(reproduced) == {}


def cached_outputs(repo: Path) -> list[Path]:
    """The output folders DVC caches (pushes, pulls)."""
    parents = {repo / p for p in OUT_PARENTS}
    found = [d for p in OUT_PARENTS for d in (repo / p).glob("*/") if d.is_dir() and d not in parents]
    return [repo / out for out in CACHED_OUTS] + found


def cached_files(repo: Path) -> dict[str, str]:
    """sha256 of every file under the DVC-cached outputs."""
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for out in cached_outputs(repo)
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def remote(pipeline: Pipeline, tmp_path_factory) -> Path:
    """A local DVC remote, committed as the default, holding the first run as its author pushes it (`mmkd push`:
    DVC's push with the run cache, plus the metric files it leaves out). The round trip and the teammate share it."""
    if pipeline.first_repro.returncode != 0:
        pytest.skip("the first `dvc repro` failed: see test_first_repro_writes_metrics_and_outputs")
    path = tmp_path_factory.mktemp("remote")
    dvc(pipeline, "remote", "add", "-d", "local", str(path))
    git(pipeline, "commit", "-q", "-am", "a remote")
    run(pipeline.repo, pipeline.env, sys.executable, "-m", "mmkd.cli", "push")
    return path


def test_push_then_pull_restores_every_file(reproduced: Pipeline, remote: Path):
    repo = reproduced.repo
    before = cached_files(repo)
    assert any(name.startswith("models/stage2/") for name in before), sorted(before)
    assert {f"models/demo/{m}/model.safetensors" for m in (*TEACHERS, "student_base")} <= set(before)
    models = ("demo", "stage1", "stage2", "baselines/random_budget", "baselines/gold_only")  # demo: teachers, base
    expected = {*CACHED_OUTS, *(f"data/answers/{t}" for t in TEACHERS), *(f"models/{m}" for m in models)}
    assert {str(out.relative_to(repo)) for out in cached_outputs(repo)} == expected
    for path in [repo / ".dvc/cache", *cached_outputs(repo)]:
        shutil.rmtree(path)
    assert cached_files(repo) == {}
    dvc(reproduced, "pull")
    after = cached_files(repo)
    assert sorted(after) == sorted(before)
    assert [name for name in before if after[name] != before[name]] == []
    assert changed_stages(reproduced) == {}


TRAINING_STAGES = {"bootstrap@demo", "stage1", "stage2", "baseline@random_budget", "supervised@gold_only"}


def tracked_and_output_files(repo: Path) -> dict[str, bytes]:
    """dvc.lock, every metric file in git and every file of the cached outputs, by path."""
    files = {"dvc.lock": (repo / "dvc.lock").read_bytes()}
    for folder in ("metrics", *CACHED_OUTS, *OUT_PARENTS):
        files |= {str(p.relative_to(repo)): p.read_bytes() for p in (repo / folder).rglob("*") if p.is_file()}
    return files


def test_a_teammate_gets_the_pushed_run_without_training(reproduced: Pipeline, remote: Path, tmp_path):
    """A teammate's fresh clone with no outputs gets the pushed run from the run cache (`dvc repro --pull`) without
    training: the same bytes, and git stays clean. (A teammate's cold run is the byte-identity test above.)"""
    repo = reproduced.repo
    clone = tmp_path / "teammate"
    run(tmp_path, reproduced.env, "git", "clone", "-q", str(repo), str(clone))
    teammate = Pipeline(clone, reproduced.env, first_repro=None)
    assert not (clone / "models/stage2").exists() and not (clone / ".dvc/cache").exists()

    restored = dvc(teammate, "repro", "--pull")
    ran = running_stages(restored)
    # labelling always runs and is never restored from the run cache (its state is outside DVC): the local
    # demo teachers label again, give the same answers, and every stage after them comes from the run cache
    assert not ran & TRAINING_STAGES, describe(restored)
    assert ran <= {f"label@{t}" for t in TEACHERS}, describe(restored)
    assert tracked_and_output_files(clone) == tracked_and_output_files(repo)
    assert git(teammate, "status", "--porcelain").stdout == ""


def shown_experiments(pipeline: Pipeline) -> dict[str, dict]:
    """Experiment name -> its params.yaml, from `dvc exp show --json`."""
    show = dvc(pipeline, "exp", "show", "--json")
    found = {}
    for baseline in json.loads(show.stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]["params"]["params.yaml"]["data"]
    return found


def test_exp_run_with_a_param_override_reruns_only_the_stage_that_reads_it(reproduced: Pipeline):
    """`dvc exp run -S` composes from the copy's conf/ (so at CI size) with the override on top; only `evaluate`
    reads evaluate.zero_shot, so only it runs, besides labelling (which runs on every repro)."""
    ci_size = compose([f"{group}={option}" for group, option in CI_DEFAULTS.items()], ROOT / "conf")["data"]
    result = dvc(reproduced, "exp", "run", "-n", "no-zero-shot", "-S", "evaluate.zero_shot=false")
    assert running_stages(result) == LABEL_STAGES | {"evaluate"}, describe(result)
    experiments = shown_experiments(reproduced)
    assert "no-zero-shot" in experiments, sorted(experiments)
    params = experiments["no-zero-shot"]
    assert params["evaluate"]["zero_shot"] is False
    assert params["data"] == ci_size
    assert "zero_shot" not in read_json(reproduced.repo / "metrics/evaluate.json")


def test_exp_run_with_one_teacher(reproduced: Pipeline):
    result = dvc(reproduced, "exp", "run", "-n", "qwen-only", "-S", "teachers=demo_qwen_only")
    ran = running_stages(result)
    assert {"split", "stage1", "evaluate"} <= ran, describe(result)
    assert not ran & {"world@demo", *(s for s in STAGES if s.startswith("bootstrap@"))}, ran
    assert read_json(reproduced.repo / "logs/label/teacher_qwen.json")["sent"] == 0  # its answers are reused
    experiments = shown_experiments(reproduced)
    assert "qwen-only" in experiments, sorted(experiments)
    assert list(experiments["qwen-only"]["teachers"]) == ["teacher_qwen"]

    repo = reproduced.repo
    assert list(read_json(repo / "metrics/evaluate.json")["teachers"]) == ["teacher_qwen"]
    split = read_json(repo / "metrics/split.json")
    assert split["agreement"] == {} and split["stage2_sft_rows"] == 0 and split["stage2_dpo_pairs"] == 0, split
    # one teacher never disagrees with another, so Stage 2 has nothing to learn and passes Stage 1 through
    adapter = "adapter_model.safetensors"
    assert (repo / "models/stage2" / adapter).read_bytes() == (repo / "models/stage1" / adapter).read_bytes()


def test_summarize_and_label_curve_read_the_real_experiments(reproduced: Pipeline):
    """`mmkd summarize` and `mmkd label-curve` on what `dvc exp show --json` really returns for the runs above."""
    cli = (sys.executable, "-m", "mmkd.cli")
    table = run(reproduced.repo, reproduced.env, *cli, "summarize", "no-zero-shot", "qwen-only").stdout
    assert "| stage2 |" in table and "| baselines/random_budget |" in table and " | 2 |" in table, table
    curve = run(reproduced.repo, reproduced.env, *cli, "label-curve", "--svg", "curve.svg", "--csv", "curve.csv")
    assert json.loads(curve.stdout)["points"] >= 1, curve.stdout
    assert (reproduced.repo / "curve.svg").read_text().startswith("<svg")
