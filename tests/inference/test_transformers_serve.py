"""A server teacher against a real OpenAI-compatible server: `transformers serve` (from `transformers[serving]`)
serving a tiny LLaVA built by mmkd.demo.tiny, on 127.0.0.1, CPU. Its answers equal the local backend's on the same
model and the answers schema is the same (scores aside: the server ignores the request for logprobs, so its
answers have none); a labeller killed with SIGKILL part-way resumes without asking any cached item again (counted
by a proxy in front of the server)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from fault_server import CountingProxy, transformers_serve

from mmkd.inference.answering import label_items
from mmkd.labelling.backends import make_backend
from mmkd.paths import LABELLED_SPLITS
from mmkd.schema import ANSWER_SCHEMA, items_frame, read_answers, read_items

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def served_llava(tiny_models, tmp_path_factory):
    """(model dir, base URL) of `transformers serve` running the tiny LLaVA on CPU."""
    model_dir = tiny_models["llava"]
    with transformers_serve(model_dir, tmp_path_factory.mktemp("serve") / "serve.log") as base_url:
        yield model_dir, base_url


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
    # the server counts tokens, so those columns differ (a local model reports none); only the local model scores,
    # as `transformers serve` answers a request for logprobs without them.
    assert served["prompt_tokens"].is_not_null().all() and expected["prompt_tokens"].is_null().all()
    assert served["score"].is_null().all()
    answer = [c for c in ANSWER_SCHEMA if c not in ("prompt_tokens", "completion_tokens", "score")]
    assert served.select(answer).equals(expected.select(answer)), (served["raw_text"].to_list(), expected["raw_text"])


def test_a_labeller_killed_part_way_resumes_without_asking_cached_items(served_llava, world_dir, tmp_path):
    model_dir, base_url = served_llava
    data = tmp_path / "data"
    data.mkdir()
    # The world has no val split: val takes other test items, so that no item is in two splits.
    sources = {"train": ("train", 0, 8), "val": ("test", 4, 4), "test": ("test", 0, 4)}
    for split in LABELLED_SPLITS:  # captions that name their item, so the proxy knows who was asked
        source, offset, n = sources[split]
        rows = read_items(world_dir / f"{source}.parquet").slice(offset, n).to_dicts()
        items_frame([r | {"caption": f"{r['caption']} [{r['id']}]"} for r in rows]).write_parquet(
            data / f"{split}.parquet"
        )
    ids = [i for split in LABELLED_SPLITS for i in pl.read_parquet(data / f"{split}.parquet")["id"]]
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
        data_params = {"dir": str(data), "test_sets": []}  # no extra test sets to label
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data_params, "teachers": {"served": teacher}}))
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
    answers = pl.concat([read_answers(tmp_path / f"data/answers/served/{s}.parquet") for s in LABELLED_SPLITS])
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
