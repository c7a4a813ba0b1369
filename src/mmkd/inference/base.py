"""The interface every teacher backend implements, whatever runs the model (local transformers, an HTTP server)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class InferenceRequest:
    """One question to a teacher: an item's image and the rendered prompt.

    ``image_path`` is the image file the item names, when there is one: a server backend sends those bytes as they
    are (no re-encoding), the local backend uses the decoded ``image``.
    """

    item_id: str
    image: Image.Image
    prompt: str
    image_path: str | None = None


@dataclass(frozen=True)
class InferenceReply:
    """The raw text a teacher returned, or the error that stopped it for this item (exactly one is set).

    Token counts are set when the backend knows them (an OpenAI-compatible server reports them). ``score`` is
    P(falsified) read at the answer's ``Label:`` slot (mmkd.scoring), when the backend can read it: a local model
    always, a server when it returns logprobs; None otherwise.
    """

    item_id: str
    text: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    score: float | None = None


@dataclass
class BackendUsage:
    """What a backend spent so far: HTTP requests (retries included), retries and tokens.

    A local backend counts one request per item it generated for and knows no token counts (None).
    """

    requests: int = 0
    retries: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def add_tokens(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Add one reply's token counts (unknown counts leave the totals as they are)."""
        if prompt_tokens is not None:
            self.prompt_tokens = (self.prompt_tokens or 0) + prompt_tokens
        if completion_tokens is not None:
            self.completion_tokens = (self.completion_tokens or 0) + completion_tokens


class BackendStopped(RuntimeError):
    """The backend cannot answer any more items in this run (e.g. every server is out of rotation); the message
    says why. The replies given so far went to the callback; the requests not yet taken were not sent."""


# Called with each reply as soon as it is known, so that it can be stored before the rest of the batch is done.
ReplyCallback = Callable[[InferenceReply], None]


class InferenceBackend(Protocol):
    """A model that answers a batch of requests; per-item failures come back as replies with ``error`` set."""

    usage: BackendUsage

    def answer(
        self, requests: Iterable[InferenceRequest], on_reply: ReplyCallback | None = None
    ) -> list[InferenceReply]:
        """Answer every request, in order; call ``on_reply`` with each reply as soon as it is known.

        ``requests`` may be a generator: a backend takes requests as it can work on them, so only those in progress
        need to be in memory."""
        ...

    def identity(self) -> dict:
        """Everything about this backend that determines its answers (model, weights, sampling): a cache key part."""
        ...
