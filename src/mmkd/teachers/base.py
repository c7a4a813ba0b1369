"""The interface every teacher backend implements, whatever runs the model (local transformers, an HTTP server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class TeacherRequest:
    """One question to a teacher: an item's image and the rendered prompt."""

    item_id: str
    image: Image.Image
    prompt: str


@dataclass(frozen=True)
class TeacherReply:
    """The raw text a teacher returned, or the error that stopped it for this item (exactly one is set)."""

    item_id: str
    text: str | None = None
    error: str | None = None


class TeacherBackend(Protocol):
    """A model that answers a batch of requests; per-item failures come back as replies with ``error`` set."""

    def answer(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        """Answer every request, in order."""
        ...
