"""The strict answer format: a table of answers and what each must parse to."""

import pytest

from mmkd.parsing import format_answer, parse_answer

CASES = [
    # (answer text, expected label or "unparsed")
    ("Label: falsified. Rationale: the colour is wrong.", "falsified"),
    ("Label: pristine. Rationale: all attributes match.", "pristine"),
    ("label:PRISTINE", "pristine"),  # odd case, no space
    ("  LABEL :   Falsified  \n Rationale:  place differs ", "falsified"),  # odd case and white space
    ("Check: colour red vs red yes; shape circle vs square no. Label: falsified. Rationale: shape.", "falsified"),
    ("Sure! Here is my answer.\nLabel: pristine\nRationale: it fits.\nHope this helps!", "pristine"),  # extra text
    ('{"label": "falsified", "rationale": "wrong place"}', "unparsed"),  # JSON-like: another format
    ("", "unparsed"),  # empty
    ("   \n ", "unparsed"),  # white space only
    (None, "unparsed"),
    ("Label: pristine. Rationale: fine. Label: falsified.", "unparsed"),  # contradictory
    ("Label: pristine or falsified", "unparsed"),  # the instructions echoed back
    ("Label: <pristine or falsified>. Rationale: <one sentence>.", "unparsed"),
    ("Label: fake. Rationale: x", "unparsed"),  # unknown label
    ("Label: **falsified**", "unparsed"),  # markdown is not the format
    ("The caption is falsified.", "unparsed"),  # no Label field: never guessed
    ("Label: falsifiedish", "unparsed"),  # label word must end
    ("Label: pristine. Rationale: the label: pristine fits.", "pristine"),  # repeated but consistent
    ("Label: falsified Rationale: no stop before the rationale", "falsified"),
    ("Label: falsified", "falsified"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_parse_table(text, expected):
    parsed = parse_answer(text)
    if expected == "unparsed":
        assert parsed.status == "unparsed"
        assert parsed.label is None
        assert parsed.reason
    else:
        assert parsed.status == "ok"
        assert parsed.label == expected


def test_rationale_keeps_the_check_preamble_and_the_rationale():
    parsed = parse_answer("Check: shape circle vs circle yes. Label: pristine. Rationale: all match.")
    assert parsed.rationale == "Check: shape circle vs circle yes. all match."


def test_format_round_trips():
    text = format_answer("falsified", "the place is wrong.", check="Check: place city vs forest no.")
    parsed = parse_answer(text)
    assert (parsed.status, parsed.label) == ("ok", "falsified")
    assert "place is wrong" in parsed.rationale
