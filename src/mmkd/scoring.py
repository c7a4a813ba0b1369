"""The detector's score for a local model: P(falsified) at the answer's label slot (mmkd.label_slot defines both).

Two ways to read it, which agree (tests/test_scoring.py): ``generated_score`` reads it from the logits that
generation produced at the slot (free: mmkd.modeling.generate keeps them), and ``label_score`` by one teacher-forced
forward pass over prompt + answer, which also scores an answer taken from a cache that kept no score. A server
reads it from the logprobs it returns (mmkd.labelling.openai_compat), through the same definition.
"""

from __future__ import annotations

import torch
from PIL import Image

from mmkd.label_slot import falsified_probability, generated_score, slot_and_label_ids
from mmkd.modeling import user_turn

__all__ = ["generated_score", "label_score"]


@torch.inference_mode()
def label_score(model, processor, prompt: str, image: Image.Image, answer: str) -> float | None:
    """P(falsified) of ``answer`` to ``prompt`` about ``image``, by one teacher-forced forward pass."""
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
    if (found := slot_and_label_ids(tokenizer, answer_ids)) is None:
        return None
    slot, ids = found
    model.eval()
    logits = model(**enc).logits[0, prompt_len + slot - 1]  # predicts the token at the slot
    return falsified_probability({label: float(logits[i]) for label, i in ids.items()})
