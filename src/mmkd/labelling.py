"""Ask a model about every item and record one answer per item: parsed, unparsed, failed or skipped.

Used for teacher labelling and for scoring the student at evaluation, so both go through one code path.
Bad items (missing or unreadable image, empty caption) are recorded as ``skipped`` with a message naming the
item and the fix; the other items are still answered.
"""

from __future__ import annotations

import logging

import polars as pl

from mmkd.items import BadItem, check_caption, load_image
from mmkd.parsing import parse_answer
from mmkd.prompts import get_prompt
from mmkd.schema import answers_frame
from mmkd.teachers.base import TeacherBackend, TeacherReply, TeacherRequest

log = logging.getLogger(__name__)


def build_requests(items: pl.DataFrame, prompt_version: str) -> tuple[list[TeacherRequest], list[dict]]:
    """Render a request per usable item; return the requests and the ``skipped`` answer rows for bad items."""
    template = get_prompt(prompt_version)
    requests, skipped = [], []
    for row in items.iter_rows(named=True):
        try:
            caption = check_caption(row["id"], row["caption"])
            image = load_image(row["id"], row["image_path"])
        except BadItem as exc:
            skipped.append({"id": row["id"], "status": "skipped", "error": str(exc)})
            continue
        prompt = template.render(caption, row.get("evidence_entities"), row.get("evidence_captions"))
        requests.append(TeacherRequest(item_id=row["id"], image=image, prompt=prompt))
    return requests, skipped


def label_items(
    backend: TeacherBackend, items: pl.DataFrame, *, source: str, prompt_version: str, chunk_size: int = 512
) -> pl.DataFrame:
    """Answers of ``backend`` to every item, in item order, in the answers schema.

    Items go to the backend ``chunk_size`` at a time, so only one chunk of images is in memory at once.
    """
    rows: dict[str, dict] = {}
    for start in range(0, len(items), chunk_size):
        requests, skipped = build_requests(items.slice(start, chunk_size), prompt_version)
        for row in skipped:
            log.warning("%s: skipped %s", source, row["error"])
            rows[row["id"]] = row
        for reply in backend.answer(requests) if requests else []:
            rows[reply.item_id] = _answer_row(reply)
    ordered = [rows[i] | {"source": source, "prompt_version": prompt_version} for i in items["id"]]
    answers = answers_frame(ordered)
    log.info("%s: %s", source, dict(answers["status"].value_counts().sort("status").iter_rows()))
    return answers


def _answer_row(reply: TeacherReply) -> dict:
    if reply.error is not None:
        return {"id": reply.item_id, "status": "error", "error": reply.error, "raw_text": reply.text}
    parsed = parse_answer(reply.text)
    return {
        "id": reply.item_id,
        "label": parsed.label,
        "rationale": parsed.rationale,
        "raw_text": reply.text,
        "status": parsed.status,
        "error": parsed.reason,
    }
