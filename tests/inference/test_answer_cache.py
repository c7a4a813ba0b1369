"""The persistent answer cache: keys cover everything that determines an answer, a `kill -9` in the middle of
writing leaves a readable file with only whole answers, and shard caches merge."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from mmkd.inference.answer_cache import CACHE_ENV, AnswerCache, CachedAnswer, answer_key, cache_dir_for

BASE = {
    "teacher": "t",
    "identity": {"model": "m", "temperature": 0.0},
    "prompt_version": "v1",
    "prompt": "p",
    "image_sha256": "abc",
}


@pytest.mark.parametrize(
    "change",
    [
        {"teacher": "u"},
        {"identity": {"model": "m2", "temperature": 0.0}},
        {"identity": {"model": "m", "temperature": 0.7}},
        {"prompt_version": "v1-evidence"},
        {"prompt": "p2"},
        {"image_sha256": "abd"},
    ],
)
def test_key_changes_with_everything_that_determines_an_answer(change):
    assert answer_key(**BASE) == answer_key(**dict(BASE))  # deterministic
    assert answer_key(**(BASE | change)) != answer_key(**BASE)


def test_answers_are_stored_and_found_again(tmp_path):
    with AnswerCache(tmp_path / "t.sqlite") as cache:
        cache.put("k1", "t", "id1", CachedAnswer("Label: pristine.", 10, 3))
        cache.put("k1", "t", "id1", CachedAnswer("a later answer", 1, 1))  # the first answer for a key wins
    with AnswerCache(tmp_path / "t.sqlite") as cache:
        assert cache.get_many(["k1", "k2"]) == {"k1": CachedAnswer("Label: pristine.", 10, 3)}
        assert len(cache) == 1


WRITER = """
import sys
from mmkd.inference.answer_cache import AnswerCache, CachedAnswer
cache = AnswerCache(sys.argv[1])
i = 0
while True:
    cache.put(f"k{i}", "t", f"id{i}", CachedAnswer("x" * 2000 + f" answer {i}", i, i))
    i += 1
"""


def test_kill_9_while_writing_leaves_whole_answers_only(tmp_path):
    path = tmp_path / "t.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            if path.exists() and _count(path) >= 2000:
                break
            time.sleep(0.05)
        os.kill(writer.pid, signal.SIGKILL)  # mid-write, most likely
    finally:
        writer.wait()
    with AnswerCache(path) as cache:
        assert cache._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = len(cache)
        assert n >= 2000
        found = cache.get_many(f"k{i}" for i in range(n + 5))
        assert len(found) == n  # exactly the first n answers, each whole
        for i in range(n):
            assert found[f"k{i}"] == CachedAnswer("x" * 2000 + f" answer {i}", i, i)
        cache.put("new", "t", "new", CachedAnswer("still writable"))
        assert len(cache) == n + 1


def _count(path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # the writer has not created the table yet
        return 0


def test_shard_caches_merge(tmp_path):
    with AnswerCache(tmp_path / "a.sqlite") as a, AnswerCache(tmp_path / "b.sqlite") as b:
        a.put("k1", "t", "1", CachedAnswer("one"))
        b.put("k1", "t", "1", CachedAnswer("one again"))
        b.put("k2", "t", "2", CachedAnswer("two", 5, 1))
    with AnswerCache(tmp_path / "a.sqlite") as a:
        assert a.merge_from(tmp_path / "b.sqlite") == 1
        assert a.get_many(["k1", "k2"]) == {"k1": CachedAnswer("one"), "k2": CachedAnswer("two", 5, 1)}
        with pytest.raises(FileNotFoundError, match="pass the .sqlite file of a shard run"):
            a.merge_from(tmp_path / "missing.sqlite")


def test_a_file_that_is_not_a_cache_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "t.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match=r"cannot be opened .* move it away to start a fresh cache"):
        AnswerCache(path)


def test_environment_variable_overrides_the_configured_directory(monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_dir_for(".answer_cache") == ".answer_cache"
    assert cache_dir_for(None) is None
    monkeypatch.setenv(CACHE_ENV, "/scratch/answers")
    assert cache_dir_for(".answer_cache") == "/scratch/answers"
    assert cache_dir_for(None) == "/scratch/answers"


OLD_SCHEMA = """CREATE TABLE answers (key TEXT PRIMARY KEY, teacher TEXT NOT NULL, item_id TEXT NOT NULL,
    text TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL NOT NULL)"""


def old_cache(path, key: str, text: str) -> None:
    """A cache file as mmkd wrote it before answers kept a score."""
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA)
    db.execute("INSERT INTO answers VALUES (?, 't', 'id', ?, 5, 2, 0.0)", (key, text))
    db.commit()
    db.close()


def test_scores_are_stored_and_an_older_cache_gains_the_column(tmp_path):
    old_cache(tmp_path / "old.sqlite", "k0", "Label: pristine.")
    with AnswerCache(tmp_path / "old.sqlite") as cache:  # opened as is: its answers keep no score
        assert cache.get_many(["k0"]) == {"k0": CachedAnswer("Label: pristine.", 5, 2, None)}
        cache.set_score("k0", 0.25)
        cache.set_score("k0", 0.75)  # a score once set stays: the same answer has one score
        cache.put("k1", "t", "id1", CachedAnswer("Label: falsified.", 1, 1, 0.9))
        assert cache.get_many(["k0", "k1"]) == {
            "k0": CachedAnswer("Label: pristine.", 5, 2, 0.25),
            "k1": CachedAnswer("Label: falsified.", 1, 1, 0.9),
        }
    old_cache(tmp_path / "shard.sqlite", "k2", "Label: pristine.")  # a shard run with an older mmkd
    with AnswerCache(tmp_path / "main.sqlite") as cache:
        assert cache.merge_from(tmp_path / "shard.sqlite") == 1
        assert cache.get_many(["k2"])["k2"].score is None
