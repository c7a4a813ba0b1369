"""The student, exported and served: a demo-style student (a tiny LLaVA with a Stage-1 then a Stage-2 adapter)
exported by ``mmkd.deploy.export.export_model`` into one standalone model directory, served by a real
`transformers serve` on 127.0.0.1 (CPU) and asked through ``backend: openai``, answers exactly as ``mmkd predict`` does
with the adapters on the same items: the same raw text and labels.

Scores: where a server returns logprobs, its scores are to agree with the local ones within 1e-3. `transformers
serve` returns none (it answers a request for logprobs as if the field were absent), so here the served scores are
None while the local ones are set; the agreement is not checked here.
"""

from __future__ import annotations

import pytest
from fault_server import transformers_serve

from mmkd.deploy.export import export_model
from mmkd.deploy.predict import load_predictor, predict_items, trained_prompt_version
from mmkd.inference.answering import label_items
from mmkd.labelling.backends import make_backend
from mmkd.schema import ANSWER_SCHEMA, read_items

ARCH = "llava"  # the demo student's architecture
MAX_TOKENS = 24
N_ITEMS = 8


@pytest.fixture(scope="module")
def student(stage2_run, tmp_path_factory):
    """(the Stage-2 adapter, its export: a model directory with the whole chain merged in)."""
    adapter = stage2_run(ARCH).adapter
    merged = tmp_path_factory.mktemp("exported") / "student"
    export_model(adapter, merged, metrics_path=None, params_path=None)  # no pipeline run to quote in the card
    return adapter, merged


@pytest.fixture(scope="module")
def served_student(student, tmp_path_factory):
    """The base URL of `transformers serve` running the merged student."""
    with transformers_serve(student[1], tmp_path_factory.mktemp("serve") / "serve.log") as base_url:
        yield base_url


def test_the_served_student_answers_as_mmkd_predict(student, served_student, stage1_run, world_dir):
    adapter, merged = student
    items = read_items(world_dir / "test.parquet").head(N_ITEMS)
    prompt_version = trained_prompt_version(str(adapter))
    teacher = {
        "backend": "openai",
        "model": str(merged),  # `transformers serve` knows the model by the path it was started with
        "base_url": served_student,
        "prompt_version": prompt_version,
        "max_tokens": MAX_TOKENS,
        "max_concurrency": 2,
    }
    served = label_items(make_backend("student", teacher), items, source="student", prompt_version=prompt_version)
    # batch_size 1: the server answers one request at a time, so no padding can change a near tie of random weights
    local = load_predictor(adapter=str(adapter), base=None, batch_size=1, max_new_tokens=MAX_TOKENS)
    expected = predict_items(local, items, prompt_version)

    assert served["status"].is_in(["ok", "unparsed"]).all()
    same = [c for c in ANSWER_SCHEMA if c not in ("prompt_tokens", "completion_tokens", "score")]
    assert served.select(same).equals(expected.select(same)), (served["raw_text"].to_list(), expected["raw_text"])
    # The scores: none from this server (it ignores the request for logprobs); the local path scores what parsed.
    assert served["score"].is_null().all()
    parsed = expected["status"] == "ok"
    assert expected.filter(parsed)["score"].is_not_null().all()
    # The Stage-1 student alone answers otherwise, so the equality above shows the whole chain was merged.
    stage1 = load_predictor(adapter=str(stage1_run(ARCH).adapter), base=None, batch_size=1, max_new_tokens=MAX_TOKENS)
    assert predict_items(stage1, items, prompt_version)["raw_text"].to_list() != served["raw_text"].to_list()
