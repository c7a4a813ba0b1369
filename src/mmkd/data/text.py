"""The one cleaning rule for text that goes into prompts: VisualNews captions and CCN evidence.

In order: a lone surrogate (JSON can hold ``\\ud800``, which no UTF-8 writer takes) becomes U+FFFD (the streaming
reader does the same on its way in), and each U+FFFD is reported; tab, line and
page breaks (U+0009-U+000D, U+0085, U+2028, U+2029) become spaces; every other C0/C1 control character (NUL,
U+0001-U+001F, U+007F-U+009F) is removed, as are the bidirectional embeddings, overrides and isolates
(U+202A-U+202E, U+2066-U+2069), the direction marks (U+200E, U+200F, U+061C) and the invisible zero-width space,
word joiner and byte-order mark (U+200B, U+2060, U+FEFF), which can hide or reorder text a reader sees; ZWJ and ZWNJ
(U+200C, U+200D) stay, since scripts and emoji need them. Then NFC normalisation, runs of white space collapsed to
one space, ends stripped. What was removed or replaced (not the spacing) is returned, so callers can report it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\u200b\u2060\ufeff]")
_SPACE = re.compile(r"\s+")
ELLIPSIS = "…"


@dataclass(frozen=True)
class CleanText:
    """A cleaned text and what cleaning removed or replaced, e.g. ``("1 control character",)``; empty: nothing."""

    text: str
    changes: tuple[str, ...]


def clean_text(text: str) -> CleanText:
    """Apply the module's rule to ``text``."""
    changes = []
    text = _LONE_SURROGATE.sub("\ufffd", text)
    n = text.count("\ufffd")  # also those mmkd.data.json_stream replaced while reading
    if n:
        changes.append(f"{n} unreadable character{'s' * (n > 1)} (lone surrogates, now U+FFFD)")
    text = _BREAKS.sub(" ", text)
    for pattern, what in ((_CONTROLS, "control character"), (_INVISIBLE, "bidirectional or invisible character")):
        text, n = pattern.subn("", text)
        if n:
            changes.append(f"{n} {what}{'s' * (n > 1)} removed")
    text = _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
    return CleanText(text, tuple(changes))


def cut(text: str, max_chars: int) -> str:
    """``text`` if it has at most ``max_chars`` characters, else its start and an ellipsis, ``max_chars`` in all."""
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + ELLIPSIS
