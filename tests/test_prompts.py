"""Golden strings for every released prompt template, with and without evidence.

A released template never changes (a new wording is a new version), so each version's rendering is pinned here
character for character. Adding a version without adding its golden strings fails `test_every_version_is_pinned`.
"""

from __future__ import annotations

import pytest
from PIL import Image

from mmkd.inference.answering import build_requests
from mmkd.prompts import ANSWER_FORMAT, PROMPTS, get_prompt
from mmkd.schema import items_frame

CAPTION = "Firefighters battle a blaze in the hills above Los Angeles."
ENTITIES = ["Wildfire", "Los Angeles", "Firefighter"]
SEARCH_CAPTIONS = ["Crews fight the Getty fire on Monday.", "A firefighter watches the flames near Brentwood."]

ANSWER = "Answer as: Label: <pristine or falsified>. Rationale: <one sentence>."
V1_TASK = "Does the caption match the image, or is it out of context?"
V1_EVIDENCE_TASK = (
    "You are a fact-checker. A news image is shown with a caption. Decide whether the caption is pristine (it "
    "describes this image) or falsified (the image is real but the caption comes from a different event). Use the "
    "evidence if it is given."
)
V2_TASK = (
    "You are a fact-checker. You are shown a news image and its caption. The caption is pristine if it describes "
    "this image: the people, place and event the image shows. It is falsified if the image is real but used out of "
    "context: the caption comes from a different news event. Compare the caption with what the image shows. Web "
    "evidence from a reverse image search is given below when there is some; it may be noisy. Then give the label "
    "and a one-sentence rationale."
)
V2_NO_EVIDENCE_TASK = (
    "You are a fact-checker. You are shown a news image and its caption. The caption is pristine if it describes "
    "this image: the people, place and event the image shows. It is falsified if the image is real but used out of "
    "context: the caption comes from a different news event. Compare the caption with what the image shows. Then "
    "give the label and a one-sentence rationale."
)
CAPTION_LINE = f"Caption: {CAPTION}"

# version -> (with evidence, never searched (None), searched with no results ([]))
GOLDEN: dict[str, tuple[str, str, str]] = {
    "v1": (
        f"{V1_TASK}\n{CAPTION_LINE}\n{ANSWER}",
        f"{V1_TASK}\n{CAPTION_LINE}\n{ANSWER}",
        f"{V1_TASK}\n{CAPTION_LINE}\n{ANSWER}",
    ),
    "v1-evidence": (
        f"{V1_EVIDENCE_TASK}\n{CAPTION_LINE}\n"
        "Visual entities: Wildfire, Los Angeles, Firefighter\n"
        "Captions of this image found on the web: Crews fight the Getty fire on Monday. | A firefighter watches "
        f"the flames near Brentwood.\n{ANSWER}",
        f"{V1_EVIDENCE_TASK}\n{CAPTION_LINE}\n{ANSWER}",
        f"{V1_EVIDENCE_TASK}\n{CAPTION_LINE}\n{ANSWER}",
    ),
    "v2": (
        f"{V2_TASK}\n{CAPTION_LINE}\n"
        "Entities recognised in the image: Wildfire, Los Angeles, Firefighter\n"
        "Captions of web pages that show this image: Crews fight the Getty fire on Monday. | A firefighter watches "
        f"the flames near Brentwood.\n{ANSWER}",
        f"{V2_TASK}\n{CAPTION_LINE}\n{ANSWER}",
        f"{V2_TASK}\n{CAPTION_LINE}\nWeb evidence: the reverse image search found nothing for this image.\n{ANSWER}",
    ),
    "v2-no-evidence": (
        f"{V2_NO_EVIDENCE_TASK}\n{CAPTION_LINE}\n{ANSWER}",
        f"{V2_NO_EVIDENCE_TASK}\n{CAPTION_LINE}\n{ANSWER}",
        f"{V2_NO_EVIDENCE_TASK}\n{CAPTION_LINE}\n{ANSWER}",
    ),
}


def test_every_version_is_pinned():
    assert set(PROMPTS) == set(GOLDEN), "a template version without golden strings (or a removed version)"
    assert all(version == template.version for version, template in PROMPTS.items())


@pytest.mark.parametrize("version", sorted(GOLDEN))
def test_render_with_evidence(version):
    assert get_prompt(version).render(CAPTION, ENTITIES, SEARCH_CAPTIONS) == GOLDEN[version][0]


@pytest.mark.parametrize("version", sorted(GOLDEN))
def test_render_without_evidence(version):
    assert get_prompt(version).render(CAPTION) == GOLDEN[version][1]
    assert get_prompt(version).render(CAPTION, None, None) == GOLDEN[version][1]


@pytest.mark.parametrize("version", sorted(GOLDEN))
def test_render_with_an_empty_search(version):
    assert get_prompt(version).render(CAPTION, [], []) == GOLDEN[version][2]


def test_partial_evidence_shows_only_what_exists():
    assert get_prompt("v2").render(CAPTION, ["Wildfire"], []) == (
        f"{V2_TASK}\n{CAPTION_LINE}\nEntities recognised in the image: Wildfire\n{ANSWER}"
    )
    assert get_prompt("v2").render(CAPTION, None, ["Crews fight the Getty fire on Monday."]) == (
        f"{V2_TASK}\n{CAPTION_LINE}\nCaptions of web pages that show this image: Crews fight the Getty fire on "
        f"Monday.\n{ANSWER}"
    )


def test_every_template_asks_for_the_parsed_answer_format():
    assert ANSWER == f"Answer as: {ANSWER_FORMAT}"
    for version, template in PROMPTS.items():
        assert template.render(CAPTION).endswith(f"\n{ANSWER}"), version


def test_unknown_version_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown prompt version 'v9'; known versions: \['v1', 'v1-evidence'"):
        get_prompt("v9")


def test_teacher_requests_carry_the_items_evidence(tmp_path):
    """The labelling code renders each item with its own evidence (null evidence: no evidence section)."""
    items = items_frame(
        [
            {
                "id": "a",
                "image_path": str(tmp_path / "a.png"),
                "caption": CAPTION,
                "evidence_entities": ENTITIES,
                "evidence_captions": SEARCH_CAPTIONS,
            },
            {"id": "b", "image_path": str(tmp_path / "b.png"), "caption": CAPTION},
            {
                "id": "c",
                "image_path": str(tmp_path / "c.png"),
                "caption": CAPTION,
                "evidence_entities": [],
                "evidence_captions": [],
            },
        ]
    )
    for name in "abc":
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    requests, skipped = build_requests(items, "v2")
    assert skipped == []
    assert [r.prompt for r in requests] == [GOLDEN["v2"][0], GOLDEN["v2"][1], GOLDEN["v2"][2]]
