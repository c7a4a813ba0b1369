"""`label@<teacher>` for a server teacher, run by DVC in a temporary repo against the fault-injecting fake server
(``tests/fault_server.py``, no model): a run with a failed item fails and says how many, a re-run asks only
that item, a third run asks nothing; shards on two "machines" (two caches) merge so that the DVC run sends no
request; and the dummy API key appears in no file and no output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import polars as pl
import pytest
import yaml
from dvc_env import offline_env
from fault_server import FaultInjectingChatServer

from mmkd.demo.world import make_world
from mmkd.schema import read_answers

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "MMKD_TEST_LABEL_KEY"
SPLITS = {"train": 6, "test": 4}


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
    params["teachers"] = {
        "srv": {
            "backend": "openai",
            "model": "fake",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "weights": "src/mmkd/inference/openai_compat.py",
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
    assert f"1 of {len(ids)} items failed" in first.stdout + first.stderr
    got = answers(repo)
    assert got.filter(pl.col("status") == "error")["id"].to_list() == [bad]
    assert (got.filter(pl.col("id") != bad)["status"] == "ok").all()
    metrics = json.loads((repo / "metrics/teachers/srv.json").read_text())
    assert metrics["errors"] == 1 and metrics["sent"] == len(ids) and metrics["cache_hits"] == 0
    assert metrics["requests"] == len(ids) + 1 and metrics["retries"] == 1  # max_retries: 1
    assert metrics["cost"] == pytest.approx((metrics["prompt_tokens"] * 2 + metrics["completion_tokens"] * 6) / 1e6)
    assert sorted(asked(server)) == sorted(ids + [bad])

    server.set_faults({})  # the server recovers
    n = len(server.prompts())
    second = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert second.returncode == 0, second.stderr
    assert asked(server, n) == [bad]  # only the failed item is asked again
    assert (answers(repo)["status"] == "ok").all()
    metrics = json.loads((repo / "metrics/teachers/srv.json").read_text())
    assert (metrics["sent"], metrics["cache_hits"], metrics["errors"]) == (1, len(ids) - 1, 0)
    assert metrics["answers_prompt_tokens"] > metrics["prompt_tokens"] > 0  # cached answers' tokens are kept

    n = len(server.prompts())
    third = run(repo, "-m", "dvc", "repro", "-s", "label@srv", env=env)
    assert third.returncode == 0, third.stderr
    assert len(server.prompts()) == n  # nothing changed: DVC does not run the stage
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
    metrics = json.loads((repo / "metrics/teachers/srv.json").read_text())
    assert (metrics["sent"], metrics["requests"], metrics["cache_hits"]) == (0, 0, len(item_ids(repo)))


def test_shard_option_is_checked(tmp_path):
    done = run(tmp_path, str(ROOT / "stages/label.py"), "srv", "--shard", "2/2")
    assert done.returncode != 0 and "need 0 <= I < N" in done.stderr
