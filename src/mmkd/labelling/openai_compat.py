"""A teacher behind any OpenAI-compatible Chat Completions server (vLLM, SGLang, TGI, ``transformers serve``, a
hosted API), called through the official ``openai`` SDK.

Requests are asynchronous and bounded: each server gets ``max_concurrency`` workers that pull items, one at a
time, from one stream (a generator: items are read and encoded only when a worker is free), so several servers (a
list of base URLs) share the work by speed and a slow request never idles the others.

Faults: 408/409/429/5xx, timeouts, connection errors and 200s that are not a chat completion are retried, in one
budget of at most ``max_retries + 1`` attempts per item in all. A failed attempt is retried at once on another
server in rotation when there is one, else on the same server after the SDK's backoff (``Retry-After`` honoured).
``timeout`` bounds each whole attempt, however slowly a server sends its bytes. A server that fails
``drop_server_after`` attempts in a row (2 refused connections when it never sent an HTTP response) is taken out of
rotation for the run, with a warning; when none is left, ``BackendStopped`` says why and the items not sent are
not asked. An item that fails everywhere comes back as an error reply that keeps the server's own reason, and
the other items go on. Errors that concern the configuration rather than an item (bad key, unknown model or
URL) stop the run with a message.

Scores: with ``top_logprobs`` set, every request asks for logprobs, and a reply's ``score`` is P(falsified) read
off them at the answer's label slot, as mmkd.scoring defines it for a local model (``label_slot_score``). A server
that refuses logprobs (a 400/422 that names them, as ``transformers serve`` did before 5.x) is asked again at once
without, and not asked for them again in the run: a warning once, no failed attempt, scores None. A server that
ignores them (``transformers serve`` 5.x answers 200 without a ``logprobs`` block) gives scores None, with a
warning once. Logprobs do not change the answer text, so they are not part of ``identity()`` (the cache key).

The API key is read from the environment variable *named* by ``api_key_env``; the key itself is never in params,
logs, outputs or metrics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import heapq
import io
import itertools
import json
import logging
import math
import mimetypes
import os
import random
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import openai

from mmkd.inference.base import BackendStopped, BackendUsage, InferenceReply, InferenceRequest, ReplyCallback
from mmkd.parsing import format_answer
from mmkd.schema import FALSIFIED, LABELS, PRISTINE

log = logging.getLogger(__name__)

# Structured output, for servers that support it. ``json_schema``: the standard ``response_format`` with the answer
# schema below (vLLM, SGLang, TGI, OpenAI); the JSON reply is rewritten into the answer format that mmkd.parsing
# reads. ``choice``: vLLM's choice over the labels (an answer without rationale), in the request field named by
# ``structured_outputs_field`` (see CHOICE_FIELDS).
STRUCTURED_OUTPUTS = ("json_schema", "choice")
# Where a ``choice`` request puts the labels. ``structured_outputs``: ``{"structured_outputs": {"choice": [...]}}``,
# vLLM's field since 0.10.2 and its only one since 0.12 (which drops ``guided_choice`` with a warning and answers
# unconstrained). ``guided``: ``{"guided_choice": [...]}``, for vLLM before 0.10.2.
CHOICE_FIELDS = ("structured_outputs", "guided")
ANSWER_JSON_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": list(LABELS)}, "rationale": {"type": "string"}},
    "required": ["label", "rationale"],
    "additionalProperties": False,
}

# The label slot (see mmkd.scoring): where the first token of the label's value is, by the text before it. Free text:
# after the first ``Label:`` field (the same pattern as mmkd.scoring, which a test checks; white space after the
# colon keeps the slot). ``json_schema``: inside the JSON string of ``"label"``. ``choice``: the whole answer is the
# label, so its first token that is not white space. Group 1 spans the text that may end the prefix before the slot.
LABEL_SLOTS = {
    None: re.compile(r"\blabel\s*:(\s*)", re.IGNORECASE),
    "json_schema": re.compile(r'"label"\s*:\s*"()'),
    "choice": re.compile(r"^(\s*)"),
}
MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit, and vLLM's default --max-logprobs

# A server that has sent no HTTP response at all in this run is taken out of rotation after this many failed attempts
# in a row (at most ``drop_server_after``): nothing listens there, and a run against it should stop in seconds.
DROP_SILENT_SERVER_AFTER = 2
# Retry waits, as the openai SDK's own: exponential from 0.5 s up to 8 s, less 0-25 % jitter; a server's
# Retry-After is honoured up to 60 s.
INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, MAX_RETRY_AFTER = 0.5, 8.0, 60.0


@dataclass
class OpenAICompatConfig:
    """Settings of one teacher behind an OpenAI-compatible server.

    model: the model name the server knows (vLLM: the HF id it serves, or ``--served-model-name``).
    base_url: the server's ``.../v1`` URL, or a list of them: items are shared among the servers.
    api_key_env: the *name* of the environment variable that holds the API key; null for servers without auth.
    revision: which weights the server runs (e.g. the HF commit); part of the cache key, so new weights re-ask.
    max_concurrency: requests in flight per server.
    timeout: seconds one attempt may take, from sending the request to the last byte of the reply.
    max_retries: further attempts per item after the first, on any server (at most ``max_retries + 1`` in all).
    drop_server_after: failed attempts in a row (5xx, timeouts, connection errors, malformed replies; not 429)
        after which a server is taken out of rotation for the rest of the run.
    temperature, top_p, seed, max_tokens: sampling; part of the cache key.
    structured_output: null, ``json_schema`` or ``choice`` (see STRUCTURED_OUTPUTS).
    structured_outputs_field: the request field of ``choice``: ``structured_outputs`` (vLLM >= 0.10.2) or ``guided``
        (``guided_choice``, older vLLM); see CHOICE_FIELDS. Part of the cache key.
    top_logprobs: alternatives per token to ask for (0 to 20) to read the score from (see ``label_slot_score``);
        null: ask for no logprobs, scores are None. Not part of the cache key (logprobs do not change the text).
    extra_body: other server-specific request fields, sent as they are (part of the cache key).
    price_per_million_prompt_tokens / _completion_tokens: optional prices; metrics then report the cost.
    """

    model: str
    base_url: str | list[str]
    api_key_env: str | None = None
    revision: str | None = None
    max_concurrency: int = 16
    timeout: float = 120.0
    max_retries: int = 5
    drop_server_after: int = 8
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    structured_output: str | None = None
    structured_outputs_field: str = "structured_outputs"
    top_logprobs: int | None = 20
    extra_body: dict = field(default_factory=dict)
    price_per_million_prompt_tokens: float | None = None
    price_per_million_completion_tokens: float | None = None

    def __post_init__(self):
        self.base_urls: list[str] = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        if not self.base_urls or not all(isinstance(u, str) and u for u in self.base_urls):
            raise ValueError(f"base_url must be a URL or a non-empty list of URLs, got {self.base_url!r}")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.max_tokens < 1:
            raise ValueError(
                "need max_concurrency >= 1, max_retries >= 0, timeout > 0 and max_tokens >= 1, got "
                f"{self.max_concurrency}, {self.max_retries}, {self.timeout}, {self.max_tokens}"
            )
        if self.drop_server_after < 1:
            raise ValueError(f"drop_server_after must be >= 1 failed attempts, got {self.drop_server_after}")
        if self.structured_output not in (None, *STRUCTURED_OUTPUTS):
            raise ValueError(f"structured_output must be null or one of {STRUCTURED_OUTPUTS}")
        if self.structured_outputs_field not in CHOICE_FIELDS:
            raise ValueError(
                f"structured_outputs_field must be one of {CHOICE_FIELDS}, got {self.structured_outputs_field!r}"
            )
        top = self.top_logprobs
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise ValueError(f"top_logprobs must be null or an integer from 0 to {MAX_TOP_LOGPROBS}, got {top!r}")
        if self.api_key_env is not None and not is_variable_name(self.api_key_env):
            # never echo the value: it may be the key itself
            raise ValueError(
                "api_key_env must be the *name* of an environment variable: upper-case letters, digits and _, "
                f"like VLLM_API_KEY; got a value of {len(str(self.api_key_env))} characters that is not one "
                "(if it is your key, remove it from the config and rotate it)"
            )

    def request_fields(self) -> dict:
        """The fields of every chat-completion request besides the messages (sampling and structured output)."""
        fields = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.seed is not None:
            fields["seed"] = self.seed
        extra = dict(self.extra_body)
        if self.structured_output == "json_schema":
            fields["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "mmkd_answer", "schema": ANSWER_JSON_SCHEMA, "strict": True},
            }
        elif self.structured_output == "choice" and self.structured_outputs_field == "guided":
            extra["guided_choice"] = list(LABELS)
        elif self.structured_output == "choice":  # kept beside other options given in extra_body (e.g. a backend)
            extra["structured_outputs"] = {**extra.get("structured_outputs", {}), "choice": list(LABELS)}
        if extra:
            fields["extra_body"] = extra
        return fields


class ConfigError(RuntimeError):
    """The server refused the teacher's configuration (key, model name, URL): no item can succeed."""


class MalformedReply(Exception):
    """The server answered 200 with something that is not a chat completion."""


@dataclass
class ServerHealth:
    """One base URL's record in this run; it persists across ``answer`` calls (splits), so a server taken out
    stays out for the whole run."""

    url: str
    answered: int = 0  # attempts it answered (any HTTP answer that is not a server fault)
    responded: bool = False  # it sent any HTTP response at all (so something listens there)
    failures_in_a_row: int = 0
    unreachable_in_a_row: int = 0  # of those, connection errors (refused, unknown host): not timeouts
    last_fault: str = ""
    out: bool = False  # taken out of rotation
    logprobs_refused: bool = False  # it refused a request for logprobs: it is not asked for them again
    logprobs_missing: bool = False  # it answered a request for logprobs without them (warned once)


@dataclass
class _Job:
    """One item on its way through the servers: the attempts it has spent and the last fault it met."""

    request: InferenceRequest
    position: int  # in the request order
    attempts: int = 0
    servers: list[str] = field(default_factory=list)  # where each attempt went, in order
    fault: str = ""  # the last failed attempt, described
    retry_after: float | None = None  # what the server that failed asked for (Retry-After)


class OpenAICompatBackend:
    """Asks an OpenAI-compatible server, concurrently and with retries; see the module docstring."""

    def __init__(self, config: OpenAICompatConfig, name: str = "openai"):
        self.config = config
        self.name = name
        self.usage = BackendUsage(prompt_tokens=0, completion_tokens=0)
        self.health = {url: ServerHealth(url) for url in config.base_urls}
        self.stopped: str | None = None  # why no server can be asked any more in this run
        self._warned_unconstrained = False  # a choice answer that is not a label was seen (warned once)
        self._items_sent = 0
        # httpx2 logs every request at INFO: one line per item of a 70k-item run. Failures are logged here instead.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        if config.api_key_env is None:
            self._api_key = "EMPTY"  # vLLM and friends accept any key when started without --api-key
        else:
            self._api_key = os.environ.get(config.api_key_env, "")
            if not self._api_key:
                raise ValueError(
                    f"teacher {name!r}: the environment variable {config.api_key_env} (api_key_env) is not set; "
                    f"export {config.api_key_env}=<your key> before labelling (the key never goes into params)"
                )

    def identity(self) -> dict:
        # Not top_logprobs: it changes the reply's score, never its text, and the cache keeps the text.
        return {"backend": "openai", "revision": self.config.revision, **self.config.request_fields()}

    def answer(
        self, requests: Iterable[InferenceRequest], on_reply: ReplyCallback | None = None
    ) -> list[InferenceReply]:
        """Replies to ``requests``, in request order. ``requests`` may be a generator: it is pulled one request at
        a time, whenever a worker is free, so a slow request never holds up the others.

        Raises ``BackendStopped`` when every server is out of rotation: the replies so far went to ``on_reply``,
        and the requests not yet taken were not sent (``stopped`` says why)."""
        if self.stopped is not None:
            raise BackendStopped(self.stopped)
        return asyncio.run(_Dispatch(self, iter(requests), on_reply).run())

    def client(self, url: str) -> openai.AsyncOpenAI:
        """An SDK client for one server, without SDK retries: retries are routed by ``_Dispatch``, across servers,
        in one budget per item."""

        async def count_request(request) -> None:  # every HTTP attempt
            self.usage.requests += 1

        return openai.AsyncOpenAI(
            base_url=url,
            api_key=self._api_key,
            max_retries=0,
            timeout=self.config.timeout,
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_request]}),
        )

    async def attempt(self, client: openai.AsyncOpenAI, server: ServerHealth, job: _Job) -> InferenceReply | None:
        """One HTTP attempt of ``job`` on ``server``: the reply (an answer, or an error that retrying cannot mend),
        or None when the attempt failed in a way worth retrying elsewhere or later (``job.fault`` says how)."""
        if job.attempts == 0:
            self._items_sent += 1
        job.attempts += 1
        job.servers.append(server.url)
        job.retry_after = None
        try:
            payload = await self.post(client, server, job.request)
            text = self._text(payload)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
            raise ConfigError(
                f"teacher {self.name!r}: {server.url} refused the request ({_describe(exc)}); check base_url, model "
                f"and the key in ${self.config.api_key_env or '<api_key_env not set>'}. Answers so far are cached."
            ) from None
        except openai.APIStatusError as exc:
            server.responded, server.unreachable_in_a_row = True, 0
            job.fault = _describe(exc)
            if not _retryable(exc):  # e.g. 400 "maximum context length exceeded": the item's fault, not the server's
                server.answered += 1
                server.failures_in_a_row = 0
                return self.failed(job)
            job.retry_after = _retry_after(exc.response.headers)
            if exc.status_code == 429:  # busy, not broken: back off, but it is not counted against the server
                return None
        except (TimeoutError, openai.APITimeoutError):  # a busy server is slow, not absent: no fast drop
            job.fault = f"timed out (no complete reply within timeout={self.config.timeout:g} s)"
            server.unreachable_in_a_row = 0
        except openai.APIConnectionError as exc:
            job.fault = f"connection failed ({_cause(exc)})"
            server.unreachable_in_a_row += 1
        except (MalformedReply, openai.APIResponseValidationError, ValueError) as exc:  # ValueError: bad JSON
            server.responded, server.unreachable_in_a_row = True, 0
            job.fault = _describe(exc)
        else:
            server.responded, server.unreachable_in_a_row = True, 0
            server.answered += 1
            server.failures_in_a_row = 0
            usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
            prompt_tokens, completion_tokens = (
                _count(usage.get("prompt_tokens")),
                _count(usage.get("completion_tokens")),
            )
            self.usage.add_tokens(prompt_tokens, completion_tokens)
            return InferenceReply(
                item_id=job.request.item_id,
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                score=self._score(server, payload),
            )
        server.failures_in_a_row += 1
        server.last_fault = job.fault
        return None

    async def post(self, client: openai.AsyncOpenAI, server: ServerHealth, request: InferenceRequest) -> object:
        """The JSON reply to one request. When the server refuses logprobs it is asked again at once without them,
        and from then on never asked for them (one warning): a refusal is no failed attempt."""
        while True:
            logprobs = self.config.top_logprobs is not None and not server.logprobs_refused
            try:
                async with asyncio.timeout(self.config.timeout):  # the whole attempt, however slowly the bytes come
                    # The SDK's documented call for raw requests: the body is sent as built here, and the reply is
                    # read as JSON here (the typed ``chat.completions.create`` spends a millisecond per request on
                    # walking the base64 image through its type transforms, the client's main CPU cost at high load).
                    response = await client.post(
                        "/chat/completions", cast_to=httpx2.Response, body=_body(request, self.config, logprobs)
                    )
                    return response.json()
            except openai.APIStatusError as exc:
                if not (logprobs and _refuses_logprobs(exc)):
                    raise
                if not server.logprobs_refused:  # requests in flight may all be refused: warn once
                    server.logprobs_refused = True
                    log.warning(
                        "teacher %r: %s refused logprobs (%s); asking it without them for the rest of the run, so "
                        "its answers have no score",
                        self.name,
                        server.url,
                        _describe(exc),
                    )

    def _score(self, server: ServerHealth, payload: dict) -> float | None:
        """The reply's score from its logprobs, or None (asked for none, or none came: warned once per server)."""
        if self.config.top_logprobs is None or server.logprobs_refused:
            return None
        logprobs = payload["choices"][0].get("logprobs")
        if logprobs is None and not server.logprobs_missing:
            server.logprobs_missing = True
            log.warning(
                "teacher %r: %s answered without logprobs (it ignores the request for them, as `transformers "
                "serve` does); its answers have no score",
                self.name,
                server.url,
            )
        return label_slot_score(logprobs, self.config.structured_output)

    def failed(self, job: _Job, why: str | None = None) -> InferenceReply:
        """The error reply of an item that will not be asked again in this run."""
        where = job.servers[-1] if len(set(job.servers)) == 1 else f"{len(set(job.servers))} servers"
        error = (
            f"teacher {self.name!r} at {where}: {job.fault} after {job.attempts} attempt(s)"
            f"{f' ({why})' if why else ''}; re-run labelling to retry the failed items only (answers are cached)"
        )
        log.debug("item %r: %s", job.request.item_id, error)
        return InferenceReply(item_id=job.request.item_id, error=error)

    def drop_after(self, server: ServerHealth) -> int:
        """Failed attempts in a row that take a server out of rotation: fewer when no HTTP response ever came from
        it and its last attempts could not connect (nothing listens there: refused, or an unknown host); a server
        that only timed out so far may be busy (a large model still warming up), so it gets the full count."""
        limit = self.config.drop_server_after
        if not server.responded and server.unreachable_in_a_row >= DROP_SILENT_SERVER_AFTER:
            return min(limit, DROP_SILENT_SERVER_AFTER)
        return limit

    def stop_reason(self) -> str:
        detail = "; ".join(f"{h.url}: {h.last_fault}" for h in self.health.values())
        if not any(h.responded or h.unreachable_in_a_row == 0 for h in self.health.values()):
            return (
                f"teacher {self.name!r}: no server responded ({detail}). Is the server running, and is base_url "
                "right? The items not sent are recorded as errors; re-run when it is up (answers so far are cached)"
            )
        return (
            f"teacher {self.name!r}: every server was taken out of rotation after failing "
            f"{self.config.drop_server_after} attempts in a row ({detail}). The items not sent are recorded as "
            "errors; re-run when the servers are healthy (answers so far are cached)"
        )

    def _text(self, payload: object) -> str:
        try:
            text = payload["choices"][0]["message"]["content"]  # type: ignore[index]
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise MalformedReply(f"malformed reply: not a chat completion ({type(exc).__name__})") from None
        if not isinstance(text, str):
            raise MalformedReply("malformed reply: no text content in the first choice")
        if self.config.structured_output == "choice" and text.strip() not in LABELS and not self._warned_unconstrained:
            self._warned_unconstrained = True  # e.g. vLLM >= 0.12 asked with guided_choice: warn once, keep going
            other = next(f for f in CHOICE_FIELDS if f != self.config.structured_outputs_field)
            log.warning(
                "teacher %r: a structured_output: choice answer is not one of the labels (%r): the server did not "
                "constrain it to the labels; if it is vLLM, try structured_outputs_field: %s",
                self.name,
                text[:80],
                other,
            )
        return structured_to_answer(text.strip(), self.config.structured_output)  # stripped, as the local backend


class _Dispatch:
    """One ``answer`` call: ``max_concurrency`` workers per server in rotation pull items from one stream; an
    attempt that fails is retried on another server in rotation (at once) or, with only one left, on the same
    one after a backoff; each item spends at most ``max_retries + 1`` attempts in all. A server that fails
    ``drop_server_after`` attempts in a row is taken out of rotation, and its waiting retries go to the others."""

    def __init__(self, backend: OpenAICompatBackend, source: Iterator[InferenceRequest], on_reply):
        self.backend, self.config, self.source, self.on_reply = backend, backend.config, source, on_reply
        self.servers = [h for h in backend.health.values() if not h.out]
        self.clients = {h.url: backend.client(h.url) for h in self.servers}
        self.retries: dict[str, list[tuple[float, int, _Job]]] = {h.url: [] for h in self.servers}  # heaps
        self.replies: dict[int, InferenceReply] = {}
        self.taken = 0  # requests taken from the source
        self.exhausted = False
        self.fatal: BaseException | None = None
        self.wake = asyncio.Event()
        self.order = itertools.count()

    async def run(self) -> list[InferenceReply]:
        try:
            workers = [self.worker(h) for h in self.servers for _ in range(self.config.max_concurrency)]
            await asyncio.gather(*workers)
        finally:
            for client in self.clients.values():
                await client.close()
            self.backend.usage.retries = self.backend.usage.requests - self.backend._items_sent
        if self.fatal is not None:
            raise self.fatal
        if not self.exhausted or len(self.replies) < self.taken:
            self.backend.stopped = self.backend.stop_reason()
            log.error("%s", self.backend.stopped)
            raise BackendStopped(self.backend.stopped)
        return [self.replies[i] for i in range(self.taken)]

    def changed(self) -> None:
        """Wake every idle worker (each waits on the event it saw; later waiters get a fresh one)."""
        self.wake.set()
        self.wake = asyncio.Event()

    def reply(self, job: _Job, reply: InferenceReply) -> None:
        self.replies[job.position] = reply
        self.changed()
        if self.on_reply is not None:
            self.on_reply(reply)

    def take(self, server: ServerHealth) -> tuple[_Job | None, float | None]:
        """The next job for ``server``: a retry that is due, else a new item; else None and how long until one of
        its retries is due (None: until something changes)."""
        heap, now = self.retries[server.url], time.monotonic()
        if heap and heap[0][0] <= now:
            return heapq.heappop(heap)[2], None
        if not self.exhausted:
            try:
                request = next(self.source)
            except StopIteration:
                self.exhausted = True
                self.changed()
            else:
                self.taken += 1
                return _Job(request, self.taken - 1), None
        return None, (heap[0][0] - now if heap else None)

    async def worker(self, server: ServerHealth) -> None:
        client = self.clients[server.url]
        while not server.out and self.fatal is None:
            job, wait = self.take(server)
            if job is None:
                if self.exhausted and len(self.replies) == self.taken:
                    return
                event = self.wake
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), wait)
                continue
            try:
                reply = await self.backend.attempt(client, server, job)
            except ConfigError as exc:  # this server refuses the key, model or URL: the others may not
                others = [h for h in self.servers if not h.out and h is not server]
                if not others:
                    self.fatal = exc
                    self.changed()
                    return
                server.last_fault = job.fault = str(exc)
                self.take_out(server, f"because it refused the request: {exc}")
                self.route_retry(server, job)
                continue
            if reply is not None:
                self.reply(job, reply)
            else:
                self.route_retry(server, job)

    def route_retry(self, server: ServerHealth, job: _Job) -> None:
        """After a failed attempt: take the server out if it keeps failing, then retry the item (on another server
        in rotation when there is one, at once; else on this one after a backoff), or record it as failed."""
        if not server.out and server.failures_in_a_row >= self.backend.drop_after(server):
            self.take_out(server)
        healthy = [h for h in self.servers if not h.out]
        if not healthy:
            self.reply(job, self.backend.failed(job, "every server is out of rotation"))
        elif job.attempts >= self.config.max_retries + 1:
            self.reply(job, self.backend.failed(job))
        else:
            others = [h for h in healthy if h is not server]
            if others:  # the wait (backoff, Retry-After) concerns the server that failed, not the others
                target = min(others, key=lambda h: (h.url in job.servers, len(self.retries[h.url])))
                due = time.monotonic()
            else:
                target, due = server, time.monotonic() + _backoff(job)
            heapq.heappush(self.retries[target.url], (due, next(self.order), job))
            self.changed()

    def take_out(self, server: ServerHealth, why: str | None = None) -> None:
        """Take ``server`` out of rotation for the run (once), with a warning; its waiting retries go elsewhere."""
        if server.out:
            return
        server.out = True
        left = [h for h in self.servers if not h.out]
        why = why or f"after {server.failures_in_a_row} failed attempts in a row (last: {server.last_fault})"
        log.warning(
            "teacher %r: %s is taken out of rotation for this run %s; %d server(s) left",
            self.backend.name,
            server.url,
            why,
            len(left),
        )
        waiting, self.retries[server.url] = self.retries[server.url], []
        for _, _, job in waiting:  # its waiting retries go to the others, or fail when there are none
            if left:
                target = min(left, key=lambda h: len(self.retries[h.url]))
                heapq.heappush(self.retries[target.url], (time.monotonic(), next(self.order), job))
            else:
                self.reply(job, self.backend.failed(job, "every server is out of rotation"))
        self.changed()


def structured_to_answer(text: str, structured_output: str | None) -> str:
    """Rewrite a structured reply into the answer format mmkd.parsing reads; other text is returned as it is."""
    if structured_output == "json_schema":
        try:
            data = json.loads(text)
            return format_answer(data["label"], data["rationale"])
        except (ValueError, KeyError, TypeError):
            return text  # kept raw: the parser records it as unparsed
    if structured_output == "choice" and text.strip() in LABELS:
        return format_answer(text.strip(), "").strip()
    return text


def label_slot_score(logprobs: object, structured_output: str | None = None) -> float | None:
    """P(falsified) from a chat completion's ``choices[0].logprobs``, read at the label slot (``LABEL_SLOTS``).

    Each label is represented there by its best alternative among the slot's ``top_logprobs`` (and the token
    generated there) whose stripped, lower-cased text is a non-empty prefix of the label (``" fals"``, ``"f"``);
    the score is p(falsified) / (p(falsified) + p(pristine)), as mmkd.scoring's. A label not among the top-k gets
    probability 0: the score is then 0 or 1, within exp(lowest top-k logprob) / p(other label) of the true one.
    None (never guessed): no slot, neither label at the slot, or logprobs missing or malformed.
    """
    try:
        content = logprobs["content"]  # type: ignore[index]
        tokens = [entry["token"] for entry in content]
        if not all(isinstance(t, str) for t in tokens):
            return None
        slot = label_slot(tokens, structured_output)
        if slot is None:
            return None
        best: dict[str, float] = {}
        for candidate in [content[slot], *(content[slot].get("top_logprobs") or [])]:
            word, logprob = candidate["token"].strip().lower(), float(candidate["logprob"])
            for label in LABELS:
                if word and label.startswith(word) and not math.isnan(logprob):
                    best[label] = max(best.get(label, -math.inf), logprob)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if not best:
        return None
    falsified, pristine = best.get(FALSIFIED, -math.inf), best.get(PRISTINE, -math.inf)
    if falsified == pristine == -math.inf:
        return None
    if -math.inf in (falsified, pristine):
        return 0.0 if falsified == -math.inf else 1.0
    return 1.0 / (1.0 + math.exp(min(pristine - falsified, 700.0)))  # the two-way softmax; capped: no overflow


def label_slot(tokens: list[str], structured_output: str | None = None) -> int | None:
    """Index of the token that begins the label's value (see ``LABEL_SLOTS``): the last token boundary inside the
    first slot pattern that ends on one, so white-space tokens after ``Label:`` keep the slot. None: no slot."""
    starts = list(itertools.accumulate((len(t) for t in tokens), initial=0))  # offset of each token, and the end
    for match in LABEL_SLOTS[structured_output].finditer("".join(tokens)):
        inside = [i for i, offset in enumerate(starts) if match.start(1) <= offset <= match.end(1)]
        if inside:  # else a token runs across the slot (e.g. ": f"): no boundary there, as in mmkd.scoring
            return inside[-1] if inside[-1] < len(tokens) else None
    return None


def image_data_url(request: InferenceRequest) -> str:
    """The item's image as a base64 data URL: the file's own bytes when it has a known type, else PNG."""
    if request.image_path is not None:
        mime, _ = mimetypes.guess_type(request.image_path)
        if mime in ("image/png", "image/jpeg", "image/webp", "image/gif"):
            data = Path(request.image_path).read_bytes()
            return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    buf = io.BytesIO()
    request.image.save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


# An environment variable's name by convention (POSIX allows lower case too; refusing it catches keys such as hf_...).
VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# Values that are keys, whatever their case: AWS access key ids, and long runs of letters and digits.
KEY_LIKE = re.compile(r"(AKIA|ASIA)[A-Z0-9]{12,}|[A-Z0-9]{32,}")
SERVER_REASON_CHARS = 300  # how much of the server's own error message an error row keeps


def is_variable_name(value: object) -> bool:
    """Whether ``value`` can be the name of the variable that holds a key, and does not look like a key itself."""
    return isinstance(value, str) and bool(VARIABLE_NAME.fullmatch(value)) and not KEY_LIKE.fullmatch(value)


def _server_reason(exc: openai.APIStatusError) -> str:
    """The server's own message (``{"error": {"message": ...}}``, FastAPI's ``{"detail": ...}`` or the body), on one
    line, truncated."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body)
        body = body.get("message", body.get("detail", body)) if isinstance(body, dict) else body
    text = " ".join(str(body if body is not None else exc.message).split())
    return text if len(text) <= SERVER_REASON_CHARS else text[: SERVER_REASON_CHARS - 3] + "..."


def _body(request: InferenceRequest, config: OpenAICompatConfig, logprobs: bool = False) -> dict:
    """The JSON body of one chat-completion request: the image and prompt, the sampling fields, and with
    ``logprobs`` the request for them (``top_logprobs`` alternatives per token)."""
    fields = config.request_fields()
    if logprobs:
        fields |= {"logprobs": True, "top_logprobs": config.top_logprobs}
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(request)}},
            {"type": "text", "text": request.prompt},
        ],
    }
    return {
        "messages": [message],
        **{k: v for k, v in fields.items() if k != "extra_body"},
        **fields.get("extra_body", {}),
    }


def _count(value: object) -> int | None:
    """A token count from a reply's usage, or None when the server sent none (or something else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _refuses_logprobs(exc: openai.APIStatusError) -> bool:
    """A 400/422 whose reason names logprobs: the server refuses to return them (``transformers serve`` before 5.x:
    422 "Unused fields in the request: {'logprobs', 'top_logprobs'}"), not the item."""
    return exc.status_code in (400, 422) and "logprob" in _server_reason(exc).lower()


def _retryable(exc: openai.APIStatusError) -> bool:
    """The statuses the openai SDK retries (and the server's own ``x-should-retry`` when it sends one)."""
    should = exc.response.headers.get("x-should-retry")
    if should in ("true", "false"):
        return should == "true"
    return exc.status_code in (408, 409, 429) or exc.status_code >= 500


def _retry_after(headers) -> float | None:
    """Seconds a server asked to wait (``retry-after-ms``, ``retry-after`` in seconds or as an HTTP date)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError):
                continue
        if math.isfinite(seconds) and seconds >= 0:
            return min(seconds, MAX_RETRY_AFTER)
    return None


def _backoff(job: _Job) -> float:
    """How long to wait before retrying ``job`` on the server that just failed it."""
    if job.retry_after is not None:
        return job.retry_after
    delay = min(INITIAL_RETRY_DELAY * 2 ** (job.attempts - 1), MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())


def _cause(exc: Exception) -> str:
    """The transport's own reason for a connection error (e.g. ``[Errno 111] Connection refused``), on one line."""
    cause = exc.__cause__ or exc.__context__
    text = " ".join(str(cause or exc).split()) or type(cause or exc).__name__
    return text[:SERVER_REASON_CHARS]


def _describe(exc: Exception) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} ({type(exc).__name__}: {_server_reason(exc)})"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out (APITimeoutError)"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed (APIConnectionError)"
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)):
        return f"malformed reply, not a chat completion ({type(exc).__name__}: {str(exc)[:100]})"
    return str(exc)
