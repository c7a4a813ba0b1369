"""Where an answer's label slot is and how P(falsified) is read there: the one definition of the detector's score.

The slot is the first token of the value of the answer's first ``Label:`` field (after any white space), as the
model wrote it. The score is the probability of ``falsified`` there, renormalised over the two labels:
``p(falsified) / (p(falsified) + p(pristine))``, each label represented by the token that would begin it at the slot
(so ``" falsified"`` when the slot follows ``Label:`` directly). This is the convention of classifier-style LLMs such
as Llama Guard, which read their unsafe probability off the first answer token.

Every reader uses this module: a local model (mmkd.scoring, from its logits), a server's logprobs
(mmkd.labelling.server.logprobs) and the exported model's card, whose example program embeds this file's code
(mmkd.deploy.card), so it needs neither torch nor anything of mmkd but the label names. No score (None): an answer
with no ``Label:`` field, or a tokenizer in which both labels begin with the same token at the slot.
"""

from __future__ import annotations

import math
import re

from mmkd.schema import FALSIFIED, LABELS, PRISTINE

# An answer's label field; group 1 is the white space between the colon and the value, which keeps the slot.
LABEL_FIELD = re.compile(r"\blabel\s*:(\s*)", re.IGNORECASE)
ENDS_AT_SLOT = re.compile(LABEL_FIELD.pattern + "$", LABEL_FIELD.flags)


def slot_index(tokenizer, answer_ids: list[int]) -> int | None:
    """Index in ``answer_ids`` of the token that begins the first ``Label:`` value, or None."""
    found = None
    for i in range(len(answer_ids) + 1):
        if ENDS_AT_SLOT.search(tokenizer.decode(answer_ids[:i], skip_special_tokens=True)):
            found = i  # the prefix ends at the slot; white-space tokens after "Label:" keep it there
        elif found is not None:
            break
    return found if found is not None and found < len(answer_ids) else None


def label_token_ids(tokenizer, prefix: str) -> dict[str, int] | None:
    """The token that begins each label right after ``prefix`` (the answer text up to the slot); None when both
    labels begin with the same token, which the slot then cannot tell apart."""
    head = tokenizer.encode(prefix, add_special_tokens=False)
    ids = {}
    for label in LABELS:
        value = label if prefix[-1:].isspace() else f" {label}"
        full = tokenizer.encode(prefix + value, add_special_tokens=False)
        if full[: len(head)] != head or len(full) == len(head):  # the boundary re-merged: take the value alone
            full = head + tokenizer.encode(value, add_special_tokens=False)
        ids[label] = full[len(head)]
    return ids if len(set(ids.values())) == len(LABELS) else None


def falsified_probability(logprobs: dict[str, float]) -> float | None:
    """p(falsified) / (p(falsified) + p(pristine)) from each label's log-probability at the slot (logits do as well:
    a shared offset cancels). A label that is missing or at -inf has probability 0; None when both do."""
    falsified, pristine = logprobs.get(FALSIFIED, -math.inf), logprobs.get(PRISTINE, -math.inf)
    if falsified == pristine == -math.inf:
        return None
    if -math.inf in (falsified, pristine):
        return 0.0 if falsified == -math.inf else 1.0
    # The two-way softmax in double precision, so the score does not depend on the device that made the logits;
    # the cap keeps exp from overflowing when pristine is far likelier.
    return 1.0 / (1.0 + math.exp(min(pristine - falsified, 700.0)))


def slot_and_label_ids(tokenizer, answer_ids: list[int]) -> tuple[int, dict[str, int]] | None:
    """Where an answer's label slot is and each label's token there; None when the answer has no readable slot."""
    slot = slot_index(tokenizer, answer_ids)
    if slot is None:
        return None
    ids = label_token_ids(tokenizer, tokenizer.decode(answer_ids[:slot], skip_special_tokens=True))
    return None if ids is None else (slot, ids)


def generated_score(tokenizer, answer_ids: list[int], step_logits) -> float | None:
    """P(falsified) of a generated answer: ``answer_ids`` are the new tokens, ``step_logits[i]`` the logits that
    chose token ``i`` (what ``generate(output_logits=True)`` returns for one row)."""
    if (found := slot_and_label_ids(tokenizer, answer_ids)) is None:
        return None
    slot, ids = found
    return falsified_probability({label: float(step_logits[slot][i]) for label, i in ids.items()})
