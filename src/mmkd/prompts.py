"""Versioned prompt templates for the out-of-context question.

A template's text never changes once released: a new wording gets a new version. The version is a pipeline
param and is recorded with every answer, so changing it invalidates the teacher labels (DVC sees the param).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.schema import FALSIFIED, PRISTINE

# The answer format every template asks for, and the parser accepts (see mmkd.parsing).
ANSWER_FORMAT = f"Label: <{PRISTINE} or {FALSIFIED}>. Rationale: <one sentence>."


@dataclass(frozen=True)
class PromptTemplate:
    """A task statement with slots for the caption and (optionally) web evidence."""

    version: str
    task: str
    uses_evidence: bool

    def render(self, caption: str, entities: list[str] | None = None, search_captions: list[str] | None = None) -> str:
        """The user-turn text for one item (the image is passed separately, before this text)."""
        parts = [self.task, f"Caption: {caption}"]
        if self.uses_evidence:
            if entities:
                parts.append("Visual entities: " + ", ".join(entities))
            if search_captions:
                parts.append("Captions of this image found on the web: " + " | ".join(search_captions))
        parts.append(f"Answer as: {ANSWER_FORMAT}")
        return "\n".join(parts)


PROMPTS: dict[str, PromptTemplate] = {
    # Short task statement; used by the demo models, whose context is small.
    "v1": PromptTemplate(
        version="v1",
        task="Does the caption match the image, or is it out of context?",
        uses_evidence=False,
    ),
    # Paper-style: task statement, caption, and web evidence when the item has it.
    "v1-evidence": PromptTemplate(
        version="v1-evidence",
        task=(
            "You are a fact-checker. A news image is shown with a caption. Decide whether the caption is "
            f"{PRISTINE} (it describes this image) or {FALSIFIED} (the image is real but the caption comes from "
            "a different event). Use the evidence if it is given."
        ),
        uses_evidence=True,
    ),
}


def get_prompt(version: str) -> PromptTemplate:
    """Look up a template by version, with an error that lists the known versions."""
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(f"unknown prompt version {version!r}; known versions: {sorted(PROMPTS)}") from None
