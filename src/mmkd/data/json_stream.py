"""Streaming the values of large JSON files with a bound on nesting depth.

ijson's C ``items()`` builds a prefix string per event whose length grows with the depth, so a file nested 50,000
levels deep costs minutes and gigabytes (quadratic), and ``repr``/``json`` of such a value raise RecursionError.
Here ijson's C tokenizer (``basic_parse``, linear in the file) feeds a small builder that puts ``TOO_DEEP`` in place
of anything nested deeper than ``max_depth``, so the record around it is still read and can be reported by its id.

yajl also mishandles a lone surrogate escape (``"\\ud800"``, valid JSON): a high one becomes ``?`` silently, a low
one raises UnicodeDecodeError for the whole file. So every ``\\uD800``-``\\uDFFF`` escape that is not half of a
pair is read as ``\\ufffd`` (``_LoneSurrogateEscapes``), the character the text rule (``mmkd.data.text``) makes of
it, and reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

import ijson

MAX_DEPTH = 32  # NewsCLIPpings, VisualNews and CCN index files nest at most 3 levels


class _TooDeep:
    """The stand-in for a value nested deeper than ``max_depth`` (its content is skipped, never built)."""

    def __repr__(self) -> str:
        return "<nested too deep>"


TOO_DEEP = _TooDeep()
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_HIGH = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_REPLACEMENT = rb"\ufffd"
_CHUNK = 64 * 1024
_CONTEXT = 16  # bytes kept from one read to the next: a pair split across reads is still seen as a pair


def _escaped(data: bytes, at: int) -> bool:
    """Whether the backslash at ``at`` is itself escaped (an odd run of backslashes before it)."""
    start = at
    while start > 0 and data[start - 1] == 0x5C:
        start -= 1
    return (at - start) % 2 == 1


class _LoneSurrogateEscapes:
    """A binary file that reads each JSON escape of a lone surrogate as ``\\ufffd`` (same length), pairs intact."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.data, self.done = raw, b"", 0  # data[:done] was returned already (kept as context)

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson reads 0 bytes to tell bytes from text
            return b""
        while True:
            chunk = self.raw.read(_CHUNK if size is None or size < 0 else max(size, _CHUNK))
            data = self.data + chunk
            end = len(data) if not chunk else self._safe_end(data)
            if end > self.done or not chunk:
                break
            self.data = data
        out = bytearray(data[self.done : end])
        for match in _SURROGATE.finditer(data, max(0, self.done), end):
            at = match.start()
            if _escaped(data, at):
                continue
            if _HIGH.fullmatch(match.group()):
                paired = _LOW.fullmatch(data[at + 6 : at + 12]) is not None
            else:
                paired = _HIGH.fullmatch(data[max(0, at - 6) : at]) is not None and not _escaped(data, at - 6)
            if not paired:
                out[at - self.done : at - self.done + 6] = _REPLACEMENT
        keep = max(0, end - _CONTEXT)
        self.data, self.done = data[keep:], end - keep
        return bytes(out)

    def _safe_end(self, data: bytes) -> int:
        """Where to stop this read: no escape cut in two, and room after it to see a pair's second half."""
        end = len(data) - _CONTEXT
        if end <= self.done:
            return end  # too little yet: read more
        backslash = data.rfind(b"\\", max(self.done, end - 5), end)
        if backslash != -1:
            end = backslash
        while end > self.done and data[end - 1] == 0x5C:
            end -= 1
        return end if end > self.done else len(data) - _CONTEXT  # a run of backslashes: give up on precision


_OPEN = ("start_map", "start_array")
_CLOSE = ("end_map", "end_array")


def _skip(events: Iterator[tuple[str, object]]) -> None:
    """Consume the rest of a container whose opening event was just read."""
    depth = 1
    for event, _ in events:
        if event in _OPEN:
            depth += 1
        elif event in _CLOSE:
            depth -= 1
            if depth == 0:
                return


def _build(event: str, value: object, events: Iterator[tuple[str, object]], max_depth: int) -> object:
    """The value that starts with ``(event, value)``; containers deeper than ``max_depth`` become ``TOO_DEEP``."""
    if event not in _OPEN:
        return value
    if max_depth < 1:
        _skip(events)
        return TOO_DEEP
    root: dict | list = {} if event == "start_map" else []
    stack: list[dict | list] = [root]
    keys: list[object] = [None]
    for event, value in events:
        if event == "map_key":
            keys[-1] = value
            continue
        if event in _CLOSE:
            stack.pop()
            keys.pop()
            if not stack:
                return root
            continue
        if event in _OPEN:
            if len(stack) >= max_depth:
                _skip(events)
                child: object = TOO_DEEP
            else:
                child = {} if event == "start_map" else []
        else:
            child = value
        parent = stack[-1]
        if isinstance(parent, list):
            parent.append(child)
        else:
            parent[keys[-1]] = child
        if child is not TOO_DEEP and event in _OPEN:
            stack.append(child)  # type: ignore[arg-type]
            keys.append(None)
    raise ijson.IncompleteJSONError("the file ends inside a value")


def _skip_value(event: str, events: Iterator[tuple[str, object]]) -> None:
    if event in _OPEN:
        _skip(events)


def _at(event, value, events, segments: list[str], max_depth: int) -> Iterator[object]:
    """The values at ``segments`` (map keys, or ``item`` for array elements) below the value starting here."""
    if not segments:
        yield _build(event, value, events, max_depth)
        return
    head, rest = segments[0], segments[1:]
    if head == "item" and event == "start_array":
        for event, value in events:
            if event == "end_array":
                return
            yield from _at(event, value, events, rest, max_depth)
    elif head != "item" and event == "start_map":
        for event, key in events:
            if event == "end_map":
                return
            event, value = next(events)
            if key == head:
                yield from _at(event, value, events, rest, max_depth)
            else:
                _skip_value(event, events)
    else:
        _skip_value(event, events)


def stream_items(file: BinaryIO, prefix: str, max_depth: int = MAX_DEPTH) -> Iterator[object]:
    """The values at ``prefix`` (ijson's syntax: ``annotations.item``, ``item``), one at a time, depth-bounded.

    ``max_depth`` counts the levels inside each value. A malformed file raises ``ijson.JSONError``."""
    events = iter(ijson.basic_parse(_LoneSurrogateEscapes(file)))
    for event, value in events:
        yield from _at(event, value, events, prefix.split(".") if prefix else [], max_depth)
        return


def top_level_type(file: BinaryIO) -> str:
    """``object``, ``array``, ``string``, ``number``, ... of the file's top-level value (reads one token)."""
    for event, _ in ijson.basic_parse(file):
        return {"start_map": "object", "start_array": "array", "null": "null", "boolean": "boolean"}.get(event, event)
    return "nothing"


def stream_entries(file: BinaryIO, max_depth: int = MAX_DEPTH) -> Iterator[tuple[str, object]]:
    """``(key, value)`` of the top-level JSON object, one at a time, depth-bounded; nothing if it is not an object."""
    events = iter(ijson.basic_parse(_LoneSurrogateEscapes(file)))
    for event, _ in events:
        if event != "start_map":
            return
        for event, key in events:
            if event == "end_map":
                return
            event, value = next(events)
            yield key, _build(event, value, events, max_depth)
        return
