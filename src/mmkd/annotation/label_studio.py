"""Label Studio's side of the queue: the labelling interface (its XML label config), the tasks to import, and
reading its JSON export back into judgements.

Each task shows the image (embedded as a data URL, so Label Studio needs no access to the repository), the
caption, the evidence, and, unless hidden, each teacher's label, score and rationale. ``data.mmkd_id`` carries
mmkd's item id through Label Studio and back.
"""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from xml.sax.saxutils import quoteattr

from mmkd.schema import FALSIFIED, PRISTINE

# The names annotators see -> mmkd's labels; the import maps Label Studio's choices back through it.
DEFAULT_CHOICES = {"Pristine (caption matches the image)": PRISTINE, "Falsified (out of context)": FALSIFIED}
CHOICES_NAME = "label"  # the Choices tag's name: the from_name of every answer in the export


def teacher_field(teacher: str) -> str:
    """The task's data key for one teacher's answer (Label Studio variables are letters, digits and _)."""
    return "teacher_" + "".join(c if c.isalnum() else "_" for c in teacher)


def label_config(teachers: list[str], *, show_teachers: bool, choices: dict[str, str] = DEFAULT_CHOICES) -> str:
    """The XML that creates the Label Studio project: image, caption, evidence, the teachers' answers when shown,
    and one required single choice."""
    parts = [
        "<View>",
        '  <Image name="image" value="$image" maxWidth="600px"/>',
        '  <Header value="Caption"/>',
        '  <Text name="caption" value="$caption"/>',
        '  <Header value="Evidence (web search)"/>',
        '  <Text name="evidence" value="$evidence"/>',
    ]
    if show_teachers:
        parts.append('  <Header value="What the teachers answered (they may be wrong)"/>')
        parts += [f'  <Text name="{teacher_field(t)}" value="${teacher_field(t)}"/>' for t in teachers]
    parts.append(f'  <Choices name="{CHOICES_NAME}" toName="image" choice="single" showInLine="true" required="true">')
    parts += [f"    <Choice value={quoteattr(name)}/>" for name in choices]
    parts += ["  </Choices>", "</View>", ""]
    return "\n".join(parts)


def image_data_url(path: str | Path) -> str:
    """The image file as a data URL, so the task carries its own pixels."""
    kind = mimetypes.guess_type(str(path))[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def evidence_text(item: dict) -> str:
    """The item's evidence as one readable text ('none' when it has none)."""
    lines = []
    if item.get("evidence_entities"):
        lines.append("Entities: " + ", ".join(item["evidence_entities"]))
    if item.get("evidence_captions"):
        lines += ["Caption found: " + c for c in item["evidence_captions"]]
    return "\n".join(lines) or "none"


def answer_text(answer: dict | None) -> str:
    """One teacher's answer as the annotator reads it."""
    if answer is None:
        return "no answer"
    if answer["status"] != "ok":
        return f"no label ({answer['status']}): {answer.get('raw_text') or ''}".strip()
    score = "" if answer.get("score") is None else f" (P(falsified) = {answer['score']:.2f})"
    return f"{answer['label']}{score}: {answer.get('rationale') or ''}".strip()


def task(item: dict, image_file: Path, split: str, purpose: str, rank: int, answers: dict[str, dict | None]) -> dict:
    """One Label Studio task. ``answers``: teacher -> its answer row (empty when the teachers are hidden)."""
    data = {
        "mmkd_id": item["id"],
        "mmkd_split": split,
        "mmkd_purpose": purpose,
        "mmkd_rank": rank,
        "image": image_data_url(image_file),
        "caption": item["caption"],
        "evidence": evidence_text(item),
    }
    data |= {teacher_field(t): answer_text(a) for t, a in answers.items()}
    return {"data": data}


def judgements_from_export(
    export: object, choices: dict[str, str] = DEFAULT_CHOICES
) -> tuple[list[dict], list[str], list[str]]:
    """Judgements from Label Studio's JSON export, the problems that make the file unusable (a task without
    mmkd's id, a choice not in ``choices``), and the skipped or cancelled answers (reported, not imported)."""
    if not isinstance(export, list):
        return [], ["not a Label Studio JSON export (a list of tasks); export the project as JSON"], []
    rows, problems, skipped = [], [], []
    for task_ in export:
        data = task_.get("data", {}) if isinstance(task_, dict) else {}
        item = data.get("mmkd_id")
        if not isinstance(item, str):
            problems.append(f"task {task_.get('id') if isinstance(task_, dict) else task_!r}: no data.mmkd_id")
            continue
        for answer in task_.get("annotations") or []:
            who = annotator_name(answer.get("completed_by"))
            if answer.get("was_cancelled"):
                skipped.append(f"item {item!r}: skipped or cancelled by {who}; not imported")
                continue
            picked = [
                value
                for result in answer.get("result") or []
                if result.get("from_name") == CHOICES_NAME
                for value in (result.get("value") or {}).get("choices") or []
            ]
            if len(picked) != 1 or picked[0] not in choices:
                problems.append(f"item {item!r}: answer by {who} chose {picked}; expected one of {list(choices)}")
                continue
            time = answer.get("updated_at") or answer.get("created_at") or ""
            rows.append({"id": item, "label": choices[picked[0]], "annotator": who, "time": time, "origin": "ls"})
    return rows, problems, skipped


def annotator_name(completed_by: object) -> str:
    """Who answered: Label Studio gives a user id, or a user object with an email."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return f"label-studio-user-{completed_by}"
