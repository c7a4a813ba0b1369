"""The OpenAI-compatible teacher against a real HTTP server on 127.0.0.1: the fault-injecting fake server of
``tests/fault_server.py`` (canned answers, no model). Bounded concurrency, retries on 500 / 429 with
Retry-After / malformed JSON / a hang past the timeout, per-item errors when retries run out, several servers,
structured output and the API key taken from the environment variable that the config names. The score read from
logprobs: the label slot and the renormalisation on hand-made payloads, then end to end against servers that
return logprobs, ignore the request for them or refuse it. Servers that fail, go down or never listen:
``test_server_failover.py``."""

from __future__ import annotations

import base64
import json
import math
import time

import pytest
from fault_server import LOGPROBS_REFUSAL, UNPARSED_ANSWER, FaultInjectingChatServer
from PIL import Image

from mmkd.inference.base import InferenceRequest
from mmkd.labelling.backends import make_backend
from mmkd.labelling.server.config import ANSWER_JSON_SCHEMA
from mmkd.labelling.server.faults import ConfigError
from mmkd.labelling.server.logprobs import label_slot, label_slot_score
from mmkd.parsing import parse_answer

IMAGE = Image.new("RGB", (28, 28), (200, 30, 30))


def requests(n: int) -> list[InferenceRequest]:
    # "item-3." cannot match inside "item-13.": the tags the fault scripts use end with a full stop.
    return [InferenceRequest(f"id{i}", IMAGE, f"Does the caption match? Caption: item-{i}.") for i in range(n)]


def teacher(base_url, **settings):
    params = {"backend": "openai", "model": "fake", "base_url": base_url, "prompt_version": "v1"}
    return make_backend("srv", params | settings)


def test_requests_are_concurrent_and_bounded():
    with FaultInjectingChatServer(latency=0.2) as server:
        t = teacher(server.base_url, max_concurrency=6)
        replies = t.answer(requests(24))
    assert [r.item_id for r in replies] == [f"id{i}" for i in range(24)]
    assert all(r.error is None and parse_answer(r.text).status == "ok" for r in replies)
    assert server.peak_in_flight == 6  # as many as allowed in flight, never more
    assert (t.usage.requests, t.usage.retries) == (24, 0)
    assert t.usage.prompt_tokens == sum(len(r.prompt.split()) for r in requests(24))
    assert t.usage.completion_tokens == sum(r.completion_tokens for r in replies) > 0


def test_an_item_takes_at_most_max_retries_plus_one_attempts_whatever_the_mix_of_faults():
    """5xx (retried by the SDK) and malformed 200s (retried by mmkd) share one budget, and the message counts true."""
    faults = {"item-0.": ["500", "malformed"] * 10, "item-1.": ["malformed", "500"] * 10}
    with FaultInjectingChatServer(faults=faults) as server:
        t = teacher(server.base_url, max_concurrency=2, max_retries=3)
        replies = {r.item_id: r for r in t.answer(requests(3))}
        seen = list(server.requests)
    for i in (0, 1):
        assert len([r for r in seen if f"item-{i}." in r.prompt]) == 4, i  # 1 + max_retries
        assert "after 4 attempt(s)" in replies[f"id{i}"].error, replies[f"id{i}"].error
    assert replies["id2"].error is None and t.usage.requests == len(seen) == 4 + 4 + 1


def test_faults_are_retried_and_items_that_keep_failing_become_errors():
    faults = {
        "item-1.": ["500"],
        "item-2.": ["429"],
        "item-3.": ["malformed"],
        "item-4.": ["hang"],
        "item-5.": ["500", "500", "500"],  # fails every attempt (1 + max_retries)
        "item-6.": ["hang", "hang", "hang"],
    }
    with FaultInjectingChatServer(faults=faults, retry_after="1", hang_s=5) as server:
        t = teacher(server.base_url, max_concurrency=4, timeout=0.5, max_retries=2)
        replies = {r.item_id: r for r in t.answer(requests(10))}
        seen = list(server.requests)

    failed = {i for i, r in replies.items() if r.error}
    assert failed == {"id5", "id6"}
    assert "HTTP 500" in replies["id5"].error and "after 3 attempt(s)" in replies["id5"].error
    assert "injected internal error" in replies["id5"].error  # the server's own reason is kept
    assert "timed out" in replies["id6"].error and "after 3 attempt(s)" in replies["id6"].error
    for item_id in set(replies) - failed:  # no lost answers
        assert parse_answer(replies[item_id].text).status == "ok", replies[item_id]

    attempts = {tag: [r for r in seen if tag in r.prompt] for tag in faults}
    assert [len(attempts[f"item-{i}."]) for i in range(1, 7)] == [2, 2, 2, 2, 3, 3]
    assert t.usage.requests == len(seen) == 10 + 1 + 1 + 1 + 1 + 2 + 2
    assert t.usage.retries == len(seen) - 10
    # 429 with Retry-After: 1 waits a second (the SDK's own first backoff is under 0.5 s)
    first, second = attempts["item-2."]
    assert second.time - first.time >= 0.95


def test_items_are_shared_among_several_servers():
    with FaultInjectingChatServer(latency=0.05) as a, FaultInjectingChatServer(latency=0.05) as b:
        t = teacher([a.base_url, b.base_url], max_concurrency=2)
        replies = t.answer(requests(16))
    assert all(r.error is None for r in replies)
    assert len(a.requests) + len(b.requests) == 16 and a.requests and b.requests
    assert a.peak_in_flight <= 2 and b.peak_in_flight <= 2
    assert sorted(r.prompt for r in a.requests + b.requests) == sorted(r.prompt for r in requests(16))


def test_structured_output_json_schema_is_requested_and_rewritten_into_the_answer_format():
    answer = json.dumps({"label": "falsified", "rationale": "the colour differs"})
    with FaultInjectingChatServer(answer=answer) as server:
        replies = teacher(server.base_url, structured_output="json_schema", seed=3).answer(requests(2))
        body = server.requests[0].body
    assert body["response_format"]["json_schema"]["schema"] == ANSWER_JSON_SCHEMA
    assert body["seed"] == 3 and body["temperature"] == 0.0
    assert replies[0].text == "Label: falsified. Rationale: the colour differs"
    assert parse_answer(replies[0].text).label == "falsified"


def test_structured_output_choice_sends_the_labels_in_structured_outputs():
    """vLLM's current field by default (0.12+ ignores ``guided_choice``), beside the other options of extra_body."""
    extra = {"top_k": 1, "structured_outputs": {"backend": "xgrammar"}}
    with FaultInjectingChatServer(answer="pristine") as server:
        t = teacher(server.base_url, structured_output="choice", extra_body=extra)
        replies = t.answer(requests(1))
        body = server.requests[0].body
    assert body["structured_outputs"] == {"backend": "xgrammar", "choice": ["pristine", "falsified"]}
    assert "guided_choice" not in body and body["top_k"] == 1
    assert extra["structured_outputs"] == {"backend": "xgrammar"}  # the config's own dict is not changed
    assert parse_answer(replies[0].text).label == "pristine"


def test_structured_outputs_field_guided_sends_guided_choice_for_older_servers():
    with FaultInjectingChatServer(answer="pristine") as server:
        t = teacher(server.base_url, structured_output="choice", structured_outputs_field="guided")
        replies = t.answer(requests(1))
        body = server.requests[0].body
    assert body["guided_choice"] == ["pristine", "falsified"] and "structured_outputs" not in body
    assert parse_answer(replies[0].text).label == "pristine"


def test_the_structured_outputs_field_is_part_of_the_cache_key_and_checked():
    current = teacher("http://127.0.0.1:1/v1", structured_output="choice").identity()
    guided = teacher("http://127.0.0.1:1/v1", structured_output="choice", structured_outputs_field="guided")
    assert current != guided.identity()  # answers asked the old way may have been unconstrained: ask again
    # without choice the field changes nothing that is sent, so neither the key
    assert (
        teacher("http://127.0.0.1:1/v1").identity()
        == teacher("http://127.0.0.1:1/v1", structured_outputs_field="guided").identity()
    )
    with pytest.raises(ValueError, match="structured_outputs_field must be one of"):
        teacher("http://127.0.0.1:1/v1", structured_outputs_field="guided_choice")


def test_a_choice_answer_that_is_not_a_label_warns_once_about_the_field(caplog):
    """A server that ignores the field answers free text: said once, naming the other field; the items go on."""
    with FaultInjectingChatServer(answer="Label: pristine. Rationale: fine.") as server:
        t = teacher(server.base_url, structured_output="choice", structured_outputs_field="guided")
        with caplog.at_level("WARNING", logger="mmkd.labelling.openai_compat"):
            replies = t.answer(requests(3))
    warnings = [r.getMessage() for r in caplog.records if "did not constrain" in r.getMessage()]
    assert len(warnings) == 1 and "structured_outputs_field: structured_outputs" in warnings[0]
    assert all(r.error is None for r in replies)


def test_image_is_sent_as_a_base64_data_url_of_the_file(tmp_path):
    path = tmp_path / "img.png"
    IMAGE.save(path)
    request = InferenceRequest("x", IMAGE, "prompt", image_path=str(path))
    with FaultInjectingChatServer() as server:
        teacher(server.base_url).answer([request])
        content = server.requests[0].body["messages"][0]["content"]
    assert content[0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    assert content[1] == {"type": "text", "text": "prompt"}


def test_api_key_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MMKD_TEST_KEY", "sk-dummy-123")
    with FaultInjectingChatServer() as server:
        teacher(server.base_url, api_key_env="MMKD_TEST_KEY").answer(requests(1))
        assert server.requests[0].authorization == "Bearer sk-dummy-123"
    monkeypatch.delenv("MMKD_TEST_KEY")
    with pytest.raises(ValueError, match=r"teacher 'srv': the environment variable MMKD_TEST_KEY .* is not set"):
        teacher("http://127.0.0.1:9/v1", api_key_env="MMKD_TEST_KEY")
    for value in ("sk-live-abc.def", "hf_AbCdEf0123456789abcdef", "AKIAABCDEFGHIJKLMNOP", "A" * 8 + "1" * 30, 12):
        with pytest.raises(ValueError, match="api_key_env must be the \\*name\\* of an environment variable") as err:
            teacher("http://127.0.0.1:9/v1", api_key_env=value)
        assert str(value) not in str(err.value)  # the value (maybe a key) is never echoed


def test_a_refused_key_stops_the_run_with_a_message():
    with FaultInjectingChatServer(faults={"item-0.": ["401"]}) as server:
        with pytest.raises(ConfigError, match=r"teacher 'srv': .* refused the request \(HTTP 401"):
            teacher(server.base_url, max_concurrency=1).answer(requests(3))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"base_url": []}, "base_url must be a URL or a non-empty list"),
        ({"max_concurrency": 0}, "need max_concurrency >= 1"),
        ({"structured_output": "regex"}, "structured_output must be null or one of"),
        ({"top_logprobs": 21}, "top_logprobs must be null or an integer from 0 to 20"),
        ({"top_logprobs": -1}, "top_logprobs must be null or an integer from 0 to 20"),
        ({"top_logprobs": True}, "top_logprobs must be null or an integer from 0 to 20"),
        ({"max_errors": -1}, "max_errors must be >= 0"),
        ({"pause_server_after": 0}, "pause_server_after must be >= 1"),
        ({"pause_s": 10, "max_pause_s": 5}, "need 0 < pause_s <= max_pause_s"),
        ({"timeout": 60, "give_up_after_s": 30}, r"give_up_after_s \(30\) must be at least timeout \(60\)"),
        ({"temprature": 0.5}, "bad settings for backend 'openai'.*temprature"),
    ],
)
def test_bad_settings_name_the_teacher(settings, message):
    with pytest.raises(ValueError, match=f"teacher 'srv': .*{message}"):
        teacher(**({"base_url": "http://127.0.0.1:9/v1"} | settings))


def test_a_server_that_trickles_its_reply_is_cut_off_at_timeout():
    """One byte every 0.3 s keeps an inactivity timer alive for ever; ``timeout`` bounds the whole attempt."""
    with FaultInjectingChatServer(faults={"item-0.": ["trickle"] * 3}, trickle_s=0.3) as server:
        t = teacher(server.base_url, max_concurrency=2, timeout=1.0, max_retries=1)
        start = time.monotonic()
        replies = t.answer(requests(2))
        elapsed = time.monotonic() - start
    assert replies[1].error is None
    assert replies[0].error and "timed out" in replies[0].error and "after 2 attempt(s)" in replies[0].error
    assert elapsed < 2 * 1.0 + 1.5  # two attempts of at most 1 s each, plus one backoff


def test_a_request_the_server_rejects_for_the_item_is_not_retried_and_keeps_the_reason():
    with FaultInjectingChatServer(faults={"item-1.": ["400"] * 5}) as server:
        t = teacher(server.base_url, max_concurrency=2, max_retries=4)
        replies = t.answer(requests(3))
        seen = [r for r in server.requests if "item-1." in r.prompt]
    assert len(seen) == 1  # a 400 is about the request: asking again cannot help
    assert "HTTP 400" in replies[1].error and "maximum context length is 4096 tokens" in replies[1].error
    assert replies[0].error is None and replies[2].error is None and not t.health[server.base_url].out


def test_requests_are_pulled_from_a_stream_as_workers_free_up():
    """A generator is consumed lazily: with 2 workers and one slow item, the fast items keep flowing (no batch
    waits for the slowest), and at most the items in progress have been taken from the stream."""
    taken = []

    def stream():
        for r in requests(12):
            taken.append(r.item_id)
            yield r

    with FaultInjectingChatServer(faults={"item-0.": ["hang"]}, hang_s=1.5) as server:
        t = teacher(server.base_url, max_concurrency=2, timeout=5)
        order = []
        replies = t.answer(stream(), lambda r: order.append((r.item_id, len(taken))))
    assert [r.item_id for r in replies] == [f"id{i}" for i in range(12)]
    assert order[-1][0] == "id0"  # the slow one came last; the other worker answered all the rest meanwhile
    assert all(taken_then <= int(item_id[2:]) + 2 for item_id, taken_then in order[:-1])


# --- the score from logprobs -------------------------------------------------------------------------------------


def entry(token: str, logprob: float = -0.1, top: dict[str, float] | None = None) -> dict:
    """One ``logprobs.content`` entry: the token generated, its logprob and the top alternatives there."""
    alternatives = top if top is not None else {token: logprob}
    return {
        "token": token,
        "logprob": logprob,
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alternatives.items()],
    }


def payload(*entries: dict) -> dict:
    return {"content": list(entries)}


def two_way(falsified: float, pristine: float) -> float:
    return math.exp(falsified) / (math.exp(falsified) + math.exp(pristine))


def test_the_score_is_read_at_the_label_slot_across_split_tokens():
    """ "Lab" "el" ":" then the value " fals" "ified": the slot is " fals", and its alternatives for each label
    are renormalised over the two."""
    top = {" fals": -0.3, " prist": -1.6, " maybe": -2.5}
    logprobs = payload(
        entry("Check"), entry(":"), entry(" red"), entry(" yes"), entry("."),
        entry(" Lab"), entry("el"), entry(":"), entry(" fals", -0.3, top), entry("ified"), entry("."),
    )  # fmt: skip
    assert label_slot([e["token"] for e in logprobs["content"]]) == 8
    assert label_slot_score(logprobs) == pytest.approx(two_way(-0.3, -1.6))


def test_white_space_tokens_after_label_keep_the_slot_and_case_is_free():
    top = {"prist": -0.2, "fals": -2.0, " ": -3.0}
    logprobs = payload(entry("LABEL"), entry(" :"), entry(" "), entry("\n"), entry("prist", -0.2, top), entry("ine"))
    assert label_slot([e["token"] for e in logprobs["content"]]) == 4
    assert label_slot_score(logprobs) == pytest.approx(two_way(-2.0, -0.2))


def test_each_label_takes_its_best_candidate_that_begins_it():
    """ " f", " fals" and " falsified" all begin falsified: the most probable one represents it; " pr" likewise."""
    top = {" falsified": -1.2, " f": -0.9, " fals": -2.0, " pr": -1.5, " pristine": -1.7, " F": -0.5}
    logprobs = payload(entry("Label"), entry(":"), entry(" falsified", -1.2, top))
    assert label_slot_score(logprobs) == pytest.approx(two_way(-0.5, -1.5))  # " F": stripped, lower-cased


def test_a_label_absent_from_the_top_k_has_probability_zero():
    only_pristine = payload(entry("Label:"), entry(" pristine", -0.01, {" pristine": -0.01, " the": -6.0}))
    only_falsified = payload(entry("Label:"), entry(" falsified", -0.01, {" falsified": -0.01, " a": -6.0}))
    assert label_slot_score(only_pristine) == 0.0
    assert label_slot_score(only_falsified) == 1.0
    # The token generated at the slot counts too (top_logprobs: 0 returns only that one).
    assert label_slot_score(payload(entry("Label:"), {"token": " prist", "logprob": -0.1, "top_logprobs": []})) == 0.0


@pytest.mark.parametrize(
    "logprobs",
    [
        # no Label: field (an unparsed answer, as the fake server's)
        {"content": [entry(t) for t in ["I", " am", " not", " sure", "."]]},
        # Label: is the last thing written: no token at the slot
        payload(entry("Label"), entry(":"), entry(" ")),
        # a token runs across the slot ("el: f"): no token begins the value (as in mmkd.scoring)
        payload(entry("Lab"), entry("el: f"), entry("alsified")),
        # neither label among the slot's alternatives
        payload(entry("Label:"), entry(" unsure", -0.1, {" unsure": -0.1, " maybe": -1.0})),
        # no logprobs, or not in the OpenAI shape
        None,
        {},
        {"content": None},
        {"content": [{"token": 3, "logprob": -1.0}]},
        payload(entry("Label:"), {"token": " pristine", "logprob": "high"}),
        payload(entry("Label:"), {"token": " pristine"}),
    ],
)
def test_no_slot_or_unreadable_logprobs_give_no_score(logprobs):
    assert label_slot_score(logprobs) is None


def test_the_slot_is_the_one_mmkd_scoring_finds():
    """The same token as ``mmkd.scoring.slot_index`` on the same tokens (a tokenizer that decodes by joining)."""
    from mmkd.label_slot import slot_index

    class Joining:
        def __init__(self, tokens):
            self.tokens = tokens

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.tokens[i] for i in ids)

    cases = [
        ["Label", ":", " pristine", "."],
        ["Check", ":", " no", ".", " label", " :", " ", " ", "fals", "ified"],
        ["Lab", "el", ":", "\n", "prist", "ine", " Label", ":", " falsified"],
        ["relabel", ":", " x", " Label", ":", " pristine"],  # "relabel:" is no Label: field
        ["Lab", "el: f", "alsified", " Label", ":", " pristine"],  # the first field has no slot, the second has
        ["Label", ":", " "],
        ["Rationale", ":", " none"],
        [],
    ]
    for tokens in cases:
        assert label_slot(tokens) == slot_index(Joining(tokens), list(range(len(tokens)))), tokens


def test_structured_answers_have_their_own_slot():
    """``choice``: the whole answer is the label, its first token is the slot. ``json_schema``: the first token
    inside the string value of ``"label"``."""
    top = {"prist": -0.4, "fals": -1.1}
    assert label_slot_score(payload(entry("prist", -0.4, top), entry("ine")), "choice") == pytest.approx(
        two_way(-1.1, -0.4)
    )
    json_tokens = [entry(t) for t in ['{"', "label", '":', ' "']] + [entry("fals", -1.1, top), entry('ified"}')]
    assert label_slot_score(payload(*json_tokens), "json_schema") == pytest.approx(two_way(-1.1, -0.4))
    assert label_slot_score(payload(*json_tokens)) is None  # no free-text Label: field in JSON


def test_logprobs_are_requested_but_are_no_part_of_the_cache_key():
    with FaultInjectingChatServer() as server:
        asking = teacher(server.base_url)
        asking.answer(requests(1))
        not_asking = teacher(server.base_url, top_logprobs=None)
        not_asking.answer(requests(1))
        first, second = (r.body for r in server.requests)
    assert first["logprobs"] is True and first["top_logprobs"] == 20  # the default
    assert "logprobs" not in second and "top_logprobs" not in second
    assert asking.identity() == not_asking.identity() == teacher(server.base_url, top_logprobs=3).identity()


@pytest.mark.parametrize(
    "structured, answer",
    [
        (None, "Check: red vs red yes. Label: falsified. Rationale: the shape differs."),
        ("choice", "falsified"),
        ("json_schema", json.dumps({"label": "pristine", "rationale": "all attributes match"})),
    ],
)
def test_replies_carry_the_score_read_from_the_servers_logprobs(structured, answer):
    with FaultInjectingChatServer(
        answer=answer, logprobs="return", p_falsified=0.3, faults={"item-2.": ["unparsed"]}
    ) as server:
        t = teacher(server.base_url, structured_output=structured, top_logprobs=5, max_concurrency=2)
        replies = t.answer(requests(4))
    assert all(r.error is None for r in replies)
    assert replies[2].text == UNPARSED_ANSWER and replies[2].score is None  # no Label: field: no score
    assert [r.score for i, r in enumerate(replies) if i != 2] == pytest.approx([0.3] * 3)
    assert parse_answer(replies[0].text).status == "ok"


def test_a_server_that_ignores_logprobs_answers_without_scores(caplog):
    """As ``transformers serve`` 5.x: a 200 without a logprobs block. Scores are None, one warning, no retry."""
    with FaultInjectingChatServer(logprobs="ignore") as server:
        t = teacher(server.base_url, max_concurrency=3)
        replies = t.answer(requests(6))
    assert all(r.error is None and r.score is None for r in replies)
    assert (t.usage.requests, t.usage.retries) == (6, 0)
    warned = [r.getMessage() for r in caplog.records if "answered without logprobs" in r.getMessage()]
    assert len(warned) == 1 and server.base_url in warned[0]


def test_a_server_that_refuses_logprobs_is_asked_again_without_them_and_stays_in_rotation(caplog):
    """As ``transformers serve`` before 5.x: 422 for a request with logprobs. Each refused request is sent again at
    once without them, no later request asks for them (in this call or the next), the refusals are no failed
    attempts (the server stays in rotation even with pause_server_after=1), and one warning keeps the reason."""
    with FaultInjectingChatServer(logprobs="refuse", latency=0.05) as server:
        t = teacher(server.base_url, max_concurrency=3, max_retries=0, pause_server_after=1)
        replies = t.answer(requests(9))
        replies += t.answer(requests(3))
        asked = [bool(r.body.get("logprobs")) for r in server.requests]
    assert all(r.error is None and r.score is None and parse_answer(r.text).status == "ok" for r in replies)
    refused = sum(asked)
    assert 1 <= refused <= 3 and asked[:refused] == [True] * refused  # only the first requests in flight asked
    assert len(asked) == 12 + refused and t.usage.requests == len(asked)
    health = t.health[server.base_url]
    assert not health.out and health.failures_in_a_row == 0 and health.logprobs_refused
    warned = [r.getMessage() for r in caplog.records if "refused logprobs" in r.getMessage()]
    assert len(warned) == 1 and f"HTTP 422 (UnprocessableEntityError: {LOGPROBS_REFUSAL})" in warned[0], warned


def test_the_refusal_is_remembered_per_server():
    """Of two servers, the one that refuses logprobs is asked without them; the other still returns scores."""
    with (
        FaultInjectingChatServer(logprobs="refuse", latency=0.02) as refusing,
        FaultInjectingChatServer(logprobs="return", p_falsified=0.8, latency=0.02) as scoring,
    ):
        t = teacher([refusing.base_url, scoring.base_url], max_concurrency=2)
        replies = t.answer(requests(16))
        expected = {r.prompt: None for r in refusing.requests if not r.body.get("logprobs")}  # answered there
        expected |= {r.prompt: pytest.approx(0.8) for r in scoring.requests}
    assert all(r.error is None for r in replies)
    assert [r.score for r in replies] == [expected[q.prompt] for q in requests(16)]
    assert None in expected.values() and len(expected) == 16  # both answered, each item once
