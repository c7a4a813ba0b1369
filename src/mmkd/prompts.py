"""Versioned prompt templates for the out-of-context question.

A template's text never changes once released: a new wording gets a new version (``tests/test_prompts.py`` pins
the exact text of every version). The version is a pipeline param, set per model: ``teachers.<name>.prompt_version``
for each teacher (so two teachers may be asked differently) and ``student.prompt_version`` for the student, whose
training prompts and evaluation prompts are the same. It is recorded with every answer, so changing it re-runs that
teacher's labelling and everything downstream (DVC sees the param).

Versions:

- ``v1``: a one-line question, no evidence. The demo models use it (their context is small).
- ``v1-evidence``: a fact-checker task statement; shows the item's evidence when it has some.
- ``v2``: the paper-style default for real data (NewsCLIPpings): what pristine and falsified mean, the caption, the
  web evidence of a reverse image search (entities recognised in the image, captions of pages that show it), and
  the answer format. An item that was searched but has no results says so; an item never searched shows no
  evidence section.
- ``v2-no-evidence``: the same task statement without any evidence, for data without evidence or as an ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.schema import FALSIFIED, PRISTINE

# The answer format every template asks for, and the parser accepts (see mmkd.parsing).
ANSWER_FORMAT = f"Label: <{PRISTINE} or {FALSIFIED}>. Rationale: <one sentence>."


@dataclass(frozen=True)
class PromptTemplate:
    """A task statement with slots for the caption and (optionally) web evidence.

    The evidence fields' defaults are the wording of the v1 templates; later versions set their own."""

    version: str
    task: str
    uses_evidence: bool
    entities_label: str = "Visual entities"
    captions_label: str = "Captions of this image found on the web"
    captions_separator: str = " | "
    # Shown when the item was searched and nothing was found (empty evidence lists, not null); None: show nothing.
    no_evidence: str | None = None

    def render(self, caption: str, entities: list[str] | None = None, search_captions: list[str] | None = None) -> str:
        """The user-turn text for one item (the image is passed separately, before this text).

        ``entities`` and ``search_captions`` are the item's evidence: None when the item was never searched, an
        empty list when the search found nothing."""
        parts = [self.task, f"Caption: {caption}"]
        if self.uses_evidence:
            parts += self._evidence_lines(entities, search_captions)
        parts.append(f"Answer as: {ANSWER_FORMAT}")
        return "\n".join(parts)

    def _evidence_lines(self, entities: list[str] | None, search_captions: list[str] | None) -> list[str]:
        lines = []
        if entities:
            lines.append(f"{self.entities_label}: " + ", ".join(entities))
        if search_captions:
            lines.append(f"{self.captions_label}: " + self.captions_separator.join(search_captions))
        searched = entities is not None or search_captions is not None
        if not lines and searched and self.no_evidence is not None:
            lines.append(self.no_evidence)
        return lines


# The v2 task statement; the evidence-free variant drops the sentence about evidence.
_V2_TASK = (
    "You are a fact-checker. You are shown a news image and its caption. The caption is {pristine} if it "
    "describes this image: the people, place and event the image shows. It is {falsified} if the image is real "
    "but used out of context: the caption comes from a different news event. Compare the caption with what the "
    "image shows.{evidence} Then give the label and a one-sentence rationale."
)
_V2_EVIDENCE = " Web evidence from a reverse image search is given below when there is some; it may be noisy."

PROMPTS: dict[str, PromptTemplate] = {
    # Short task statement; used by the demo models, whose context is small.
    "v1": PromptTemplate(
        version="v1",
        task="Does the caption match the image, or is it out of context?",
        uses_evidence=False,
    ),
    # Fact-checker task statement, caption, and web evidence when the item has it.
    "v1-evidence": PromptTemplate(
        version="v1-evidence",
        task=(
            "You are a fact-checker. A news image is shown with a caption. Decide whether the caption is "
            f"{PRISTINE} (it describes this image) or {FALSIFIED} (the image is real but the caption comes from "
            "a different event). Use the evidence if it is given."
        ),
        uses_evidence=True,
    ),
    # Paper-style default for real data: definitions of both labels, evidence of a reverse image search.
    "v2": PromptTemplate(
        version="v2",
        task=_V2_TASK.format(pristine=PRISTINE, falsified=FALSIFIED, evidence=_V2_EVIDENCE),
        uses_evidence=True,
        entities_label="Entities recognised in the image",
        captions_label="Captions of web pages that show this image",
        captions_separator=" | ",
        no_evidence="Web evidence: the reverse image search found nothing for this image.",
    ),
    # The same task without evidence (no evidence collected, or an ablation).
    "v2-no-evidence": PromptTemplate(
        version="v2-no-evidence",
        task=_V2_TASK.format(pristine=PRISTINE, falsified=FALSIFIED, evidence=""),
        uses_evidence=False,
    ),
}


def get_prompt(version: str) -> PromptTemplate:
    """Look up a template by version, with an error that lists the known versions."""
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(f"unknown prompt version {version!r}; known versions: {sorted(PROMPTS)}") from None
