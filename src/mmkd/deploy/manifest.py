"""``mmkd_export.json``: what an exported model is asked, how its answer and score are read, and what was merged.

The file lets code without mmkd use the model as ``mmkd predict`` does: the prompt template, the labels and answer
format, the two label tokens at the label slot (mmkd.label_slot), the operating threshold, and the SHA-256 of the
base model and of each adapter merged into it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

from mmkd.deploy import ExportError
from mmkd.deploy.vllm_layout import VLLM_TOWER
from mmkd.inference.local import _dir_sha256
from mmkd.label_slot import label_token_ids
from mmkd.modeling import adapter_info
from mmkd.prompts import ANSWER_FORMAT, get_prompt
from mmkd.schema import FALSIFIED, LABELS, PRISTINE

EXPORT_INFO = "mmkd_export.json"
EXPORT_FORMAT = 1  # bump when a key of mmkd_export.json changes meaning

# The text of an answer up to its label slot, when the answer starts as the format asks ("Label:").
SLOT_PREFIX = ANSWER_FORMAT.split("<", 1)[0].rstrip()


def resolve_threshold(explicit: float | None, adapter: str | Path) -> dict:
    """The threshold to ship, by ``mmkd predict``'s precedence (``operating_threshold``): ``explicit`` > the value
    the adapter recorded on val (with its rule) > none (null: the label the model wrote, i.e. score >= 0.5)."""
    from mmkd.deploy.predict import operating_threshold
    from mmkd.evaluation.thresholds import THRESHOLD_KEY

    try:
        value = operating_threshold(str(adapter), explicit)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if value is None:
        return {"value": None, "source": None}
    if explicit is not None:
        return {"value": float(value), "source": "argument"}
    return {**adapter_info(adapter)[THRESHOLD_KEY], "value": float(value), "source": "adapter"}


def chain_hashes(base: str | Path, chain: list[str]) -> dict:
    """SHA-256 of the base model directory and of each adapter directory (oldest first), with their paths."""
    return {
        "base": {"path": str(base), "sha256": _dir_sha256(base)},
        "adapters": [{"path": str(a), "sha256": _dir_sha256(a)} for a in chain],
    }


def prompt_info(version: str) -> dict:
    """The prompt template as text: ``template`` with ``{caption}`` to replace (and, for templates that show
    evidence, the pieces that build the evidence lines)."""
    prompt = get_prompt(version)
    info = {"version": version, "template": prompt.render("{caption}"), "uses_evidence": prompt.uses_evidence}
    if prompt.uses_evidence:
        fields = dataclasses.asdict(prompt)
        info |= {k: fields[k] for k in ("entities_label", "captions_label", "captions_separator", "no_evidence")}
        info["template_with_evidence"] = prompt.render("{caption}", ["{entities}"], ["{search_captions}"])
    return info


def score_info(tokenizer) -> dict:
    """How the score is read, and the two label tokens right after ``Label:`` in this tokenizer."""
    ids = label_token_ids(tokenizer, SLOT_PREFIX)
    return {
        "name": f"P({FALSIFIED})",
        "reads": (
            "the next-token probabilities at the answer's label slot (the first token of the value of its first "
            f"'{SLOT_PREFIX}' field), renormalised over the two label tokens: "
            f"p({FALSIFIED}) / (p({FALSIFIED}) + p({PRISTINE}))"
        ),
        "slot_prefix": SLOT_PREFIX,
        "token_ids": ids,  # null: both labels begin with the same token here, so the slot cannot tell them apart
        "tokens": {label: tokenizer.decode([i]) for label, i in ids.items()} if ids else None,
    }


def export_info(
    *,
    base: str,
    chain: list[str],
    prompt_version: str,
    tokenizer,
    threshold: dict,
    dtype: str,
    model,
    processor_class: str,
    max_new_tokens: int,
    max_image_pixels: int | None,
    vllm_tower: bool,
) -> dict:
    """The contents of ``mmkd_export.json``: what the model is asked, how its answer and score are read, and what
    was merged into it."""
    return {
        "format": EXPORT_FORMAT,
        "mmkd_version": importlib.metadata.version("mmkd"),
        "model_type": model.config.model_type,
        "architecture": type(model).__name__,
        "processor_class": processor_class,
        "dtype": dtype,
        "prompt": prompt_info(prompt_version),
        "labels": list(LABELS),
        "positive_label": FALSIFIED,
        "answer_format": ANSWER_FORMAT,
        "score": score_info(tokenizer),
        "threshold": threshold
        | {"rule": threshold.get("rule"), "meaning": f"score >= value: {FALSIFIED}; null: 0.5 (the likelier label)"},
        "generation": {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens, "padding_side": "left"},
        "max_image_pixels": max_image_pixels,
        "weights_layout": {"vision_tower": VLLM_TOWER + "*"} if vllm_tower else None,
        "merged": chain_hashes(base, chain),
    }
