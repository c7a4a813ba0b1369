"""The detector's score: P(falsified) for one answer, read at the answer's label slot.

The slot is the first token of the value of the answer's first ``Label:`` field (after any white space), as the
model wrote it. The score is the model's next-token probability of ``falsified`` there, given the prompt, the
image and the answer's text before the slot, renormalised over the two labels:
``p(falsified) / (p(falsified) + p(pristine))``, each label represented by the token that would begin it at the
slot (so ``" falsified"`` when the slot follows ``Label:`` directly). This is the convention of classifier-style
LLMs such as Llama Guard, which read their unsafe probability off the first answer token.

Two ways to read it, which agree (tests/test_scoring.py): ``generated_score`` reads it from the logits that
generation produced at the slot (free: mmkd.modeling.generate keeps them), and ``label_score`` by one teacher-forced
forward pass over prompt + answer, which also scores an answer taken from a cache that kept no score. A server
reads it from the logprobs it returns (mmkd.labelling.openai_compat).

No score (None): an answer with no ``Label:`` field, or a tokenizer in which both labels begin with the same token
at the slot (the first token cannot tell them apart).
"""

from __future__ import annotations

import re

import torch
from PIL import Image

from mmkd.modeling import user_turn
from mmkd.schema import FALSIFIED, LABELS, PRISTINE

_SLOT = re.compile(r"\blabel\s*:\s*$", re.IGNORECASE)


def slot_index(tokenizer, answer_ids: list[int]) -> int | None:
    """Index in ``answer_ids`` of the token that begins the first ``Label:`` value, or None."""
    found = None
    for i in range(len(answer_ids) + 1):
        if _SLOT.search(tokenizer.decode(answer_ids[:i], skip_special_tokens=True)):
            found = i  # the prefix ends at the slot; white-space tokens after "Label:" keep it there
        elif found is not None:
            break
    return found if found is not None and found < len(answer_ids) else None


def label_token_ids(tokenizer, prefix: str) -> dict[str, int] | None:
    """The token that begins each label right after ``prefix`` (the answer text up to the slot)."""
    head = tokenizer.encode(prefix, add_special_tokens=False)
    ids = {}
    for label in LABELS:
        value = label if prefix[-1:].isspace() else f" {label}"
        full = tokenizer.encode(prefix + value, add_special_tokens=False)
        if full[: len(head)] != head or len(full) == len(head):  # the boundary re-merged: take the value alone
            full = head + tokenizer.encode(value, add_special_tokens=False)
        ids[label] = full[len(head)]
    return ids if len(set(ids.values())) == len(LABELS) else None


def _renormalised(logits: torch.Tensor, ids: dict[str, int]) -> float:
    pair = torch.stack([logits[ids[FALSIFIED]], logits[ids[PRISTINE]]]).float()
    return float(torch.softmax(pair, dim=0)[0])


def generated_score(tokenizer, answer_ids: list[int], step_logits) -> float | None:
    """P(falsified) of a generated answer: ``answer_ids`` are the new tokens, ``step_logits[i]`` the logits that
    chose token ``i`` (what ``generate(output_logits=True)`` returns for one row)."""
    slot = slot_index(tokenizer, answer_ids)
    if slot is None:
        return None
    ids = label_token_ids(tokenizer, tokenizer.decode(answer_ids[:slot], skip_special_tokens=True))
    return None if ids is None else _renormalised(step_logits[slot], ids)


@torch.inference_mode()
def label_score(model, processor, prompt: str, image: Image.Image, answer: str) -> float | None:
    """P(falsified) of ``answer`` to ``prompt`` about ``image`` (see the module docstring)."""
    tokenizer = processor.tokenizer
    text = processor.apply_chat_template(user_turn(prompt), add_generation_prompt=True, tokenize=False)
    device = next(model.parameters()).device
    prompt_ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    enc = processor(text=[text + answer], images=[image], return_tensors="pt").to(device)
    ids = enc["input_ids"][0].tolist()
    # Where the answer begins: after the tokens prompt and prompt + answer share. Not len(prompt_ids): a template
    # that ends in white space ("ASSISTANT: ") has that space merged into the answer's first word (" Label").
    prompt_len = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b), len(prompt_ids))
    answer_ids = ids[prompt_len:]
    slot = slot_index(tokenizer, answer_ids)
    if slot is None:
        return None
    ids = label_token_ids(tokenizer, tokenizer.decode(answer_ids[:slot], skip_special_tokens=True))
    if ids is None:
        return None
    model.eval()
    logits = model(**enc).logits[0, prompt_len + slot - 1]  # predicts the token at the slot
    return _renormalised(logits, ids)
