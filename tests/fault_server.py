"""Small real HTTP servers on 127.0.0.1 for testing and benchmarking server teachers: two that run no model, and a
launcher for a real model server.

- ``FaultInjectingChatServer``: a **fake** OpenAI-compatible Chat Completions endpoint that returns a canned answer
  after a fixed latency, and injects faults on request: HTTP 500 / 502 / 503, 429 with ``Retry-After``, 400 with a
  reason (context length), 401, malformed JSON, a 200 whose text is not an answer (``unparsed``), a hang past the
  client's timeout, a connection closed without a response (``drop``), or a full answer trickled out one byte per
  ``trickle_s`` (each byte resets an inactivity timer, so only a bound on the whole attempt stops it); by item, to
  its first requests (``first_faults``) or to all. It goes down as a restarting server does with
  ``refuse_connections(seconds)`` (or after ``down_after`` answers). It records every request it sees and the peak
  number in flight. Asked for logprobs, it ignores the request (``logprobs="ignore"``: a 200 without them, as
  ``transformers serve`` 5.x does), refuses it (``"refuse"``: 422 naming the fields, as ``transformers serve``
  did before 5.x), or returns a made-up block (``"return"``, see ``fake_logprobs``).
- ``CountingProxy``: forwards requests to a real server (e.g. ``transformers serve``) and records which prompts
  were asked, so a test can check that no cached item is requested again.
- ``transformers_serve``: a real ``transformers serve`` (from ``transformers[serving]``) of a model directory on
  CPU, for as long as the ``with`` block runs.

The first two are stdlib ``ThreadingHTTPServer`` s (one thread per connection, HTTP/1.1 keep-alive). Run the fake
server alone with ``python tests/fault_server.py --port 8000 --latency 0.2`` (the throughput benchmark does).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

FAULTS = ("ok", "500", "502", "503", "429", "400", "401", "malformed", "hang", "trickle", "unparsed", "drop")
ERRORS = {  # the HTTP errors a fault answers with, and their messages
    "500": "injected internal error",
    "502": "injected: bad gateway",
    "503": "injected: service unavailable",
    "400": "injected: maximum context length is 4096 tokens, this request has 5012",
    "429": "injected rate limit",
    "401": "injected: invalid API key",
}
UNPARSED_ANSWER = "I am not sure what to say about this image."  # a 200 whose text is not in the answer format
CANNED_ANSWER = "Label: pristine. Rationale: canned answer of the fault-injecting test server."
LOGPROBS_MODES = ("ignore", "refuse", "return")
# What ``transformers serve`` before 5.x answered (422, FastAPI's body) to a request for logprobs.
LOGPROBS_REFUSAL = "Unused fields in the request: {'logprobs', 'top_logprobs'}"
LABEL_WORDS = ("pristine", "falsified")  # spelled out: a test double does not import the code it tests


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not block shutdown
    request_queue_size = 256  # many clients connect at once (the default backlog of 5 drops connections)

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a connection the client or a restart closed: no traceback
            super().handle_error(request, client_address)


def prompt_text(body: dict) -> str:
    """The text parts of a chat-completion request's messages, joined."""
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [c.get("text", "") for c in content or [] if c.get("type") == "text"]
    return "\n".join(parts)


@dataclass
class SeenRequest:
    """One request as the server saw it."""

    prompt: str
    body: dict
    authorization: str | None
    time: float
    fault: str


@dataclass
class FaultScript:
    """Faults to inject, by a tag that appears in the prompt: ``{"item-7": ["500", "429"]}`` fails the first two
    attempts of the item whose prompt contains ``item-7``, then answers. ``first``: the faults of the server's
    first requests, whatever their item (then the tags count). Every other request gets ``default`` (``ok``:
    answered; e.g. ``503``: a server that fails everything)."""

    by_tag: dict[str, list[str]] = field(default_factory=dict)
    default: str = "ok"
    first: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: int = 0

    def __post_init__(self):
        for tag, faults in [*self.by_tag.items(), ("default", [self.default]), ("first", self.first)]:
            bad = [f for f in faults if f not in FAULTS]
            if bad:
                raise ValueError(f"fault script for {tag!r}: unknown fault(s) {bad}; use {FAULTS}")

    def next_fault(self, prompt: str) -> str:
        self.seen += 1
        if self.seen <= len(self.first):
            return self.first[self.seen - 1]
        for tag, faults in self.by_tag.items():
            if tag in prompt:
                n = self.attempts[tag]
                self.attempts[tag] += 1
                return faults[n] if n < len(faults) else "ok"
        return self.default


def fake_tokens(text: str) -> list[str]:
    """``text`` cut into fake tokens that join back to it: punctuation alone, words in pieces of at most five
    letters with the white space before them (``" prist"``, ``"ine"``), like a BPE tokenizer's splits."""
    return re.findall(r"\s*\w{1,5}|\s*[^\w\s]|\s+", text)


def fake_logprobs(text: str, p_falsified: float, top_logprobs: int) -> dict:
    """A ``choices[0].logprobs`` block for ``text``: each token at probability 0.9, with one other made-up
    alternative; a token that begins a label (``" prist"``) shares 0.9 between both labels' beginnings as
    ``p_falsified`` says, so a client reading the label slot right gets exactly ``p_falsified``."""
    content = []
    for token in fake_tokens(text):
        word = token.strip().lower()
        label = next((w for w in LABEL_WORDS if word and w.startswith(word)), None)
        lead = token[: len(token) - len(token.lstrip())]
        if label is None:
            top = [(token, 0.9), (lead + "zz", 0.1)]
        else:
            share = {"falsified": p_falsified, "pristine": 1 - p_falsified}
            top = [(token if w == label else lead + w[: len(word)], 0.9 * share[w]) for w in LABEL_WORDS]
            top.append((lead + "zz", 0.1))
        top = sorted(top, key=lambda t: -t[1])
        entry = dict(_logprob(token, dict(top)[token]), top_logprobs=[_logprob(t, p) for t, p in top[:top_logprobs]])
        content.append(entry)
    return {"content": content}


def _logprob(token: str, p: float) -> dict:
    return {"token": token, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(token.encode())}


class FaultInjectingChatServer:
    """A fake Chat Completions server (no model) with a fixed latency and scripted faults; see the module doc."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        faults: dict[str, list[str]] | None = None,
        retry_after: str = "1",
        hang_s: float = 30.0,
        answer: str = CANNED_ANSWER,
        port: int = 0,
        default_fault: str = "ok",
        trickle_s: float = 0.5,
        logprobs: str = "ignore",
        p_falsified: float = 0.7,
        first_faults: list[str] | None = None,
        down_after: int | None = None,
        down_for_s: float = math.inf,
    ):
        if logprobs not in LOGPROBS_MODES:
            raise ValueError(f"logprobs must be one of {LOGPROBS_MODES}, got {logprobs!r}")
        self.latency, self.retry_after, self.hang_s, self.answer = latency, retry_after, hang_s, answer
        self.trickle_s = trickle_s
        self.logprobs, self.p_falsified = logprobs, p_falsified
        self.script = FaultScript(dict(faults or {}), default=default_fault, first=list(first_faults or []))
        self.down_after, self.down_for_s = down_after, down_for_s  # go down once, after so many answered requests
        self.answered = 0
        self.downs = 0  # times it went down (not counting stop)
        self._connections: set[socket.socket] = set()
        self.requests: list[SeenRequest] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: _Server | None = _Server(("127.0.0.1", port), self._handler())
        self._port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def set_faults(self, faults: dict[str, list[str]], default_fault: str = "ok") -> None:
        """Replace the fault script (attempt counts start again)."""
        with self._lock:
            self.script = FaultScript(dict(faults), default=default_fault)

    def prompts(self) -> list[str]:
        with self._lock:
            return [r.prompt for r in self.requests]

    def _respond(self, body: dict, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        prompt = prompt_text(body)
        with self._lock:
            fault = self.script.next_fault(prompt)
            self.requests.append(SeenRequest(prompt, body, authorization, time.time(), fault))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if fault == "hang":
                self._closing.wait(self.hang_s)
            elif self.latency:
                time.sleep(self.latency)
            if fault == "drop":
                return 0, {}, b""
            if fault in ERRORS:
                headers = {"Retry-After": self.retry_after} if fault == "429" else {}
                return int(fault), headers, json.dumps({"error": {"message": ERRORS[fault]}}).encode()
            if fault == "malformed":
                return 200, {}, b'{"id": "x", "choices": [{"message": {"content": "Label: pris'
            asks_logprobs = bool(body.get("logprobs")) or "top_logprobs" in body
            if asks_logprobs and self.logprobs == "refuse":
                return 422, {}, json.dumps({"detail": LOGPROBS_REFUSAL}).encode()
            text = UNPARSED_ANSWER if fault == "unparsed" else self.answer
            choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
            if asks_logprobs and self.logprobs == "return":
                choice["logprobs"] = fake_logprobs(text, self.p_falsified, body.get("top_logprobs") or 0)
            completion = {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [choice],
                "usage": {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(self.answer.split()),
                    "total_tokens": len(prompt.split()) + len(self.answer.split()),
                },
            }
            return 200, {"X-Trickle": "1"} if fault == "trickle" else {}, json.dumps(completion).encode()
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body wait on a delayed ACK (40 ms a request)

            def setup(self):  # open connections are tracked, to be cut when the server goes down
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self):
                with server._lock:
                    server._connections.discard(self.connection)
                super().finish()

            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, headers, payload = server._respond(body, self.headers.get("Authorization"))
                if status == 0:  # drop: close the connection without a response
                    self.close_connection = True
                    return
                trickle = server.trickle_s if headers.pop("X-Trickle", None) else None
                _send(self, status, headers, payload, trickle_s=trickle)
                if status == 200:
                    with server._lock:
                        server.answered += 1
                        down = server.answered == server.down_after
                    if down:  # from another thread: this handler's own connection is closed too
                        threading.Thread(target=server.refuse_connections, args=(server.down_for_s,)).start()

            def log_message(self, *args):  # quiet: tests and benchmarks count requests themselves
                pass

        return Handler

    def start(self) -> FaultInjectingChatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self.refuse_connections(math.inf)

    def refuse_connections(self, seconds: float) -> None:
        """Go down as a restarting server does: stop listening and close every open connection now (requests in
        flight get no response), refuse connections for ``seconds`` (``inf``: for good), then listen again on the
        same port."""
        with self._lock:
            httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections, self.downs = list(self._connections), self.downs + (not self._closing.is_set())
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if math.isfinite(seconds):
            self._closing.wait(seconds)
            with self._lock:
                if self._closing.is_set():
                    return
                self._httpd = _Server(("127.0.0.1", self._port), self._handler())
                threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self) -> FaultInjectingChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CountingProxy:
    """Forwards every POST to ``upstream`` (a ``.../v1`` URL) and records the prompt of each request it forwards."""

    def __init__(self, upstream: str, *, delay: float = 0.0):
        self.upstream = urlsplit(upstream)
        self.delay = delay
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{self.upstream.path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body wait on a delayed ACK (40 ms a request)

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy.prompts.append(prompt_text(json.loads(raw or b"{}")))
                if proxy.delay:
                    time.sleep(proxy.delay)
                path = proxy.upstream.path.rstrip("/") + self.path[len(proxy.upstream.path.rstrip("/")) :]
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=300)
                try:
                    conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    _send(self, response.status, {}, response.read())
                finally:
                    conn.close()

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self) -> CountingProxy:
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """End a server started with ``start_new_session=True`` and everything it started: SIGTERM to its process group,
    SIGKILL if it has not ended ``timeout`` seconds later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def transformers_serve(model_dir: str | Path, log_file: str | Path, *, start_timeout: float = 120) -> Iterator[str]:
    """Run ``transformers serve`` on ``model_dir`` (CPU, 127.0.0.1, offline) and yield its ``.../v1`` URL once
    ``/health`` answers; it is stopped when the block ends. Its output goes to ``log_file``; a server that does
    not start raises RuntimeError with the log's tail. Requests name the model by ``str(model_dir)``."""
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    cmd = [str(cli), "serve", str(model_dir), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + start_timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    tail = Path(log_file).read_text()[-3000:]
                    raise RuntimeError(f"`transformers serve` did not start:\n{tail}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    headers: dict[str, str],
    payload: bytes,
    *,
    trickle_s: float | None = None,
) -> None:
    """Write one response; with ``trickle_s``, the body goes out one byte every ``trickle_s`` seconds."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        if trickle_s is None:
            handler.wfile.write(payload)
            return
        for i in range(len(payload)):
            handler.wfile.write(payload[i : i + 1])
            handler.wfile.flush()
            time.sleep(trickle_s)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to answer
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Chat Completions server (no model) until killed.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds before each answer")
    args = parser.parse_args()
    server = FaultInjectingChatServer(latency=args.latency, port=args.port)
    print(server.base_url, flush=True)
    server._httpd.serve_forever()  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
