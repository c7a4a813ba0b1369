"""Servers that fail, against real HTTP servers on 127.0.0.1 (``tests/fault_server.py``): the circuit breaker pauses
a failing server and probes it, the last server standing is waited for within ``give_up_after_s``, and a dead or
all-failing server still stops the run within a bounded number of requests. The breaker's settings are sub-second
here so that each test takes about a second."""

from __future__ import annotations

import time

import pytest
from fault_server import FaultInjectingChatServer
from test_openai_compat import requests, teacher

from mmkd.inference.base import BackendStopped
from mmkd.labelling.server.circuit import cooldown
from mmkd.parsing import parse_answer

FAST = {"pause_s": 0.05, "max_pause_s": 0.2}  # the breaker's cool-downs, small for the tests


def attempts_per_item(server: FaultInjectingChatServer, n: int) -> list[int]:
    """How many requests for each of the ``n`` items reached ``server`` (the tags end with a full stop)."""
    return [sum(f"item-{i}." in r.prompt for r in server.requests) for i in range(n)]


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_the_cool_down_doubles_with_each_pause_up_to_its_cap():
    assert [cooldown(k, 0.5, 4.0) for k in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert cooldown(10_000, 5.0, 60.0) == 60.0  # no overflow however long it stays down


# A mix of faults on the first one or two attempts of nearly every item; the first four fail at once (no 429, which
# is not held against a server, no stall), so with pause_server_after: 4 the only server is paused at once.
MIX = [["500"], ["502"], ["503"], ["malformed"], ["hang"], ["drop"], ["500", "503"], ["drop", "malformed"]]
MIX += [["429"], ["hang", "502"], ["429", "500"], []] * 4 + [["503"], ["drop"], ["malformed", "429"], ["502"]]


def test_a_flaky_last_server_answers_every_item_within_the_retry_budget(caplog):
    """One server fails the first one or two attempts of 24 of 28 items (429 with Retry-After, 500/502/503,
    malformed 200s, stalls past the timeout, dropped connections). It is paused, probed and put back, never
    dropped: every item is answered within its budget."""
    faults = {f"item-{i}.": fault for i, fault in enumerate(MIX) if fault}
    caplog.set_level("INFO", logger="mmkd.labelling.server.dispatch")
    with FaultInjectingChatServer(faults=faults, retry_after="0.05", hang_s=2) as server:
        settings = {"max_retries": 3, "timeout": 0.5, "give_up_after_s": 5, "pause_server_after": 4} | FAST
        t = teacher(server.base_url, max_concurrency=8, **settings)
        replies = t.answer(requests(len(MIX)))
        per_item = attempts_per_item(server, len(MIX))
    assert all(r.error is None and parse_answer(r.text).status == "ok" for r in replies), replies
    # each fault costs one attempt (a slow host may add a timeout), never more than max_retries + 1 in all
    assert all(len(fault) + 1 <= n <= 4 for n, fault in zip(per_item, MIX, strict=True)), per_item
    # a request the client timed out before the loaded host's server read it is counted by the client alone
    assert sum(per_item) <= t.usage.requests <= 4 * len(MIX) and t.usage.retries == t.usage.requests - len(MIX)
    paused, back = messages(caplog, "is paused"), messages(caplog, "back in rotation")
    assert len(paused) >= 1 and "its items wait for it" in paused[0] and len(back) == len(paused)
    assert not t.health[server.base_url].out and t.health[server.base_url].in_rotation


def test_a_server_down_for_less_than_the_window_answers_every_item(caplog):
    """A restart: after 6 answers the server drops its connections and refuses new ones for 0.6 s, then listens
    again. The items wait for it (one probe per cool-down), and every one is answered within its budget."""
    caplog.set_level("INFO", logger="mmkd.labelling.server.dispatch")
    with FaultInjectingChatServer(latency=0.01, down_after=6, down_for_s=0.6) as server:
        t = teacher(server.base_url, max_concurrency=4, max_retries=5, timeout=0.5, give_up_after_s=2, **FAST)
        replies = t.answer(requests(40))
        per_item = attempts_per_item(server, 40)
    assert all(r.error is None and parse_answer(r.text).status == "ok" for r in replies), replies
    assert server.downs == 1 and max(per_item) <= 6
    refused = t.usage.requests - len(server.requests)  # attempts that never reached it
    probes = len(messages(caplog, "probing"))
    # the burst, the probes, and twice the in-flight 4: those that fail as it goes down, and as many again that fail
    # before a reply already being written when it went down arrives and resets the count (a loaded host)
    assert 1 <= probes and refused <= t.config.pause_server_after + 2 * 4 + probes
    assert len(messages(caplog, "is paused")) == 1 and len(messages(caplog, "back in rotation")) == 1


def test_a_server_down_for_longer_than_the_window_stops_the_run_naming_it(caplog):
    """The same restart that does not end: the run gives up 0.6 s after the first failure, with the window and the
    last error in the message; the items waiting become errors that say so, and the next call sends nothing."""
    caplog.set_level("INFO", logger="mmkd.labelling.server.dispatch")
    with FaultInjectingChatServer(latency=0.01, down_after=4) as server:
        t = teacher(server.base_url, max_concurrency=4, max_retries=5, timeout=0.3, give_up_after_s=0.6, **FAST)
        got = []
        with pytest.raises(BackendStopped, match=r"no server answered successfully for 0.6 s \(give_up_after_s") as e:
            t.answer(requests(40), got.append)
        assert "connection failed" in str(e.value)
        sent = t.usage.requests
        with pytest.raises(BackendStopped):
            t.answer(requests(40))
        assert t.usage.requests == sent
    answered = [r for r in got if r.error is None]
    assert len(answered) >= 4 and all("no server answered for 0.6 s" in r.error for r in got if r.error)
    probes = len(messages(caplog, "probing"))
    # in flight twice (as above: a late reply resets the count of failures in a row), the burst, the probes
    assert sent <= len(answered) + 2 * 4 + t.config.pause_server_after + probes
    assert probes <= 1 + sum(cooldown(k, 0.05, 0.2) <= 0.6 for k in range(1, 20))


def test_a_flaky_server_among_healthy_ones_is_paused_then_used_again(caplog):
    """Two servers; one answers 503 to its first 8 requests. While it is paused the healthy one takes its items,
    and after one successful probe it serves again."""
    caplog.set_level("INFO", logger="mmkd.labelling.server.dispatch")
    with (
        FaultInjectingChatServer(latency=0.02) as healthy,
        FaultInjectingChatServer(latency=0.02, first_faults=["503"] * 8) as flaky,
    ):
        t = teacher([healthy.base_url, flaky.base_url], max_concurrency=2, max_retries=2, pause_s=0.1)
        replies = t.answer(requests(80))
        failed, served = flaky.requests[:8], flaky.requests[8:]
        # the pause: the longest gap between two of its requests (one sent before the pause may follow the 8th)
        pairs = zip(flaky.requests[7:], served, strict=False)
        paused_at, probed_at = max(pairs, key=lambda ab: ab[1].time - ab[0].time)
        during = [r for r in healthy.requests if paused_at.time < r.time < probed_at.time]
        per_item = [a + b for a, b in zip(attempts_per_item(healthy, 80), attempts_per_item(flaky, 80), strict=True)]
    assert all(r.error is None and parse_answer(r.text).status == "ok" for r in replies), replies
    assert [r.fault for r in failed] == ["503"] * 8 and len(served) >= 5  # used again after its probe
    assert probed_at.time - paused_at.time >= 0.09 and len(during) >= 2  # paused for pause_s, the healthy one went on
    assert max(per_item) <= 2  # a failed attempt was retried at once on the healthy server
    assert (
        len(messages(caplog, "is paused")) == 1 and "1 other server(s) take its items" in messages(caplog, "paused")[0]
    )
    assert len(messages(caplog, "probing")) == 1 and len(messages(caplog, "back in rotation")) == 1
    assert t.health[flaky.base_url].in_rotation


def test_an_all_failing_server_is_probed_ever_more_rarely_until_the_window_ends(caplog):
    """A server that answers 500 to everything: the burst that pauses it, then one probe per cool-down (doubling),
    and the run stops when the window ends, naming it and the server's reason."""
    caplog.set_level("INFO", logger="mmkd.labelling.server.dispatch")
    with FaultInjectingChatServer(default_fault="500") as server:
        t = teacher(server.base_url, max_concurrency=4, max_retries=3, timeout=1, give_up_after_s=1, **FAST)
        with pytest.raises(BackendStopped, match=r"for 1 s \(give_up_after_s: 1\); last error: .*HTTP 500"):
            t.answer(requests(300))
        sent = len(server.requests)
    probes = len(messages(caplog, "probing"))
    ends = sum(sum(cooldown(j, 0.05, 0.2) for j in range(1, k + 1)) <= 1 for k in range(1, 20))
    assert 2 <= probes <= ends + 1 and sent <= t.config.pause_server_after + 4 + probes
    assert len(messages(caplog, "failed its probe")) == probes


def test_a_server_that_is_down_gives_errors_not_a_crash():
    with FaultInjectingChatServer() as server:
        url = server.base_url  # then closed: nothing listens on that port any more
    replies = teacher(url, max_retries=0, timeout=1).answer(requests(3))
    assert all(r.text is None and "connection failed" in r.error for r in replies)


def test_items_on_a_dead_or_failing_server_are_answered_by_the_healthy_ones(caplog):
    """Three servers: one with nothing listening, one answering 503 to everything, one healthy. Every item is
    answered, within max_retries + 1 attempts; the dead server is taken out of rotation and the failing one paused,
    each with one warning."""
    with FaultInjectingChatServer() as gone:
        dead_url = gone.base_url  # closed: connections are refused
    with (
        FaultInjectingChatServer(default_fault="503") as failing,
        FaultInjectingChatServer(latency=0.02) as healthy,
    ):
        # a pause longer than the run: the failing server gets no probe, so the bound below is exact
        t = teacher([dead_url, failing.base_url, healthy.base_url], max_concurrency=4, max_retries=2, pause_s=10)
        replies = t.answer(requests(60))
        assert all(r.error is None and parse_answer(r.text).status == "ok" for r in replies), replies
        assert len(healthy.requests) == 60  # every item was answered there in the end
        assert len(failing.requests) <= t.config.pause_server_after + 4  # then it got no more (4 in flight)
        # each item: at most max_retries + 1 attempts over the three servers (the dead one saw nothing: refused)
        per_item = {}
        for seen in failing.requests + healthy.requests:
            per_item[seen.prompt] = per_item.get(seen.prompt, 0) + 1
        assert max(per_item.values()) <= 3
    assert t.usage.requests <= 60 + len(failing.requests) + 2 + 4  # + the refused attempts on the dead server
    out = [r.getMessage() for r in caplog.records if "taken out of rotation" in r.getMessage()]
    paused = [r.getMessage() for r in caplog.records if "is paused" in r.getMessage()]
    assert len(out) == 1 and dead_url in out[0], out  # nothing listens there: out for the run
    assert len(paused) == 1 and failing.base_url in paused[0] and "HTTP 503" in paused[0], paused  # then a probe
    assert t.health[dead_url].out and t.health[failing.base_url].paused and not t.health[failing.base_url].out
    assert t.health[healthy.base_url].in_rotation


def test_an_all_failing_server_stops_the_run_after_a_bounded_number_of_requests_across_calls():
    """Against a server that answers 500 to everything, the run stops when the window ends (shorter here than the
    first pause, so no probe) after about pause_server_after requests (plus those in flight), not one retry budget
    per item, and later calls (the next chunk, split) send none."""
    with FaultInjectingChatServer(default_fault="500") as server:
        t = teacher(server.base_url, max_concurrency=4, max_retries=3, timeout=1, give_up_after_s=1, pause_s=5)
        got = []
        with pytest.raises(BackendStopped, match=r"no server answered successfully for 1 s .*HTTP 500"):
            t.answer(requests(300), got.append)
        sent_first = len(server.requests)
        with pytest.raises(BackendStopped):
            t.answer(requests(300))
        assert len(server.requests) == sent_first <= t.config.pause_server_after + 4
    assert got and all(r.error and "injected internal error" in r.error for r in got)


def test_a_refused_connection_stops_the_run_at_once_with_a_clear_message():
    with FaultInjectingChatServer() as gone:
        url = gone.base_url
    t = teacher(url, max_concurrency=8, max_retries=5)
    start = time.monotonic()
    with pytest.raises(BackendStopped, match=r"no server responded .*connection failed.*Is the server running"):
        t.answer(requests(500))
    assert time.monotonic() - start < 5
    assert t.usage.requests <= 2 + 8


def test_a_server_that_refuses_the_key_is_taken_out_and_the_others_answer(caplog):
    with (
        FaultInjectingChatServer(default_fault="401") as refusing,
        FaultInjectingChatServer(latency=0.01) as healthy,
    ):
        t = teacher([refusing.base_url, healthy.base_url], max_concurrency=2, max_retries=1)
        replies = t.answer(requests(10))
    assert all(r.error is None for r in replies)
    assert 1 <= len(refusing.requests) <= 2 and len(healthy.requests) == 10
    assert any("refused the request (HTTP 401" in r.getMessage() for r in caplog.records)


def test_a_server_that_only_times_out_is_not_taken_for_an_absent_one():
    """Timeouts before any reply (a busy server, a model still warming up) get the full pause_server_after count,
    not the fast drop of a server that refuses connections."""
    with FaultInjectingChatServer(default_fault="hang", hang_s=5) as server:
        t = teacher(server.base_url, max_concurrency=2, timeout=0.3, max_retries=1, pause_server_after=8)
        replies = t.answer(requests(3))
        assert len(server.requests) == 6  # every item got both its attempts
    assert all("timed out" in r.error and "after 2 attempt(s)" in r.error for r in replies)
    assert not t.health[server.base_url].out
