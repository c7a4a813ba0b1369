"""The annotation queue: which items need a person, in the order a label is worth most.

First the items the method selected for a gold label (by default, those the teachers disagree on), the strongest
disagreement first (the largest gap between two teachers' scores); then a seeded sample of val and test items for
evaluation where those splits have no gold. Items already labelled (by the dataset, or resolved from people's
judgements) are never queued again; items whose annotators tie come back first, for adjudication. A budget caps
the queue.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import polars as pl

PURPOSES = ("adjudication", "selection", "baseline", "evaluation")  # queue order


@dataclass(frozen=True)
class QueuedItem:
    """One item that needs a person: why (``purpose``), and its priority within that purpose (higher first)."""

    id: str
    split: str
    purpose: str
    priority: float | None  # selection: the largest score gap between two teachers; None: unknown (an unscored
    # or unparsed answer), queued after the scored ones


def score_gap(scores: list[float | None]) -> float | None:
    """The largest difference between two teachers' P(falsified); None if any teacher's score is missing."""
    if len(scores) < 2 or any(s is None for s in scores):
        return None
    return max(abs(a - b) for a, b in itertools.combinations(scores, 2))


def teacher_scores(answers: dict[str, pl.DataFrame]) -> dict[str, list[float | None]]:
    """item id -> each teacher's score (None where an answer has none), teachers in name order."""
    by_item: dict[str, list[float | None]] = {}
    for name in sorted(answers):
        frame = answers[name]
        scores = frame["score"] if "score" in frame.columns else pl.Series([None] * len(frame))
        for item, score, status in zip(frame["id"], scores, frame["status"], strict=True):
            by_item.setdefault(item, []).append(score if status == "ok" else None)
    return by_item


def build_queue(
    selected: list[str],
    train_answers: dict[str, pl.DataFrame],
    labelled: set[str],
    disputed: set[str],
    eval_candidates: dict[str, list[str]],
    eval_sample: dict[str, int],
    *,
    budget: int | None = None,
    seed: int = 0,
    baseline_ids: list[str] = (),
) -> list[QueuedItem]:
    """The queue, in order. ``selected``: train ids the method needs gold for; ``labelled``: ids that already have
    a gold label; ``disputed``: ids whose annotators tie; ``eval_candidates``: per split (val, test), the ids with
    no gold label from the dataset; ``eval_sample``: how many of them each split needs labelled by people."""
    if budget is not None and budget < 0:
        raise ValueError(f"annotation budget must be >= 0 or null, got {budget}")
    scores = teacher_scores(train_answers)
    queue = [QueuedItem(i, "train", "adjudication", None) for i in sorted(disputed & set(selected))]
    todo = [i for i in selected if i not in labelled and i not in disputed]
    gaps = {i: score_gap(scores.get(i, [])) for i in todo}
    todo.sort(key=lambda i: (gaps[i] is None, -(gaps[i] or 0.0), i))  # strongest disagreement first, then unknown
    queue += [QueuedItem(i, "train", "selection", gaps[i]) for i in todo]
    queued = {q.id for q in queue}
    extra = [i for i in dict.fromkeys(baseline_ids) if i not in labelled and i not in queued]
    queue += [QueuedItem(i, "train", "baseline", None) for i in extra]  # the baselines' own labels, after the method's
    for split in sorted(eval_candidates):
        sample = evaluation_sample(eval_candidates[split], eval_sample.get(split, 0), seed=seed, split=split)
        queue += [QueuedItem(i, split, "adjudication", None) for i in sample if i in disputed]
        queue += [QueuedItem(i, split, "evaluation", None) for i in sample if i not in labelled and i not in disputed]
    return queue if budget is None else queue[:budget]


def evaluation_sample(candidates: list[str], size: int, *, seed: int, split: str) -> list[str]:
    """The ``size`` items of a split that people label for evaluation: the first of a seeded shuffle of every
    candidate, so that the sample stays the same across exports while labels come in."""
    order = sorted(candidates)
    random.Random(f"{seed}:{split}").shuffle(order)
    return order[: max(size, 0)]


def queue_frame(queue: list[QueuedItem]) -> pl.DataFrame:
    """The queue as a table (rank from 1), for the plain JSONL/CSV export and for checking an import against."""
    schema = {"rank": pl.Int64, "id": pl.String, "split": pl.String, "purpose": pl.String, "priority": pl.Float64}
    rows = [{"rank": n, **q.__dict__} for n, q in enumerate(queue, start=1)]
    return pl.DataFrame(rows, schema=schema)
