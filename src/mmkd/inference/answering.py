"""Ask a model about every item and record one answer per item: parsed, unparsed, failed or skipped.

Used for teacher labelling and for scoring the student at evaluation, so both go through one code path.
Bad items (missing or unreadable image, empty caption) are recorded as ``skipped`` with a message naming the
item and the fix; the other items are still answered. With an answer cache (mmkd.inference.answer_cache), every
answer is stored the moment it arrives and items already answered are not asked again; failed items are not stored, so
the next run retries exactly those.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from mmkd.inference.answer_cache import AnswerCache, CachedAnswer, answer_key, file_sha256
from mmkd.inference.base import BackendStopped, InferenceBackend, InferenceReply, InferenceRequest
from mmkd.items import BadItem, check_caption, load_image
from mmkd.parsing import parse_answer
from mmkd.prompts import get_prompt
from mmkd.schema import answers_frame

log = logging.getLogger(__name__)

FAILED_EXAMPLES = 5  # failed items a failure message names


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
    failed: list[tuple[str, str]] = field(default_factory=list)  # the first few failed items: (id, error)

    def count_tokens(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.answer_prompt_tokens += prompt_tokens or 0
        self.answer_completion_tokens += completion_tokens or 0


def item_prompt(template, row: dict) -> str:
    """The rendered prompt of one item row, or ``BadItem`` when its caption is missing."""
    caption = check_caption(row["id"], row["caption"])
    return template.render(caption, row.get("evidence_entities"), row.get("evidence_captions"))


def build_requests(items: pl.DataFrame, prompt_version: str) -> tuple[list[InferenceRequest], list[dict]]:
    """Render a request per usable item; return the requests and the ``skipped`` answer rows for bad items."""
    template = get_prompt(prompt_version)
    requests, skipped = [], []
    for row in items.iter_rows(named=True):
        try:
            prompt = item_prompt(template, row)
            image = load_image(row["id"], row["image_path"])
        except BadItem as exc:
            skipped.append({"id": row["id"], "status": "skipped", "error": str(exc)})
            continue
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
    chunk_size: int = 64,
    cache: AnswerCache | None = None,
    tally: LabelTally | None = None,
    previous: pl.DataFrame | None = None,
    retry_unparsed: bool = False,
) -> pl.DataFrame:
    """Answers of ``backend`` to every item, in item order, in the answers schema.

    The backend pulls requests from one stream, as it can take them: an item's image is read only when the
    backend is about to ask about it, and no batch waits for the slowest request of the one before.
    ``chunk_size`` items at a time are looked up in the cache together. With a ``cache``, answered items are
    taken from it and each new answer is stored as soon as it arrives. ``previous`` (answers this labelling wrote
    before, e.g. pulled from a DVC remote) is a second source: a parsed or unparsed answer whose ``answer_key``
    matches is reused, and copied into the cache. Failed answers are never reused. With ``retry_unparsed``, an
    answer found in either place that does not parse (empty, or not in the answer format) is asked again, and the
    new answer replaces it in the cache. When the backend stops (``BackendStopped``: no server left), the items
    not yet asked are recorded as errors with its reason. ``tally``, when given, is updated with what happened.
    """
    keyed = cache is not None or previous is not None  # keys (an image hash each) only where answers are looked up
    run = _Run(
        source=source,
        cache=cache,
        tally=tally if tally is not None else LabelTally(),
        bar=tqdm(total=len(items), desc=source, unit="item", dynamic_ncols=True, disable=len(items) == 0),
        identity=backend.identity() if keyed else None,
        rescore=getattr(backend, "score_answer", None),  # a local model scores an answer cached without a score
    )
    requests = _requests(run, items, prompt_version, chunk_size, _reusable(previous), retry_unparsed)
    try:
        backend.answer(requests, run.record_reply)
    except BackendStopped as exc:  # the rest still comes from the cache; what would be sent is recorded as failed
        run.stopped = str(exc)
        for _ in requests:
            pass
    finally:
        run.bar.close()
    run.tally.items += len(items)
    ordered = [run.rows[i] | {"source": source, "prompt_version": prompt_version} for i in items["id"]]
    answers = answers_frame(ordered)
    log.info("%s: %s", source, dict(answers["status"].value_counts().sort("status").iter_rows()))
    return answers


def _requests(
    run: _Run,
    items: pl.DataFrame,
    prompt_version: str,
    chunk_size: int,
    reusable: dict[str, CachedAnswer],
    retry_unparsed: bool,
) -> Iterator[InferenceRequest]:
    """The requests to send, one at a time, in item order. An item answered before (in the cache, else in
    ``reusable``) is recorded from there instead, unless it is an unparsed answer to ask again; a bad item is
    recorded as skipped; once the backend has stopped, the rest are recorded as not sent."""
    template = get_prompt(prompt_version)
    for start in range(0, len(items), chunk_size):
        chunk = []  # (row, prompt) of the usable items
        for row in items.slice(start, chunk_size).iter_rows(named=True):
            try:
                prompt = item_prompt(template, row)
            except BadItem as exc:
                run.skip(row["id"], str(exc))
                continue
            if run.identity is not None:
                path = Path(row["image_path"])
                digest = file_sha256(path) if path.is_file() else None  # else load_image below says what is wrong
                run.keys[row["id"]] = answer_key(run.source, run.identity, prompt_version, prompt, digest)
            chunk.append((row, prompt))
        cached = run.cache.get_many(run.keys[r["id"]] for r, _ in chunk) if run.cache is not None and chunk else {}

        for row, prompt in chunk:
            key = run.keys.get(row["id"])
            earlier, from_cache = cached.get(key), True
            if earlier is None:
                earlier, from_cache = reusable.get(key), False
            if earlier is not None and retry_unparsed and parse_answer(earlier.text).status != "ok":
                run.retried.add(key)  # asked again below; the new answer replaces it in the cache
            elif earlier is not None:
                run.record_earlier(row, prompt, key, earlier, from_cache=from_cache)
                continue
            if run.stopped is not None:  # the backend can take no more: failed, without reading the image
                run.record_reply(InferenceReply(item_id=row["id"], error=f"not sent: {run.stopped}"))
                continue
            try:
                image = load_image(row["id"], row["image_path"])
            except BadItem as exc:
                run.skip(row["id"], str(exc))
                continue
            run.tally.sent += 1
            yield InferenceRequest(item_id=row["id"], image=image, prompt=prompt, image_path=row["image_path"])


@dataclass
class _Run:
    """What one ``label_items`` call has recorded so far, and what it needs to record more."""

    source: str
    cache: AnswerCache | None
    tally: LabelTally
    bar: tqdm
    identity: dict | None  # the backend's, for answer keys; None: answers are not looked up (no cache, no previous)
    rescore: Callable[[InferenceRequest, str], float | None] | None
    rows: dict[str, dict] = field(default_factory=dict)  # item id -> its answer row
    keys: dict[str, str] = field(default_factory=dict)  # item id -> answer_key
    retried: set[str] = field(default_factory=set)  # keys whose unparsed answer is asked again
    stopped: str | None = None  # why the backend stopped taking requests

    def record_reply(self, reply: InferenceReply) -> None:
        """A reply from the backend: its row, the tally, and (when it did not fail) the cache."""
        self.rows[reply.item_id] = _answer_row(reply, self.keys.get(reply.item_id))
        if reply.error is not None:
            self.tally.errors += 1
            if len(self.tally.failed) < FAILED_EXAMPLES:
                self.tally.failed.append((reply.item_id, reply.error))
        else:
            self.tally.count_tokens(reply.prompt_tokens, reply.completion_tokens)
            if self.cache is not None:
                key = self.keys[reply.item_id]
                answer = CachedAnswer(reply.text, reply.prompt_tokens, reply.completion_tokens, reply.score)
                self.cache.put(key, self.source, reply.item_id, answer, replace=key in self.retried)
        self.bar.update(1)
        self.bar.set_postfix(cached=self.tally.cache_hits, errors=self.tally.errors, refresh=False)

    def record_earlier(self, row: dict, prompt: str, key: str, earlier: CachedAnswer, *, from_cache: bool) -> None:
        """An answer found in the cache, or in the previous outputs (then copied into the cache); one without a
        score gets one where the backend can score it."""
        item_id = row["id"]
        if from_cache:
            self.tally.cache_hits += 1
        else:
            self.tally.reused += 1
            if self.cache is not None:
                self.cache.put(key, self.source, item_id, earlier)
        if earlier.score is None and self.rescore is not None and parse_answer(earlier.text).status == "ok":
            earlier = self._rescored(row, prompt, key, earlier)
        reply = InferenceReply(
            item_id, earlier.text, None, earlier.prompt_tokens, earlier.completion_tokens, earlier.score
        )
        self.rows[item_id] = _answer_row(reply, key)
        self.tally.count_tokens(earlier.prompt_tokens, earlier.completion_tokens)
        self.bar.update(1)

    def _rescored(self, row: dict, prompt: str, key: str, earlier: CachedAnswer) -> CachedAnswer:
        try:
            image = load_image(row["id"], row["image_path"])
        except BadItem:
            return earlier  # stays unscored; the image is checked again when the item is asked
        score = self.rescore(InferenceRequest(row["id"], image, prompt, row["image_path"]), earlier.text)
        if self.cache is not None and score is not None:
            self.cache.set_score(key, score)
        return CachedAnswer(earlier.text, earlier.prompt_tokens, earlier.completion_tokens, score)

    def skip(self, item_id: str, error: str) -> None:
        """A bad item (no caption, no readable image): recorded as skipped, with the message that names it."""
        log.warning("%s: skipped %s", self.source, error)
        self.rows[item_id] = {"id": item_id, "status": "skipped", "error": error}
        self.tally.skipped += 1
        self.bar.update(1)


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
        r["answer_key"]: CachedAnswer(r["raw_text"], r["prompt_tokens"], r["completion_tokens"], r.get("score"))
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
        "score": reply.score if parsed.status == "ok" else None,  # an unparsed answer has no score, never a guess
        **tokens,
    }
