"""The example program of an exported model's card: answer and score image-caption pairs with plain transformers.

The card (mmkd.deploy.card) embeds this file with the label-slot definitions of mmkd.label_slot written out in place
of their import, so that the program runs where mmkd is not installed; tests/test_export.py runs it so, against
``mmkd predict``. Usage: ``python example.py MODEL_DIR photo.jpg "A caption"``.
"""

import json
import re
import sys

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmkd.label_slot import LABEL_FIELD, generated_score


def load(model_dir):
    """The model, its processor and its ``mmkd_export.json``."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()  # add device_map="auto" on a GPU
    processor = AutoProcessor.from_pretrained(model_dir)
    with open(f"{model_dir}/mmkd_export.json") as f:
        return model, processor, json.load(f)


def chat(processor, info, caption):
    """The chat text of one item: the image and the prompt in one user turn, as the model was trained."""
    prompt = info["prompt"]["template"].replace("{caption}", caption)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


@torch.inference_mode()
def answer(model, processor, info, images, captions):
    """(answer, score) per item: greedy, left padding, the score read from generation's own logits."""
    chats = [chat(processor, info, c) for c in captions]
    enc = processor(text=chats, images=images, padding=True, padding_side="left", return_tensors="pt")
    enc = enc.to(model.device)
    out = model.generate(**enc, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, enc["input_ids"].shape[1] :]
    texts = processor.batch_decode(new, skip_special_tokens=True)
    tokenizer = processor.tokenizer
    return [
        (text.strip(), generated_score(tokenizer, new[row].tolist(), [step[row] for step in out.logits]))
        for row, text in enumerate(texts)
    ]


def decide(info, text, score):
    """The label: the score against the shipped threshold; without either, the label as written, or None."""
    threshold = info["threshold"]["value"]
    if score is not None and threshold is not None:
        return "falsified" if score >= threshold else "pristine"
    # mmkd.parsing is stricter (one exact label, no contradiction); no label means unparsed: do not guess one.
    found = re.search(LABEL_FIELD.pattern + r"(pristine|falsified)\b", text, LABEL_FIELD.flags)
    return found.group(2).lower() if found else None


def main(model_dir, image_path, caption):
    """Print the label, the score and the answer for one image and caption."""
    model, processor, info = load(model_dir)
    text, score = answer(model, processor, info, [Image.open(image_path).convert("RGB")], [caption])[0]
    print(decide(info, text, score), score, text)


if __name__ == "__main__":
    main(*sys.argv[1:4])
