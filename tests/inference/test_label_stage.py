"""`label@<teacher>` for a server teacher, run by DVC in a temporary repo against the fault-injecting fake server
(``tests/fault_server.py``, no model): a run with a failed item fails and says how many, a re-run asks only
that item, a third run asks nothing; shards on two "machines" (two caches) merge so that the DVC run sends no
request; and the dummy API key appears in no file and no output."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
import yaml
from dvc_env import offline_env
from fault_server import FaultInjectingChatServer

from mmkd.demo.world import make_world
from mmkd.inference.answer_cache import AnswerCache
from mmkd.schema import read_answers

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "MMKD_TEST_LABEL_KEY"
SPLITS = {"train": 6, "val": 2, "test": 4}


@pytest.fixture
def server():
    with FaultInjectingChatServer() as s:
        yield s


@pytest.fixture
def repo(tmp_path, server) -> Path:
    """A DVC repo with this project's dvc.yaml, stages and sources, a small world whose captions name their item,
    and one server teacher `srv` whose answer cache lives outside the repo."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "stages", repo / "stages", ignore=ignore)
    shutil.copytree(ROOT / "src", repo / "src", ignore=ignore)
    world = repo / "data" / "world"
    make_world(world, seed=0, sizes=SPLITS)
    for split in SPLITS:  # captions that name the item, so the server's log says which item was asked
        items = pl.read_parquet(world / f"{split}.parquet")
        items.with_columns(pl.format("{} [{}]", "caption", "id").alias("caption")).write_parquet(
            world / f"{split}.parquet"
        )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["dir"] = "data/world"
    params["data"]["test_sets"] = []  # no extra test set: data/test_sets holds only its README, as in git
    (repo / "data/test_sets").mkdir(parents=True)
    (repo / "data/test_sets/README.md").write_text("extra test sets\n")
    params["teachers"] = {
        "srv": {
            "backend": "openai",
            "model": "fake",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "weights": "src/mmkd/labelling/openai_compat.py",
            "cache_dir": str(tmp_path / "cache"),
            "prompt_version": "v1",
            "max_concurrency": 2,
            "timeout": 2,
            "max_retries": 1,
            "price_per_million_prompt_tokens": 2.0,
            "price_per_million_completion_tokens": 6.0,
        }
    }
    params["teacher_names"] = ["srv"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    return repo


def run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=offline_env() | (env or {}),  # stage cmds run `python`: the venv comes first on PATH
        timeout=120,
    )


def item_ids(repo: Path) -> list[str]:
    return [i for split in SPLITS for i in pl.read_parquet(repo / f"data/world/{split}.parquet")["id"]]


def asked(server: FaultInjectingChatServer, since: int = 0) -> list[str]:
    """Item ids of the requests the server saw (from the captions), from request number ``since`` on."""
    return [p.split("[")[-1].split("]")[0] for p in server.prompts()[since:]]


def answers(repo: Path) -> pl.DataFrame:
    return pl.concat([read_answers(repo / f"data/answers/srv/{split}.parquet") for split in SPLITS])


def test_failed_items_fail_the_stage_and_a_rerun_asks_only_them(repo, server, tmp_path):
    key = f"sk-dummy-{uuid.uuid4().hex}"
    env = {KEY_ENV: key}
    ids = item_ids(repo)
    bad = ids[2]
    server.set_faults({f"[{bad}]": ["500"] * 10})

    first = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert first.returncode != 0
    assert f"1 of {len(ids)} items failed ({bad}; status 'error'" in first.stderr  # names the item
    assert "first error: teacher 'srv'" in first.stderr and "injected internal error" in first.stderr
    got = answers(repo)
    assert got.filter(pl.col("status") == "error")["id"].to_list() == [bad]
    assert (got.filter(pl.col("id") != bad)["status"] == "ok").all()
    run_log = json.loads((repo / "logs/label/srv.json").read_text())  # this run's accounting (untracked)
    assert run_log["errors"] == 1 and run_log["sent"] == len(ids) and run_log["cache_hits"] == 0
    assert run_log["requests"] == len(ids) + 1 and run_log["retries"] == 1  # max_retries: 1
    assert run_log["cost"] == pytest.approx((run_log["prompt_tokens"] * 2 + run_log["completion_tokens"] * 6) / 1e6)
    assert json.loads((repo / "metrics/teachers/srv.json").read_text())["errors"] == 1
    assert sorted(asked(server)) == sorted(ids + [bad])

    server.set_faults({})  # the server recovers
    n = len(server.prompts())
    second = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert second.returncode == 0, second.stderr
    assert asked(server, n) == [bad]  # only the failed item is asked again
    assert (answers(repo)["status"] == "ok").all()
    run_log = json.loads((repo / "logs/label/srv.json").read_text())
    assert (run_log["sent"], run_log["cache_hits"], run_log["errors"]) == (1, len(ids) - 1, 0)
    metrics = json.loads((repo / "metrics/teachers/srv.json").read_text())
    assert metrics["answers_prompt_tokens"] > run_log["prompt_tokens"] > 0  # cached answers' tokens are kept
    assert metrics["answers_cost"] == pytest.approx(
        (metrics["answers_prompt_tokens"] * 2 + metrics["answers_completion_tokens"] * 6) / 1e6
    )

    n = len(server.prompts())
    third = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert third.returncode == 0, third.stderr
    assert third.returncode == 0 and len(server.prompts()) == n  # every item has its answer: nothing is asked
    assert all(r.authorization == f"Bearer {key}" for r in server.requests)

    # The key is in no file of the repo (dvc.lock, params, outputs, metrics, DVC's cache) nor of the answer cache,
    # and in no output of the runs.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    assert (repo / "dvc.lock").is_file()
    for proc in (first, second, third):
        assert key not in proc.stdout + proc.stderr


def test_shards_on_two_machines_merge_and_the_full_run_sends_nothing(repo, server, tmp_path):
    env = {KEY_ENV: "sk-dummy"}
    machine = {m: {**env, "MMKD_ANSWER_CACHE": str(tmp_path / m)} for m in ("a", "b", "main")}
    asked_by = {}
    for index, m in enumerate(("a", "b")):
        n = len(server.prompts())
        done = run(repo, "stages/label.py", "srv", "--shard", f"{index}/2", env=machine[m])
        assert done.returncode == 0, done.stderr
        asked_by[m] = asked(server, n)
    assert asked_by["a"] and asked_by["b"]
    assert sorted(asked_by["a"] + asked_by["b"]) == sorted(item_ids(repo))  # each item asked once, by one shard

    merged = run(
        repo, "stages/label.py", "srv", "--merge", str(tmp_path / "a/srv.sqlite"), str(tmp_path / "b/srv.sqlite"),
        env=machine["main"],
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    n = len(server.prompts())
    final = run(repo, "stages/label.py", "srv", env=machine["main"])  # what `dvc repro label@srv` runs
    assert final.returncode == 0, final.stderr
    assert len(server.prompts()) == n  # every answer came from the merged cache
    assert (answers(repo)["status"] == "ok").all() and answers(repo)["id"].to_list() == item_ids(repo)
    run_log = json.loads((repo / "logs/label/srv.json").read_text())
    assert (run_log["sent"], run_log["requests"], run_log["cache_hits"]) == (0, 0, len(item_ids(repo)))


def test_the_tracked_metrics_are_the_same_whether_answers_came_from_the_server_or_the_cache(repo, server):
    """metrics/teachers/<teacher>.json is in git: a resumed run and a fresh one must write the same bytes."""
    env = {KEY_ENV: "sk-dummy"}
    first = run(repo, "stages/label.py", "srv", env=env)
    assert first.returncode == 0, first.stderr
    fresh = (repo / "metrics/teachers/srv.json").read_bytes()
    n = len(server.prompts())
    again = run(repo, "stages/label.py", "srv", env=env)
    assert again.returncode == 0, again.stderr
    assert len(server.prompts()) == n  # all from the answer cache
    assert (repo / "metrics/teachers/srv.json").read_bytes() == fresh
    assert json.loads((repo / "logs/label/srv.json").read_text())["cache_hits"] == len(item_ids(repo))


def test_labelling_is_never_restored_from_the_run_cache(repo, server, tmp_path):
    """DVC's run cache keeps each run's outputs under its deps and params. Labelling depends on state DVC cannot
    see (the server, the answer cache), so going back to earlier params must label again, not bring back the
    answers of the earlier run."""
    env = {KEY_ENV: "sk-dummy"}
    params_file = repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())

    def set_max_tokens(value: int) -> None:
        params["teachers"]["srv"]["max_tokens"] = value
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    set_max_tokens(256)
    first = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert first.returncode == 0, first.stderr
    assert (answers(repo)["raw_text"] == server.answer).all()

    set_max_tokens(128)  # another setting, and one item fails
    bad = item_ids(repo)[1]
    server.set_faults({f"[{bad}]": ["500"] * 10})
    failed = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert failed.returncode != 0 and "1 of" in failed.stdout + failed.stderr

    set_max_tokens(256)  # back to the first run's params; meanwhile the server changed and the cache is gone
    server.set_faults({})
    server.answer = "Label: falsified. Rationale: the server was updated."
    shutil.rmtree(tmp_path / "cache")
    n = len(server.prompts())
    again = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert again.returncode == 0, again.stderr
    assert "is cached - skipping run" not in again.stdout + again.stderr
    assert sorted(asked(server, n)) == sorted(item_ids(repo))  # every item asked again
    got = answers(repo)
    assert (got["status"] == "ok").all() and (got["raw_text"] == server.answer).all(), "older answers came back"


def test_accepted_failures_are_retried_by_a_plain_repro(repo, server):
    """With max_errors, a run with a failed item succeeds; the next plain `dvc repro` asks that item again."""
    env = {KEY_ENV: "sk-dummy"}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teachers"]["srv"]["max_errors"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = item_ids(repo)[3]
    server.set_faults({f"[{bad}]": ["500"] * 10})
    first = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert first.returncode == 0, first.stderr
    assert "1 of" in first.stderr and answers(repo).filter(pl.col("status") == "error")["id"].to_list() == [bad]

    server.set_faults({})
    n = len(server.prompts())
    again = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert again.returncode == 0, again.stderr
    assert asked(server, n) == [bad]
    assert (answers(repo)["status"] == "ok").all()


def test_answers_pulled_without_the_cache_are_reused_not_asked_again(repo, server, tmp_path):
    """A teammate who `dvc pull`s the answers has no answer cache: the stage reuses its previous outputs."""
    env = {KEY_ENV: "sk-dummy"}
    first = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert first.returncode == 0, first.stderr
    labelled = answers(repo)
    shutil.rmtree(tmp_path / "cache")
    n = len(server.prompts())
    again = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert again.returncode == 0, again.stderr
    assert len(server.prompts()) == n
    assert answers(repo).equals(labelled)
    run_log = json.loads((repo / "logs/label/srv.json").read_text())
    assert (run_log["reused"], run_log["sent"]) == (len(item_ids(repo)), 0)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir())[0] == "srv.sqlite"  # the cache is seeded again


def test_ctrl_c_ends_with_one_line_and_keeps_the_answers(repo, server, tmp_path):
    """SIGINT mid-run: no traceback, a message that says what to do, and the answers so far stay in the cache."""
    server.hang_s = 30
    server.set_faults({f"[{item_ids(repo)[-1]}]": ["hang"]})  # the last item hangs; the others are answered
    proc = subprocess.Popen(
        [sys.executable, "stages/label.py", "srv"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=offline_env() | {KEY_ENV: "sk-dummy"},
    )
    deadline = time.monotonic() + 60
    while len(server.prompts()) < len(item_ids(repo)) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the answered items reach the cache
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "label@srv: interrupted; the answers received so far are in the answer cache" in err
    with AnswerCache(tmp_path / "cache" / "srv.sqlite") as cache:
        assert len(cache) >= 1


def test_unparsed_answers_are_kept_until_retry_unparsed_asks_them_again(repo, server, tmp_path):
    env = {KEY_ENV: "sk-dummy"}
    bad = item_ids(repo)[1]
    server.set_faults({f"[{bad}]": ["unparsed"]})  # its first answer is not in the answer format
    first = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert first.returncode == 0, first.stderr
    assert answers(repo).filter(pl.col("status") == "unparsed")["id"].to_list() == [bad]
    n = len(server.prompts())
    plain = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert plain.returncode == 0 and len(server.prompts()) == n  # an unparsed answer is an answer: cached

    retried = run(repo, "stages/label.py", "srv", "--retry-unparsed", env=env)
    assert retried.returncode == 0, retried.stderr
    assert asked(server, n) == [bad]  # only the unparsed item is asked again
    after = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert after.returncode == 0, after.stderr
    assert asked(server, n) == [bad]  # the new answer replaced the old one in the cache
    assert (answers(repo)["status"] == "ok").all()
    with AnswerCache(tmp_path / "cache" / "srv.sqlite") as cache:
        assert len(cache) == len(item_ids(repo))


def test_a_server_that_is_not_running_stops_the_stage_quickly_with_a_clear_message(repo, tmp_path):
    with FaultInjectingChatServer() as gone:
        url = gone.base_url  # closed: nothing listens there
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teachers"]["srv"] |= {"base_url": url, "max_retries": 5, "max_concurrency": 2}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.monotonic()
    done = run(repo, "stages/label.py", "srv", env={KEY_ENV: "sk-dummy"})
    assert done.returncode != 0
    assert time.monotonic() - start < 60  # python start-up and imports; the requests themselves take well under 1 s
    assert f"no server responded ({url}: connection failed" in done.stderr and "Is the server running" in done.stderr
    assert f"{len(item_ids(repo))} of {len(item_ids(repo))} items failed" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    log = json.loads((repo / "logs/label/srv.json").read_text())
    assert log["requests"] <= 2 + 2  # taken out after 2 refused attempts (plus one in flight on the other worker)


@pytest.mark.parametrize("test_set", ["verite", "../../outside"])
def test_a_test_set_it_cannot_read_stops_the_stage_before_any_request(repo, server, test_set):
    """A set named in data.test_sets with no items (no prepare_test entry), or a name that is a path: the stage
    stops with the set and the fix before asking anything, not after labelling train, val and test."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["test_sets"] = [test_set]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = run(repo, "stages/label.py", "srv", env={KEY_ENV: "sk-dummy"})
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert f"label@srv: data.test_sets: {test_set!r}" in done.stderr
    fix = "remove 'verite' from data.test_sets" if test_set == "verite" else "is not a test set name"
    assert fix in done.stderr, done.stderr
    assert server.prompts() == []


def test_shard_option_is_checked(tmp_path):
    done = run(tmp_path, str(ROOT / "stages/label.py"), "srv", "--shard", "2/2")
    assert done.returncode != 0 and "need 0 <= I < N" in done.stderr
