"""A server teacher against a real OpenAI-compatible server: `transformers serve` (from `transformers[serving]`)
serving a tiny LLaVA built by mmkd.demo.tiny, on 127.0.0.1, CPU. Its answers equal the local backend's on the same
model and the answers schema is the same; a labeller killed with SIGKILL part-way resumes without asking any
cached item again (counted by a proxy in front of the server)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
import yaml
from fault_server import CountingProxy

from mmkd.inference import make_backend
from mmkd.labelling import label_items
from mmkd.schema import ANSWER_SCHEMA, items_frame, read_answers, read_items

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_llava(tiny_models, tmp_path_factory):
    """(model dir, base URL) of `transformers serve` running the tiny LLaVA on CPU."""
    model_dir = tiny_models["llava"]
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = Path(sys.executable).parent / "transformers"
    cmd = [str(cli), "serve", str(model_dir), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"`transformers serve` did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield model_dir, f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def server_teacher(model_dir: Path, base_url: str, **settings):
    params = {
        "backend": "openai",
        "model": str(model_dir),  # `transformers serve` knows the model by the path it was started with
        "base_url": base_url,
        "prompt_version": "v1",
        "max_tokens": MAX_TOKENS,
    }
    return make_backend("served", params | settings)


def test_answers_through_the_server_equal_the_local_backend(served_llava, world_dir):
    model_dir, base_url = served_llava
    items = read_items(world_dir / "test.parquet").head(6)
    with CountingProxy(base_url) as proxy:
        served = label_items(
            server_teacher(model_dir, proxy.base_url, max_concurrency=2), items, source="t", prompt_version="v1"
        )
    local = make_backend(
        "local",
        {"model": str(model_dir), "prompt_version": "v1", "max_new_tokens": MAX_TOKENS, "batch_size": 1},
    )
    expected = label_items(local, items, source="t", prompt_version="v1")
    assert served.schema == pl.Schema(ANSWER_SCHEMA)
    assert len(proxy.prompts) == len(items)
    assert served["status"].is_in(["ok", "unparsed"]).all()
    # Same greedy decoding of the same weights, image and chat template: the same text, whatever path it took. Only
    # the server counts tokens, so those columns differ (a local model reports none).
    assert served["prompt_tokens"].is_not_null().all() and expected["prompt_tokens"].is_null().all()
    answer = [c for c in ANSWER_SCHEMA if c not in ("prompt_tokens", "completion_tokens")]
    assert served.select(answer).equals(expected.select(answer)), (served["raw_text"].to_list(), expected["raw_text"])


def test_a_labeller_killed_part_way_resumes_without_asking_cached_items(served_llava, world_dir, tmp_path):
    model_dir, base_url = served_llava
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 8), ("test", 4)):  # captions that name their item, so the proxy knows who was asked
        rows = read_items(world_dir / f"{split}.parquet").head(n).to_dicts()
        items_frame([r | {"caption": f"{r['caption']} [{r['id']}]"} for r in rows]).write_parquet(
            data / f"{split}.parquet"
        )
    ids = [i for split in ("train", "test") for i in pl.read_parquet(data / f"{split}.parquet")["id"]]
    cache = tmp_path / "cache" / "served.sqlite"

    with CountingProxy(base_url, delay=0.3) as proxy:
        teacher = {
            "backend": "openai",
            "model": str(model_dir),
            "base_url": proxy.base_url,
            "weights": "unused-outside-dvc",
            "cache_dir": str(cache.parent),
            "prompt_version": "v1",
            "max_tokens": MAX_TOKENS,
            "max_concurrency": 1,
        }
        (tmp_path / "params.yaml").write_text(
            yaml.safe_dump({"data": {"dir": str(data)}, "teachers": {"served": teacher}})
        )
        cmd = [sys.executable, str(ROOT / "stages/label.py"), "served"]
        labeller = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while len(_cached_ids(cache)) < 3 and time.time() < deadline and labeller.poll() is None:
                time.sleep(0.05)
            os.kill(labeller.pid, signal.SIGKILL)
        finally:
            labeller.wait()
        assert labeller.returncode == -signal.SIGKILL
        cached = _cached_ids(cache)
        assert 3 <= len(cached) < len(ids), "the labeller should have been killed part-way"
        n = len(proxy.prompts)

        resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        asked_again = [p.split("[")[-1].split("]")[0] for p in proxy.prompts[n:]]

    assert not set(asked_again) & cached  # no cached item is requested again
    assert set(asked_again) | cached == set(ids)
    answers = pl.concat([read_answers(tmp_path / f"data/answers/served/{s}.parquet") for s in ("train", "test")])
    assert answers["id"].to_list() == ids
    assert answers["status"].is_in(["ok", "unparsed"]).all() and answers["raw_text"].is_not_null().all()


def _cached_ids(cache: Path) -> set[str]:
    if not cache.exists():
        return set()
    try:
        with sqlite3.connect(cache, timeout=5) as db:
            return {row[0] for row in db.execute("SELECT item_id FROM answers")}
    except sqlite3.OperationalError:  # not created yet
        return set()
