"""A persistent per-item cache of teacher answers, so that labelling never pays twice for the same answer.

Labelling with a 70B teacher costs GPU-hours, and a long run meets crashes, preemptions and ``kill -9``. Every
answer is committed to a SQLite file (WAL mode) the moment it arrives, so a re-run sends requests only for the
items that have no answer yet. SQLite commits are atomic: a killed process loses at most the answers still in
flight and never leaves a half-written row (``synchronous=NORMAL`` in WAL mode survives any process crash; only a
power cut can drop the last few commits, never corrupt the file).

A key hashes everything that determines an answer: the teacher's name, its backend identity (model, revision,
sampling params, structured output), the prompt version, the rendered prompt (caption, evidence) and the image
bytes. Change any of them and the item is asked again. Only answers are stored: an item whose request failed has
no entry, so a re-run retries exactly the failed items.

The cache lives outside DVC's outputs on purpose: ``dvc repro`` deletes a stage's outputs before running it, so a
cache inside ``data/answers/`` would be gone exactly when it is needed. One file per teacher,
``<cache_dir>/<teacher>.sqlite``; copy it, or ``merge`` shard caches into it (see ``stages/label.py --merge``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# When set, the cache directory of every teacher, whatever its params say (e.g. a different disk on each machine).
CACHE_ENV = "MMKD_ANSWER_CACHE"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    teacher TEXT NOT NULL,
    item_id TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created REAL NOT NULL,
    score REAL
)
"""
_COLUMNS = "key, teacher, item_id, text, prompt_tokens, completion_tokens, created, score"


def answer_key(teacher: str, identity: dict, prompt_version: str, prompt: str, image_sha256: str) -> str:
    """The cache key of one answer: a SHA-256 over everything that determines it (see the module docstring)."""
    payload = {
        "teacher": teacher,
        "identity": identity,
        "prompt_version": prompt_version,
        "prompt": prompt,
        "image_sha256": image_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (an item's image, as it is on disk)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir_for(configured: str | None) -> str | None:
    """The cache directory to use: ``$MMKD_ANSWER_CACHE`` when set, else the configured one (None: no cache)."""
    return os.environ.get(CACHE_ENV) or configured


def cache_path(cache_dir: str | Path, teacher: str) -> Path:
    """The cache file of one teacher."""
    return Path(cache_dir) / f"{teacher}.sqlite"


@dataclass(frozen=True)
class CachedAnswer:
    """One stored answer: the teacher's raw text, its token counts when the server reported them, and its score
    (P(falsified), mmkd.scoring) when the backend could read one."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    score: float | None = None


def _add_score_column(db: sqlite3.Connection, schema: str) -> None:
    """Give a cache written before scores were kept its ``score`` column (null: the answers keep no score)."""
    if "score" not in {row[1] for row in db.execute(f"PRAGMA {schema}.table_info(answers)")}:
        db.execute(f"ALTER TABLE {schema}.answers ADD COLUMN score REAL")


class AnswerCache:
    """Answers of one teacher on disk, keyed by ``answer_key``; safe to use from several processes at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)  # autocommit: one row, one commit
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            _add_score_column(self._db, "main")
        except sqlite3.DatabaseError as exc:
            raise ValueError(
                f"answer cache {self.path} cannot be opened ({exc}); move it away to start a fresh cache"
            ) from exc

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """The stored answers among ``keys`` (missing keys are left out)."""
        keys = list(keys)
        found: dict[str, CachedAnswer] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, text, prompt_tokens, completion_tokens, score FROM answers WHERE key IN ({marks})",
                chunk,
            )
            for key, text, prompt_tokens, completion_tokens, score in rows:
                found[key] = CachedAnswer(text, prompt_tokens, completion_tokens, score)
        return found

    def put(self, key: str, teacher: str, item_id: str, answer: CachedAnswer, *, replace: bool = False) -> None:
        """Store one answer, committed at once (the first answer for a key wins, unless ``replace``: a re-asked
        unparsed answer)."""
        self._db.execute(
            f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO answers ({_COLUMNS}) VALUES ({', '.join('?' * 8)})",
            (
                key,
                teacher,
                item_id,
                answer.text,
                answer.prompt_tokens,
                answer.completion_tokens,
                time.time(),
                answer.score,
            ),
        )

    def set_score(self, key: str, score: float) -> None:
        """Record the score of a stored answer that had none (an answer cached before scores were kept)."""
        self._db.execute("UPDATE answers SET score = ? WHERE key = ? AND score IS NULL", (score, key))

    def merge_from(self, other: str | Path) -> int:
        """Copy every answer of another cache file (e.g. a shard run on another machine) in; returns how many."""
        other = Path(other)
        if not other.is_file():
            raise FileNotFoundError(f"answer cache {other} does not exist; pass the .sqlite file of a shard run")
        before = len(self)
        self._db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            columns = {row[1] for row in self._db.execute("PRAGMA other.table_info(answers)")}
            select = _COLUMNS if "score" in columns else _COLUMNS.replace(", score", ", NULL")  # an older shard
            self._db.execute(f"INSERT OR IGNORE INTO answers ({_COLUMNS}) SELECT {select} FROM other.answers")
        finally:
            self._db.execute("DETACH DATABASE other")
        return len(self) - before

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        """Close the file (its WAL is checkpointed into it)."""
        self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
