"""The score of a server's answer: P(falsified) read off the logprobs it returned, at the answer's label slot, as
mmkd.scoring defines it for a local model."""

from __future__ import annotations

import itertools
import math
import re

from mmkd.label_slot import LABEL_FIELD, falsified_probability
from mmkd.schema import LABELS

# The label slot (see mmkd.label_slot): where the first token of the label's value is, by the text before it.
# Free text: after the first ``Label:`` field (mmkd.label_slot.LABEL_FIELD, the one definition local models use
# too; white space after the colon keeps the slot). ``json_schema``: inside the JSON string of ``"label"``.
# ``choice``: the whole answer is the label, so its first token that is not white space. Group 1 spans the text
# that may end the prefix before the slot.
LABEL_SLOTS = {
    None: LABEL_FIELD,
    "json_schema": re.compile(r'"label"\s*:\s*"()'),
    "choice": re.compile(r"^(\s*)"),
}


def label_slot_score(logprobs: object, structured_output: str | None = None) -> float | None:
    """P(falsified) from a chat completion's ``choices[0].logprobs``, read at the label slot (``LABEL_SLOTS``).

    Each label is represented there by its best alternative among the slot's ``top_logprobs`` (and the token
    generated there) whose stripped, lower-cased text is a non-empty prefix of the label (``" fals"``, ``"f"``);
    the score is p(falsified) / (p(falsified) + p(pristine)) (mmkd.label_slot.falsified_probability). A label not among
    the top-k gets probability 0: the score is then 0 or 1, within exp(lowest top-k logprob) / p(other label) of the
    true one. None (never guessed): no slot, neither label at the slot, or logprobs missing or malformed.
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
    return falsified_probability(best) if best else None  # the two-label renormalisation, defined once


def label_slot(tokens: list[str], structured_output: str | None = None) -> int | None:
    """Index of the token that begins the label's value (see ``LABEL_SLOTS``): the last token boundary inside the
    first slot pattern that ends on one, so white-space tokens after ``Label:`` keep the slot. None: no slot."""
    starts = list(itertools.accumulate((len(t) for t in tokens), initial=0))  # offset of each token, and the end
    for match in LABEL_SLOTS[structured_output].finditer("".join(tokens)):
        inside = [i for i, offset in enumerate(starts) if match.start(1) <= offset <= match.end(1)]
        if inside:  # else a token runs across the slot (e.g. ": f"): no boundary there, as in mmkd.scoring
            return inside[-1] if inside[-1] < len(tokens) else None
    return None
