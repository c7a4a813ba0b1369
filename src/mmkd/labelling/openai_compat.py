"""A teacher behind any OpenAI-compatible Chat Completions server (vLLM, SGLang, TGI, ``transformers serve``, a
hosted API), called through the official ``openai`` SDK. This module sends one attempt and reads its reply; its
parts are in ``mmkd.labelling.server``: settings (``config``), request bodies (``requests``), faults, each
server's circuit breaker (``circuit``), the dispatch over servers with retries (``dispatch``) and the score read
from logprobs (``logprobs``).

Requests are asynchronous and bounded: each server gets ``max_concurrency`` workers that pull items, one at a
time, from one stream (a generator: items are read and encoded only when a worker is free), so several servers (a
list of base URLs) share the work by speed and a slow request never idles the others.

Faults: 408/409/429/5xx, timeouts, connection errors and 200s that are not a chat completion are retried, in one
budget of at most ``max_retries + 1`` attempts per item in all. A failed attempt is retried at once on another
server in rotation when there is one, else on the same server after the SDK's backoff (``Retry-After`` honoured).
``timeout`` bounds each whole attempt, however slowly a server sends its bytes. A server that fails
``pause_server_after`` attempts in a row is paused, with a warning: its items go to the other servers at once, or
wait for it when it is the last; after ``pause_s`` it gets one probe request, and an answer puts it back (a failed
probe doubles the pause, up to ``max_pause_s``). The run gives up (``BackendStopped``, naming the window and the
last error) when no server has answered for ``give_up_after_s`` since the first failure. A server that never sent
an HTTP response and refuses connections is taken out at once (nothing listens there), so a run against nothing
stops in seconds. An item that fails everywhere comes back as an error reply that keeps the server's own reason,
and the other items go on. Errors that concern the configuration rather than an item (bad key, unknown model or
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
import logging
import os
from collections.abc import Iterable

import httpx2
import openai

from mmkd.inference.base import BackendStopped, BackendUsage, InferenceReply, InferenceRequest, ReplyCallback
from mmkd.labelling.server.circuit import ServerHealth
from mmkd.labelling.server.config import CHOICE_FIELDS, OpenAICompatConfig
from mmkd.labelling.server.dispatch import Dispatch, Job
from mmkd.labelling.server.faults import (
    ConfigError,
    MalformedReply,
    connection_cause,
    could_not_connect,
    describe,
    refuses_logprobs,
    retry_after,
    retryable,
)
from mmkd.labelling.server.logprobs import label_slot_score
from mmkd.labelling.server.requests import request_body, structured_to_answer, token_count
from mmkd.schema import LABELS

log = logging.getLogger(__name__)


class OpenAICompatBackend:
    """Asks an OpenAI-compatible server, concurrently and with retries; see the module docstring."""

    def __init__(self, config: OpenAICompatConfig, name: str = "openai"):
        self.config = config
        self.name = name
        self.usage = BackendUsage(prompt_tokens=0, completion_tokens=0)
        self.health = {url: ServerHealth(url) for url in config.base_urls}
        self.stopped: str | None = None  # why no server can be asked any more in this run
        self.items_sent = 0
        self._warned_unconstrained = False  # a choice answer that is not a label was seen (warned once)
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

        Raises ``BackendStopped`` when every server is out of rotation, or none answered for ``give_up_after_s``:
        the replies so far went to ``on_reply``, and the requests not yet taken were not sent (``stopped`` says
        why)."""
        if self.stopped is not None:
            raise BackendStopped(self.stopped)
        return asyncio.run(Dispatch(self, iter(requests), on_reply).run())

    def client(self, url: str) -> openai.AsyncOpenAI:
        """An SDK client for one server, without SDK retries: retries are routed by ``Dispatch``, across servers,
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

    async def attempt(self, client: openai.AsyncOpenAI, server: ServerHealth, job: Job) -> InferenceReply | None:
        """One HTTP attempt of ``job`` on ``server``: the reply (an answer, or an error that retrying cannot mend),
        or None when the attempt failed in a way worth retrying elsewhere or later (``job.fault`` says how)."""
        if job.attempts == 0:
            self.items_sent += 1
        job.attempts += 1
        job.servers.append(server.url)
        job.retry_after = None
        try:
            payload = await self.post(client, server, job.request)
            text = self._text(payload)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
            raise ConfigError(
                f"teacher {self.name!r}: {server.url} refused the request ({describe(exc)}); check base_url, model "
                f"and the key in ${self.config.api_key_env or '<api_key_env not set>'}. Answers so far are cached."
            ) from None
        except openai.APIStatusError as exc:
            job.fault = describe(exc)
            if not retryable(exc):  # e.g. 400 "maximum context length exceeded": the item's fault, not the server's
                server.answer()
                return self.failed(job)
            job.retry_after = retry_after(exc.response.headers)
            if exc.status_code == 429:  # busy, not broken: back off, but it is not counted against the server
                server.responded, server.refused_in_a_row = True, 0
                return None
            server.fail(job.fault, responded=True)
        except (TimeoutError, openai.APITimeoutError):  # a busy server is slow, not absent: no fast drop
            job.fault = f"timed out (no complete reply within timeout={self.config.timeout:g} s)"
            server.fail(job.fault, responded=False)
        except openai.APIConnectionError as exc:
            job.fault = f"connection failed ({connection_cause(exc)})"
            refused = could_not_connect(exc)
            server.fail(job.fault, responded=not refused, refused=refused)
        except (MalformedReply, openai.APIResponseValidationError, ValueError) as exc:  # ValueError: bad JSON
            job.fault = describe(exc)
            server.fail(job.fault, responded=True)
        else:
            server.answer()
            usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
            prompt_tokens = token_count(usage.get("prompt_tokens"))
            completion_tokens = token_count(usage.get("completion_tokens"))
            self.usage.add_tokens(prompt_tokens, completion_tokens)
            return InferenceReply(
                item_id=job.request.item_id,
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                score=self._score(server, payload),
            )
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
                        "/chat/completions", cast_to=httpx2.Response, body=request_body(request, self.config, logprobs)
                    )
                    return response.json()
            except openai.APIStatusError as exc:
                if not (logprobs and refuses_logprobs(exc)):
                    raise
                if not server.logprobs_refused:  # requests in flight may all be refused: warn once
                    server.logprobs_refused = True
                    log.warning(
                        "teacher %r: %s refused logprobs (%s); asking it without them for the rest of the run, so "
                        "its answers have no score",
                        self.name,
                        server.url,
                        describe(exc),
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

    def failed(self, job: Job, why: str | None = None) -> InferenceReply:
        """The error reply of an item that will not be asked again in this run."""
        where = job.servers[-1] if len(set(job.servers)) == 1 else f"{len(set(job.servers))} servers"
        error = (
            f"teacher {self.name!r} at {where}: {job.fault} after {job.attempts} attempt(s)"
            f"{f' ({why})' if why else ''}; re-run labelling to retry the failed items only (answers are cached)"
        )
        log.debug("item %r: %s", job.request.item_id, error)
        return InferenceReply(item_id=job.request.item_id, error=error)

    def stop_reason(self) -> str:
        """Why no server is left in rotation: nothing listens (the usual case), or each was taken out."""
        detail = "; ".join(f"{h.url}: {h.last_fault}" for h in self.health.values())
        if not any(h.responded for h in self.health.values()):
            return (
                f"teacher {self.name!r}: no server responded ({detail}). Is the server running, and is base_url "
                "right? The items not sent are recorded as errors; re-run when it is up (answers so far are cached)"
            )
        return (
            f"teacher {self.name!r}: every server was taken out of rotation ({detail}). The items not sent are "
            "recorded as errors; re-run when the servers are healthy (answers so far are cached)"
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
