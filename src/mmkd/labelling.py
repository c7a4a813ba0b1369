"""Ask a model about every item and record one answer per item: parsed, unparsed, failed or skipped.

Used for teacher labelling and for scoring the student at evaluation, so both go through one code path.
Bad items (missing or unreadable image, empty caption) are recorded as ``skipped`` with a message naming the
item and the fix; the other items are still answered. With an answer cache (mmkd.answer_cache), every answer is
stored the moment it arrives and items already answered are not asked again; failed items are not stored, so the
next run retries exactly those.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import polars as pl
from tqdm.auto import tqdm

from mmkd.answer_cache import AnswerCache, CachedAnswer, answer_key, file_sha256
from mmkd.inference.base import InferenceBackend, InferenceReply, InferenceRequest
from mmkd.items import BadItem, check_caption, load_image
from mmkd.parsing import parse_answer
from mmkd.prompts import get_prompt
from mmkd.schema import answers_frame

log = logging.getLogger(__name__)


@dataclass
class LabelTally:
    """What labelling did, summed over calls: items, answers from the cache, items sent, failures, tokens.

    Token totals cover every answer of the run, cached or new, so the cost of a set of labels is known even when
    it was paid for over several resumed runs; the backend's own usage counts only what this run sent.
    """

    items: int = 0
    cache_hits: int = 0
    reused: int = 0  # answers taken from the previous outputs (``previous``), not from the cache
    sent: int = 0
    errors: int = 0
    skipped: int = 0
    answer_prompt_tokens: int = 0
    answer_completion_tokens: int = 0

    def count_tokens(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.answer_prompt_tokens += prompt_tokens or 0
        self.answer_completion_tokens += completion_tokens or 0


def build_requests(items: pl.DataFrame, prompt_version: str) -> tuple[list[InferenceRequest], list[dict]]:
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
        requests.append(InferenceRequest(item_id=row["id"], image=image, prompt=prompt, image_path=row["image_path"]))
    return requests, skipped


def shard_items(items: pl.DataFrame, index: int, count: int) -> pl.DataFrame:
    """The items of shard ``index`` of ``count``: a stable split by a hash of the item id (same on every machine)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    keep = [int(hashlib.sha256(i.encode()).hexdigest()[:16], 16) % count == index for i in items["id"]]
    return items.filter(pl.Series(keep, dtype=pl.Boolean))


def label_items(
    backend: InferenceBackend,
    items: pl.DataFrame,
    *,
    source: str,
    prompt_version: str,
    chunk_size: int = 512,
    cache: AnswerCache | None = None,
    tally: LabelTally | None = None,
    previous: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Answers of ``backend`` to every item, in item order, in the answers schema.

    Items go to the backend ``chunk_size`` at a time, so only one chunk of images is in memory at once. With a
    ``cache``, answered items are taken from it and each new answer is stored as soon as it arrives. ``previous``
    (answers this labelling wrote before, e.g. pulled from a DVC remote) is a second source: a parsed or unparsed
    answer whose ``answer_key`` matches is reused, and copied into the cache. Failed answers are never reused.
    ``tally``, when given, is updated with what happened.
    """
    tally = tally if tally is not None else LabelTally()
    keyed = cache is not None or previous is not None
    identity = backend.identity() if keyed else None
    reusable = _reusable(previous)
    rows: dict[str, dict] = {}
    bar = tqdm(total=len(items), desc=source, unit="item", dynamic_ncols=True, disable=len(items) == 0)
    keys: dict[str, str] = {}

    def on_reply(reply: InferenceReply) -> None:
        rows[reply.item_id] = _answer_row(reply, keys.get(reply.item_id))
        if reply.error is not None:
            tally.errors += 1
        else:
            tally.count_tokens(reply.prompt_tokens, reply.completion_tokens)
            if cache is not None:
                answer = CachedAnswer(reply.text, reply.prompt_tokens, reply.completion_tokens)
                cache.put(keys[reply.item_id], source, reply.item_id, answer)
        bar.update(1)
        bar.set_postfix(cached=tally.cache_hits, errors=tally.errors, refresh=False)

    try:
        for start in range(0, len(items), chunk_size):
            requests, skipped = build_requests(items.slice(start, chunk_size), prompt_version)
            for row in skipped:
                log.warning("%s: skipped %s", source, row["error"])
                rows[row["id"]] = row
            tally.skipped += len(skipped)
            bar.update(len(skipped))
            if keyed:
                keys = {
                    r.item_id: answer_key(source, identity, prompt_version, r.prompt, file_sha256(r.image_path))
                    for r in requests
                }
                found = cache.get_many(keys.values()) if cache is not None else {}
                for r in requests:
                    key = keys[r.item_id]
                    hit = found.get(key)
                    if hit is None and (hit := reusable.get(key)) is not None:
                        found[key] = hit
                        tally.reused += 1
                        if cache is not None:
                            cache.put(key, source, r.item_id, hit)
                    elif hit is not None:
                        tally.cache_hits += 1
                    if hit is not None:
                        reply = InferenceReply(
                            item_id=r.item_id,
                            text=hit.text,
                            prompt_tokens=hit.prompt_tokens,
                            completion_tokens=hit.completion_tokens,
                        )
                        rows[r.item_id] = _answer_row(reply, key)
                        tally.count_tokens(hit.prompt_tokens, hit.completion_tokens)
                        bar.update(1)
                requests = [r for r in requests if keys[r.item_id] not in found]
            tally.sent += len(requests)
            if requests:
                backend.answer(requests, on_reply)
    finally:
        bar.close()
    tally.items += len(items)
    ordered = [rows[i] | {"source": source, "prompt_version": prompt_version} for i in items["id"]]
    answers = answers_frame(ordered)
    log.info("%s: %s", source, dict(answers["status"].value_counts().sort("status").iter_rows()))
    return answers


def _prices(backend: InferenceBackend) -> tuple[float | None, float | None]:
    config = getattr(backend, "config", None)
    return (
        getattr(config, "price_per_million_prompt_tokens", None),
        getattr(config, "price_per_million_completion_tokens", None),
    )


def _cost(prices: tuple[float | None, float | None], prompt_tokens: int | None, completion_tokens: int | None):
    if prices == (None, None) or prompt_tokens is None:
        return None
    return round(((prompt_tokens * (prices[0] or 0)) + ((completion_tokens or 0) * (prices[1] or 0))) / 1e6, 6)


def teacher_metrics(backend: InferenceBackend, tally: LabelTally) -> dict:
    """What the labels are and cost, for ``metrics/teachers/<teacher>.json`` (tracked): the same for the same
    answers, whether they came from the server or the answer cache, on any machine.

    Tokens and cost cover every answer, cached ones included (what the labels cost in total, possibly paid over
    several resumed runs); they are null for a backend that does not count tokens (a local model). The cost is set
    when the backend has prices per million tokens (``price_per_million_{prompt,completion}_tokens``).
    """
    counted = backend.usage.prompt_tokens is not None
    prompt, completion = (tally.answer_prompt_tokens, tally.answer_completion_tokens) if counted else (None, None)
    return {
        "items": tally.items,
        "errors": tally.errors,
        "skipped": tally.skipped,
        "answers_prompt_tokens": prompt,
        "answers_completion_tokens": completion,
        "answers_cost": _cost(_prices(backend), prompt, completion),
    }


def run_accounting(backend: InferenceBackend, tally: LabelTally, wall_time_s: float) -> dict:
    """What this run did, for the run log (untracked: it differs between a first run and a resumed one):
    cache hits, items sent, HTTP requests (retries included; for a local model, items generated), this run's
    tokens and cost, and wall time."""
    usage = backend.usage
    return {
        "items": tally.items,
        "cache_hits": tally.cache_hits,
        "reused": tally.reused,
        "sent": tally.sent,
        "errors": tally.errors,
        "requests": usage.requests,
        "retries": usage.retries,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost": _cost(_prices(backend), usage.prompt_tokens, usage.completion_tokens),
        "wall_time_s": round(wall_time_s, 3),
    }


def _reusable(previous: pl.DataFrame | None) -> dict[str, CachedAnswer]:
    """answer_key -> the answer, for the reusable rows of earlier answers (parsed or unparsed, with a key)."""
    if previous is None or "answer_key" not in previous.columns:
        return {}
    rows = previous.filter(
        pl.col("status").is_in(["ok", "unparsed"])
        & pl.col("answer_key").is_not_null()
        & pl.col("raw_text").is_not_null()
    )
    return {
        r["answer_key"]: CachedAnswer(r["raw_text"], r["prompt_tokens"], r["completion_tokens"])
        for r in rows.iter_rows(named=True)
    }


def _answer_row(reply: InferenceReply, key: str | None = None) -> dict:
    tokens = {"answer_key": key, "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
    if reply.error is not None:
        return {
            "id": reply.item_id,
            "status": "error",
            "error": reply.error,
            "raw_text": reply.text,
            "answer_key": key,
        }
    parsed = parse_answer(reply.text)
    return {
        "id": reply.item_id,
        "label": parsed.label,
        "rationale": parsed.rationale,
        "raw_text": reply.text,
        "status": parsed.status,
        "error": parsed.reason,
        **tokens,
    }
