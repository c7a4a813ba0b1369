"""The detector's score (``mmkd.scoring.label_score``) on tiny models built from config, against the model's own
logits at the label position computed by hand."""

import math

import pytest
import torch
from PIL import Image

from mmkd.demo.tiny import ARCHITECTURES
from mmkd.label_slot import ENDS_AT_SLOT, LABEL_FIELD, falsified_probability
from mmkd.modeling import generate, load_model, user_turn
from mmkd.scoring import generated_score, label_score

PROMPT = "Caption: Officials unveil a red circle near the city. Does the caption match the image?"
IMAGE = Image.new("RGB", (56, 56), (200, 30, 30))


def by_hand(model, processor, answer: str, before_label: str) -> float:
    """Softmax over the whole vocabulary at the position after ``before_label``, then the two labels' share."""
    text = processor.apply_chat_template(user_turn(PROMPT), add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text + answer], images=[IMAGE], return_tensors="pt")
    upto = processor(text=[text + before_label], images=[IMAGE], return_tensors="pt")["input_ids"].shape[1]
    tok = processor.tokenizer
    head = tok.encode(before_label, add_special_tokens=False)
    first = {
        label: tok.encode(before_label + f" {label}", add_special_tokens=False)[len(head)]
        for label in ("falsified", "pristine")
    }
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits[0, upto - 1].double(), dim=-1)
    return float(probs[first["falsified"]] / (probs[first["falsified"]] + probs[first["pristine"]]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_score_is_the_label_tokens_probability_at_the_slot(tiny_models, arch):
    model, processor = load_model(str(tiny_models[arch]))
    before = "Check: colour red vs red yes. Label:"
    answer = before + " falsified. Rationale: the label says so."
    score = label_score(model, processor, PROMPT, IMAGE, answer)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(by_hand(model, processor, answer, before), abs=1e-5)
    # the slot is the label, whatever the label: the same prefix gives the same score
    assert label_score(model, processor, PROMPT, IMAGE, before + " pristine.") == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_an_answer_without_a_label_has_no_score(tiny_models, arch):
    model, processor = load_model(str(tiny_models[arch]))
    assert label_score(model, processor, PROMPT, IMAGE, "A red circle in a city street.") is None
    assert label_score(model, processor, PROMPT, IMAGE, "Check: nothing. Label:") is None  # nothing after the slot


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_the_score_read_during_generation_equals_the_teacher_forced_one(tiny_models, arch):
    """``generated_score`` reads the logits that chose each new token; fed the teacher-forced logits of the same
    answer (what greedy generation of exactly that answer computes), it gives ``label_score``'s value."""
    model, processor = load_model(str(tiny_models[arch]))
    answer = "Check: colour red vs red yes. Label: pristine. Rationale: same."
    text = processor.apply_chat_template(user_turn(PROMPT), add_generation_prompt=True, tokenize=False)
    prompt_len = processor(text=[text], images=[IMAGE], return_tensors="pt")["input_ids"].shape[1]
    enc = processor(text=[text + answer], images=[IMAGE], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    answer_ids = enc["input_ids"][0, prompt_len:].tolist()
    steps = [logits[prompt_len + i - 1] for i in range(len(answer_ids))]
    score = generated_score(processor.tokenizer, answer_ids, steps)
    assert score == pytest.approx(label_score(model, processor, PROMPT, IMAGE, answer), abs=1e-6)
    # reading one step off gives another number: the index is the slot's, not a neighbour's
    assert generated_score(processor.tokenizer, answer_ids, [steps[0], *steps[:-1]]) != pytest.approx(score)
    assert generated_score(processor.tokenizer, answer_ids[:5], steps[:5]) is None  # the answer ends before a label


def test_generation_returns_a_score_per_answer(tiny_models):
    """``generate(score=generated_score)`` gives (text, score) pairs, the text as without scores; a random tiny model
    writes no ``Label:`` field, so its scores are None (never a guess)."""
    model, processor = load_model(str(tiny_models["llava"]))
    prompts, images = [PROMPT, PROMPT + " Answer."], [IMAGE, IMAGE]
    plain = generate(model, processor, prompts, images, max_new_tokens=6)
    scored = generate(model, processor, prompts, images, max_new_tokens=6, score=generated_score)
    assert [t for t, _ in scored] == plain
    assert all(s is None or 0.0 <= s <= 1.0 for _, s in scored)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_label_first_answer_is_scored_when_the_template_ends_in_a_space(tiny_models, arch):
    """The demo's answers begin with ``Label:``; after a template ending in ``"ASSISTANT: "`` the tokenizer merges
    that space into the first word, so the answer's tokens begin before the prompt's last one."""
    model, processor = load_model(str(tiny_models[arch]))
    answer = "Label: falsified. Rationale: the label says so."
    score = label_score(model, processor, PROMPT, IMAGE, answer)
    assert score is not None and 0.0 <= score <= 1.0
    assert score == pytest.approx(by_hand(model, processor, answer, "Label:"), abs=1e-5)


def test_two_label_renormalisation_by_hand():
    """``falsified_probability``: the two labels' share, from log-probabilities or logits alike (a common offset
    cancels); a label absent from a server's top logprobs has probability 0; neither label gives no score."""
    assert falsified_probability({"falsified": math.log(0.3), "pristine": math.log(0.1)}) == pytest.approx(0.75)
    assert falsified_probability({"falsified": 7.0 + math.log(3.0), "pristine": 7.0}) == pytest.approx(0.75)
    assert falsified_probability({"falsified": -1.0, "pristine": -1.0}) == 0.5
    assert falsified_probability({"falsified": -2.0}) == 1.0
    assert falsified_probability({"pristine": -2.0, "falsified": -math.inf}) == 0.0
    assert falsified_probability({}) is None
    assert falsified_probability({"falsified": 0.0, "pristine": 1e6}) == pytest.approx(0.0)  # no overflow
    assert falsified_probability({"falsified": 1e6, "pristine": 0.0}) == 1.0


def test_the_slot_pattern_ends_at_the_value_of_the_first_label_field():
    """The free-text slot: after ``Label:`` and any white space, case-insensitive, only as a whole word."""
    assert ENDS_AT_SLOT.search("Check: x. Label:") and ENDS_AT_SLOT.search("label :  ")
    assert not ENDS_AT_SLOT.search("Label: f") and not ENDS_AT_SLOT.search("Mislabel:")
    found = LABEL_FIELD.search("Rationale: r. LABEL:\tfalsified")
    assert found and found.group(1) == "\t"
