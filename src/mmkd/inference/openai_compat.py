"""A teacher behind any OpenAI-compatible Chat Completions server (vLLM, SGLang, TGI, ``transformers serve``, a
hosted API), called through the official ``openai`` SDK.

Requests are asynchronous and bounded: each server gets ``max_concurrency`` workers that pull items from one
shared queue, so several servers (a list of base URLs) share the work by speed. Faults are retried by the SDK
itself (exponential backoff, ``Retry-After`` honoured) on 408/409/429/5xx, timeouts and connection errors; a 200
whose body is not a chat completion (malformed JSON) is retried here. Both share one budget: at most
``max_retries + 1`` HTTP attempts per item in all. An item that still fails comes back as an error reply and the
other items go on. Errors that concern the configuration rather than an item (bad key, unknown model or URL) stop
the run with a message.

The API key is read from the environment variable *named* by ``api_key_env``; the key itself is never in params,
logs, outputs or metrics.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import json
import logging
import mimetypes
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import openai

from mmkd.inference.base import BackendUsage, InferenceReply, InferenceRequest, ReplyCallback
from mmkd.parsing import format_answer
from mmkd.schema import LABELS

log = logging.getLogger(__name__)

# Structured output, for servers that support it. ``json_schema``: the standard ``response_format`` with the answer
# schema below (vLLM, SGLang, TGI, OpenAI); the JSON reply is rewritten into the answer format that mmkd.parsing
# reads. ``choice``: vLLM's ``guided_choice`` over the labels (an answer without rationale).
STRUCTURED_OUTPUTS = ("json_schema", "choice")
ANSWER_JSON_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": list(LABELS)}, "rationale": {"type": "string"}},
    "required": ["label", "rationale"],
    "additionalProperties": False,
}

# Stop after this many items in a row failed on one server (it is down, or misconfigured): the rest are recorded as
# errors at once instead of each spending its full retry budget.
MAX_FAILURES_IN_A_ROW = 32


@dataclass
class OpenAICompatConfig:
    """Settings of one teacher behind an OpenAI-compatible server.

    model: the model name the server knows (vLLM: the HF id it serves, or ``--served-model-name``).
    base_url: the server's ``.../v1`` URL, or a list of them: items are shared among the servers.
    api_key_env: the *name* of the environment variable that holds the API key; null for servers without auth.
    revision: which weights the server runs (e.g. the HF commit); part of the cache key, so new weights re-ask.
    max_concurrency: requests in flight per server.
    timeout: seconds one attempt may take; max_retries: further attempts per item after the first.
    temperature, top_p, seed, max_tokens: sampling; part of the cache key.
    structured_output: null, ``json_schema`` or ``choice`` (see STRUCTURED_OUTPUTS).
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
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    structured_output: str | None = None
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
        if self.structured_output not in (None, *STRUCTURED_OUTPUTS):
            raise ValueError(f"structured_output must be null or one of {STRUCTURED_OUTPUTS}")
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
        elif self.structured_output == "choice":
            extra["guided_choice"] = list(LABELS)
        if extra:
            fields["extra_body"] = extra
        return fields


class ConfigError(RuntimeError):
    """The server refused the teacher's configuration (key, model name, URL): no item can succeed."""


class MalformedReply(Exception):
    """The server answered 200 with something that is not a chat completion."""


class OpenAICompatBackend:
    """Asks an OpenAI-compatible server, concurrently and with retries; see the module docstring."""

    def __init__(self, config: OpenAICompatConfig, name: str = "openai"):
        self.config = config
        self.name = name
        self.usage = BackendUsage(prompt_tokens=0, completion_tokens=0)
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
        return {"backend": "openai", "revision": self.config.revision, **self.config.request_fields()}

    def answer(self, requests: list[InferenceRequest], on_reply: ReplyCallback | None = None) -> list[InferenceReply]:
        if not requests:
            return []
        return asyncio.run(self._answer_all(requests, on_reply))

    async def _answer_all(
        self, requests: list[InferenceRequest], on_reply: ReplyCallback | None
    ) -> list[InferenceReply]:
        replies: list[InferenceReply | None] = [None] * len(requests)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(requests)):
            queue.put_nowait(i)
        clients = {url: self._client(url) for url in self.config.base_urls}
        last_error: dict[str, str] = {}

        async def worker(url: str, client: openai.AsyncOpenAI, in_a_row: list[int]) -> None:
            while in_a_row[0] < MAX_FAILURES_IN_A_ROW:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                reply = await self._ask(url, client, requests[i])
                in_a_row[0] = in_a_row[0] + 1 if reply.error else 0
                if reply.error:
                    last_error[url] = reply.error
                replies[i] = reply
                if on_reply is not None:
                    on_reply(reply)

        try:
            tasks = []
            for url, client in clients.items():
                in_a_row = [0]  # shared by the workers of one server
                tasks += [worker(url, client, in_a_row) for _ in range(self.config.max_concurrency)]
            await asyncio.gather(*tasks)
        finally:
            for client in clients.values():
                await client.close()
            self.usage.retries = self.usage.requests - self._items_sent
        for i, reply in enumerate(replies):
            if reply is None:  # every server gave up: record the rest as errors, to retry on the next run
                reply = replies[i] = InferenceReply(
                    item_id=requests[i].item_id,
                    error=(
                        f"not sent: {MAX_FAILURES_IN_A_ROW} items in a row failed on every server "
                        f"(last: {next(iter(last_error.values()), '?')}); check the servers and re-run"
                    ),
                )
                if on_reply is not None:
                    on_reply(reply)
        return replies  # type: ignore[return-value]

    def _client(self, url: str) -> openai.AsyncOpenAI:
        async def count_request(request) -> None:  # every HTTP attempt, retries included
            self.usage.requests += 1
            if (counter := _ITEM_ATTEMPTS.get()) is not None:  # the item this task is asking about
                counter[0] += 1

        return openai.AsyncOpenAI(
            base_url=url,
            api_key=self._api_key,
            max_retries=self.config.max_retries,
            timeout=self.config.timeout,
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_request]}),
        )

    async def _ask(self, url: str, client: openai.AsyncOpenAI, request: InferenceRequest) -> InferenceReply:
        """One item, in at most ``max_retries + 1`` HTTP attempts in all: the SDK retries transport faults, this loop
        retries malformed 200 replies, and each SDK call gets only the attempts that are left."""
        self._items_sent += 1
        attempts = [0]  # counted by the client's request hook, for this task's current item
        _ITEM_ATTEMPTS.set(attempts)
        budget = self.config.max_retries + 1
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(request)}},
                    {"type": "text", "text": request.prompt},
                ],
            }
        ]
        fields = self.config.request_fields()
        while True:
            left = budget - attempts[0]
            try:
                completion = await client.with_options(max_retries=left - 1).chat.completions.create(
                    messages=messages, **fields
                )
                text = self._text(completion)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise ConfigError(
                    f"teacher {self.name!r}: {url} refused the request ({_describe(exc)}); check base_url, model "
                    f"and the key in ${self.config.api_key_env or '<api_key_env not set>'}. Answers so far are cached."
                ) from None
            except (MalformedReply, openai.APIResponseValidationError, ValueError) as exc:  # ValueError: bad JSON
                if attempts[0] < budget:
                    await asyncio.sleep(min(0.5 * 2 ** attempts[0], 8.0) * (1 - 0.25 * random.random()))
                    continue
                return self._failed(request, url, exc, attempts[0])
            except openai.APIError as exc:  # the SDK has spent the attempts left (or the error is not retryable)
                return self._failed(request, url, exc, attempts[0] or 1)
            usage = getattr(completion, "usage", None)
            prompt_tokens = getattr(usage, "prompt_tokens", None)
            completion_tokens = getattr(usage, "completion_tokens", None)
            self.usage.add_tokens(prompt_tokens, completion_tokens)
            return InferenceReply(
                item_id=request.item_id,
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )

    def _failed(self, request: InferenceRequest, url: str, exc: Exception, attempts: int) -> InferenceReply:
        error = (
            f"teacher {self.name!r} at {url}: {_describe(exc)} after {attempts} attempt(s); "
            "re-run labelling to retry the failed items only (answers are cached)"
        )
        log.debug("item %r: %s", request.item_id, error)
        return InferenceReply(item_id=request.item_id, error=error)

    def _text(self, completion) -> str:
        try:
            text = completion.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise MalformedReply(f"malformed reply: not a chat completion ({type(exc).__name__})") from None
        if not isinstance(text, str):
            raise MalformedReply("malformed reply: no text content in the first choice")
        return structured_to_answer(text.strip(), self.config.structured_output)  # stripped, as the local backend


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
# HTTP attempts for the item a task is asking about, counted by the client's request hook (each worker task asks
# about one item at a time, and a context variable is per task).
_ITEM_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("mmkd_item_attempts", default=None)
SERVER_REASON_CHARS = 300  # how much of the server's own error message an error row keeps


def is_variable_name(value: object) -> bool:
    """Whether ``value`` can be the name of the variable that holds a key, and does not look like a key itself."""
    return isinstance(value, str) and bool(VARIABLE_NAME.fullmatch(value)) and not KEY_LIKE.fullmatch(value)


def _server_reason(exc: openai.APIStatusError) -> str:
    """The server's own message (``{"error": {"message": ...}}`` or the body), on one line, truncated."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body)
        body = body.get("message", body) if isinstance(body, dict) else body
    text = " ".join(str(body if body is not None else exc.message).split())
    return text if len(text) <= SERVER_REASON_CHARS else text[: SERVER_REASON_CHARS - 3] + "..."


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
