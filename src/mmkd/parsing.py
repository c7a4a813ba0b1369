"""Parse a model's free-text answer into a label and a rationale, or declare it unparsed.

The format is strict: ``Label: <pristine|falsified>`` somewhere in the text (case and white space are free),
optionally followed by ``Rationale: <text>``. Text before ``Label:`` (e.g. a ``Check: ...`` preamble) is allowed
and becomes part of the rationale. Anything else is ``unparsed`` and is never guessed at:
- no ``Label:`` field, or a field whose value is not exactly a known label (``Label: fake``, ``Label: **pristine**``,
  ``Label: pristine or falsified``);
- a later ``Label:`` field that names the other label (a contradictory answer);
- JSON-like answers (``{"label": "falsified"}``): another format, not this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmkd.schema import LABELS

# ``Label:`` then its value: everything up to the end of the field (a full stop, comma, semicolon, newline,
# ``Rationale:`` or the end of the text). The whole value must be a label, so ``Label: pristine or falsified``
# (an echo of the instructions) is not read as ``pristine``.
_LABEL_FIELD = re.compile(r"\blabel\s*:([^.,;\n]*?)(?=[.,;\n]|\brationale\s*:|$)", re.IGNORECASE)
_RATIONALE_FIELD = re.compile(r"\brationale\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class ParsedAnswer:
    """The outcome of parsing: ``status`` is ``ok`` (label set) or ``unparsed`` (label None, reason set)."""

    status: str
    label: str | None
    rationale: str | None
    reason: str | None = None


def _unparsed(reason: str) -> ParsedAnswer:
    return ParsedAnswer(status="unparsed", label=None, rationale=None, reason=reason)


def parse_answer(text: str | None) -> ParsedAnswer:
    """Parse ``text`` in the strict answer format (see the module docstring)."""
    if text is None or not text.strip():
        return _unparsed("empty answer")
    values = [m.group(1).strip().lower() for m in _LABEL_FIELD.finditer(text)]
    if not values:
        return _unparsed("no 'Label:' field")
    label = values[0]
    if label not in LABELS:
        return _unparsed(f"'Label:' value {label!r} is not one of {list(LABELS)}")
    # Later ``Label:`` mentions (e.g. inside the rationale) only matter when they name a different label.
    others = {w for v in values[1:] if (w := v.split(" ", 1)[0]) in LABELS and w != label}
    if others:
        return _unparsed(f"contradictory labels {sorted({label, *others})}")
    first = _LABEL_FIELD.search(text)
    before = text[: first.start()].strip()
    after = _RATIONALE_FIELD.search(text, first.end())
    rationale = " ".join(p for p in (before, after.group(1).strip() if after else "") if p) or None
    return ParsedAnswer(status="ok", label=label, rationale=rationale)


def format_answer(label: str, rationale: str, check: str | None = None) -> str:
    """Render an answer in the format ``parse_answer`` accepts (used to build training targets)."""
    head = f"{check} " if check else ""
    return f"{head}Label: {label}. Rationale: {rationale}"
