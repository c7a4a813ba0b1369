"""How a failed attempt is read: which faults are worth retrying, how long the server asked to wait, the backoff
otherwise, and one line that describes the fault with the server's own reason (it goes into the item's error)."""

from __future__ import annotations

import email.utils
import math
import random
import time

import openai

# Retry waits, as the openai SDK's own: exponential from 0.5 s up to 8 s, less 0-25 % jitter; a server's
# Retry-After is honoured up to 60 s.
INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, MAX_RETRY_AFTER = 0.5, 8.0, 60.0
SERVER_REASON_CHARS = 300  # how much of the server's own error message an error row keeps


class ConfigError(RuntimeError):
    """The server refused the teacher's configuration (key, model name, URL): no item can succeed."""


class MalformedReply(Exception):
    """The server answered 200 with something that is not a chat completion."""


def server_reason(exc: openai.APIStatusError) -> str:
    """The server's own message (``{"error": {"message": ...}}``, FastAPI's ``{"detail": ...}`` or the body), on one
    line, truncated."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body)
        body = body.get("message", body.get("detail", body)) if isinstance(body, dict) else body
    text = " ".join(str(body if body is not None else exc.message).split())
    return text if len(text) <= SERVER_REASON_CHARS else text[: SERVER_REASON_CHARS - 3] + "..."


def refuses_logprobs(exc: openai.APIStatusError) -> bool:
    """A 400/422 whose reason names logprobs: the server refuses to return them (``transformers serve`` before 5.x:
    422 "Unused fields in the request: {'logprobs', 'top_logprobs'}"), not the item."""
    return exc.status_code in (400, 422) and "logprob" in server_reason(exc).lower()


def retryable(exc: openai.APIStatusError) -> bool:
    """The statuses the openai SDK retries (and the server's own ``x-should-retry`` when it sends one)."""
    should = exc.response.headers.get("x-should-retry")
    if should in ("true", "false"):
        return should == "true"
    return exc.status_code in (408, 409, 429) or exc.status_code >= 500


def retry_after(headers) -> float | None:
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


def backoff(attempts: int, asked: float | None) -> float:
    """How long to wait before retrying, on the server that just failed it, an item that has had ``attempts``:
    what the server ``asked`` for (Retry-After), else the SDK's jittered exponential backoff."""
    if asked is not None:
        return asked
    delay = min(INITIAL_RETRY_DELAY * 2 ** (attempts - 1), MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())


def could_not_connect(exc: openai.APIConnectionError) -> bool:
    """No connection could be made (refused, unknown host): nothing listens there. A connection the server
    accepted and then dropped is not this: something listens."""
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ == "ConnectError" or isinstance(cause, ConnectionRefusedError)


def connection_cause(exc: Exception) -> str:
    """The transport's own reason for a connection error (e.g. ``[Errno 111] Connection refused``), on one line."""
    cause = exc.__cause__ or exc.__context__
    text = " ".join(str(cause or exc).split()) or type(cause or exc).__name__
    return text[:SERVER_REASON_CHARS]


def describe(exc: Exception) -> str:
    """One line that says what went wrong with an attempt, with the server's reason when it gave one."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} ({type(exc).__name__}: {server_reason(exc)})"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out (APITimeoutError)"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed (APIConnectionError)"
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)):
        return f"malformed reply, not a chat completion ({type(exc).__name__}: {str(exc)[:100]})"
    return str(exc)
