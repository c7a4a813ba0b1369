"""Tests for labelling: one answer per item in the answers schema and in item order, bad items skipped with a
message that names them, and teacher params checked before any model is loaded."""

from __future__ import annotations

import polars as pl
import pytest

from mmkd.demo.tiny import ARCHITECTURES
from mmkd.inference.answer_cache import AnswerCache
from mmkd.inference.answering import LabelTally, label_items, shard_items
from mmkd.inference.local import LocalBackend, LocalConfig
from mmkd.labelling.backends import make_backend
from mmkd.schema import ANSWER_SCHEMA, LABELS, answers_frame, items_frame, read_items

PROMPT_VERSION = "v1"


@pytest.fixture(scope="module")
def teachers(tiny_models) -> dict[str, LocalBackend]:
    # Few new tokens: the random models only need to answer something, not something sensible.
    return {
        arch: LocalBackend(LocalConfig(model=str(tiny_models[arch]), device="cpu", max_new_tokens=8), name=arch)
        for arch in ARCHITECTURES
    }


def check_answered(answers: pl.DataFrame, ids: list[str]) -> None:
    """Good items got an answer: parsed (label one of LABELS) or kept unparsed with a reason, never guessed."""
    for row in answers.filter(pl.col("id").is_in(ids)).iter_rows(named=True):
        assert row["status"] in ("ok", "unparsed"), row
        assert row["raw_text"] is not None
        if row["status"] == "ok":
            assert row["label"] in LABELS and row["error"] is None
        else:
            assert row["label"] is None and row["error"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_answer_per_item_in_item_order(teachers, world_dir, arch):
    items = read_items(world_dir / "test.parquet").head(5).reverse()  # not sorted by id: order must be kept
    answers = label_items(teachers[arch], items, source=arch, prompt_version=PROMPT_VERSION)
    assert answers.schema == pl.Schema(ANSWER_SCHEMA)
    assert answers["id"].to_list() == items["id"].to_list()
    assert answers["source"].to_list() == [arch] * len(items)
    assert answers["prompt_version"].to_list() == [PROMPT_VERSION] * len(items)
    check_answered(answers, items["id"].to_list())


def test_bad_items_are_skipped_and_the_rest_answered(teachers, world_dir, tmp_path):
    good = read_items(world_dir / "test.parquet").head(3).to_dicts()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png at all")
    missing = tmp_path / "missing.png"
    bad = {
        "no-image": {"id": "no-image", "image_path": str(missing), "caption": good[0]["caption"]},
        "corrupt": {"id": "corrupt", "image_path": str(corrupt), "caption": good[0]["caption"]},
        "no-caption": {"id": "no-caption", "image_path": good[0]["image_path"], "caption": "   "},
    }
    # Bad items between good ones, so a bad item cannot shift the answers of its neighbours.
    items = items_frame([good[0], bad["no-image"], good[1], bad["corrupt"], bad["no-caption"], good[2]])

    answers = label_items(teachers["llava"], items, source="llava", prompt_version=PROMPT_VERSION)
    # Chunks of one item: some chunks hold only a bad item and send nothing to the backend. Same answers.
    chunked = label_items(teachers["llava"], items, source="llava", prompt_version=PROMPT_VERSION, chunk_size=1)
    assert chunked.equals(answers)

    assert answers.schema == pl.Schema(ANSWER_SCHEMA)
    assert answers["id"].to_list() == items["id"].to_list()
    skipped = {r["id"]: r for r in answers.filter(pl.col("status") == "skipped").iter_rows(named=True)}
    assert set(skipped) == set(bad)
    for item_id, row in skipped.items():
        assert repr(item_id) in row["error"], row["error"]
        assert row["label"] is None and row["raw_text"] is None
    assert str(missing) in skipped["no-image"]["error"] and "does not exist" in skipped["no-image"]["error"]
    assert str(corrupt) in skipped["corrupt"]["error"] and "not a readable image" in skipped["corrupt"]["error"]
    assert "caption is empty" in skipped["no-caption"]["error"]
    check_answered(answers, [g["id"] for g in good])


def test_only_bad_items_gives_only_skipped_answers(teachers, tmp_path):
    items = items_frame([{"id": "x", "image_path": str(tmp_path / "nope.png"), "caption": "A red circle."}])
    answers = label_items(teachers["qwen2_vl"], items, source="q", prompt_version=PROMPT_VERSION)
    assert answers["status"].to_list() == ["skipped"]


def test_unknown_backend_names_the_teacher():
    with pytest.raises(
        ValueError, match=r"teacher 'big_teacher': unknown backend 'tgi'; use one of \['local', 'openai'\]"
    ):
        make_backend("big_teacher", {"backend": "tgi", "model": "x", "prompt_version": "v1"})


def test_unknown_setting_names_the_teacher():
    with pytest.raises(ValueError, match=r"teacher 'big_teacher': bad settings for backend 'local'.*temperature"):
        make_backend("big_teacher", {"backend": "local", "model": "x", "prompt_version": "v1", "temperature": 0.7})


def test_impossible_local_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size and max_new_tokens must be >= 1"):
        LocalConfig(model="x", batch_size=0)


def test_local_teacher_with_a_cache_asks_each_item_once(tiny_models, world_dir, tmp_path):
    """The local backend can use the answer cache too; its key holds the weights' content, not their path."""
    items = read_items(world_dir / "test.parquet").head(4)
    params = {"model": str(tiny_models["llava"]), "prompt_version": PROMPT_VERSION, "max_new_tokens": 8}
    teacher = make_backend("llava", params)
    with AnswerCache(tmp_path / "llava.sqlite") as cache:
        first = label_items(teacher, items, source="llava", prompt_version=PROMPT_VERSION, cache=cache)
        assert teacher.usage.requests == 4 and len(cache) == 4
        tally = LabelTally()
        again = label_items(teacher, items, source="llava", prompt_version=PROMPT_VERSION, cache=cache, tally=tally)
        assert again.equals(first)
        assert teacher.usage.requests == 4 and (tally.cache_hits, tally.sent) == (4, 0)  # nothing generated
        longer = make_backend("llava", params | {"max_new_tokens": 9})  # another setting: another answer
        label_items(longer, items.head(1), source="llava", prompt_version=PROMPT_VERSION, cache=cache)
        assert longer.usage.requests == 1 and len(cache) == 5


def test_previous_answers_are_reused_by_key_and_failures_never(tiny_models, world_dir):
    """Without a cache, a run reuses the answers of an earlier one whose key matches (same model, settings, prompt,
    image), loads no model when it needs none, and never reuses a failed answer."""
    items = read_items(world_dir / "test.parquet").head(4)
    params = {"model": str(tiny_models["llava"]), "prompt_version": PROMPT_VERSION, "max_new_tokens": 8}
    teacher = make_backend("llava", params)
    first = label_items(teacher, items, source="llava", prompt_version=PROMPT_VERSION, previous=answers_frame([]))
    assert first["answer_key"].null_count() == 0 and first["answer_key"].n_unique() == 4
    fresh = make_backend("llava", params)
    tally = LabelTally()
    again = label_items(fresh, items, source="llava", prompt_version=PROMPT_VERSION, previous=first, tally=tally)
    assert again.equals(first)
    assert (tally.reused, tally.sent, fresh.usage.requests) == (4, 0, 0) and fresh._loaded is None  # no model
    failed = first.with_columns(
        pl.when(pl.col("id") == items["id"][0]).then(pl.lit("error")).otherwise("status").alias("status")
    )
    other = make_backend("llava", params)
    label_items(other, items, source="llava", prompt_version=PROMPT_VERSION, previous=failed, tally=LabelTally())
    assert other.usage.requests == 1  # only the failed item is asked again
    longer = make_backend("llava", params | {"max_new_tokens": 9})  # another setting: another key, asked again
    label_items(longer, items, source="llava", prompt_version=PROMPT_VERSION, previous=first)
    assert longer.usage.requests == 4


NO_TORCH_RUN = """
import sys
from mmkd.inference.answering import LabelTally, label_items
from mmkd.labelling.backends import make_backend
from mmkd.schema import read_answers, read_items
items, previous, model = read_items(sys.argv[1]), read_answers(sys.argv[2]), sys.argv[3]
tally = LabelTally()
teacher = make_backend("llava", {"model": model, "prompt_version": "v1", "max_new_tokens": 8})
label_items(teacher, items, source="llava", prompt_version="v1", previous=previous, tally=tally)
print(tally.reused, tally.sent, "torch" in sys.modules, "transformers" in sys.modules)
"""


def test_a_run_with_every_answer_reused_never_imports_torch(tiny_models, world_dir, tmp_path):
    """A labelling run that asks nothing (every answer reused, as in a no-op `dvc repro` of `label@*`) does not pay
    for importing torch and transformers: in a fresh process, neither is imported; with one answer missing, both."""
    import subprocess
    import sys

    items_file = tmp_path / "items.parquet"
    items = read_items(world_dir / "test.parquet").head(3)
    items.write_parquet(items_file)
    params = {"model": str(tiny_models["llava"]), "prompt_version": PROMPT_VERSION, "max_new_tokens": 8}
    teacher = make_backend("llava", params)
    first = label_items(teacher, items, source="llava", prompt_version=PROMPT_VERSION, previous=answers_frame([]))
    runs = {}
    for name, previous in {"all": first, "one missing": first.head(2)}.items():
        previous.write_parquet(tmp_path / f"{name}.parquet")
        args = [sys.executable, "-c", NO_TORCH_RUN, str(items_file), str(tmp_path / f"{name}.parquet")]
        done = subprocess.run([*args, str(tiny_models["llava"])], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = done.stdout.split()
    assert runs == {"all": ["3", "0", "False", "False"], "one missing": ["2", "1", "True", "True"]}


def test_shards_are_disjoint_stable_and_cover_every_item(world_dir):
    items = read_items(world_dir / "train.parquet")
    shards = [shard_items(items, i, 3) for i in range(3)]
    ids = [i for s in shards for i in s["id"]]
    assert sorted(ids) == sorted(items["id"]) and all(len(s) for s in shards)
    assert shard_items(items.reverse(), 1, 3)["id"].sort().to_list() == shards[1]["id"].sort().to_list()
    with pytest.raises(ValueError, match="need 0 <= index < count"):
        shard_items(items, 3, 3)


def test_labelling_settings_are_not_passed_to_the_backend():
    with pytest.raises(ValueError, match="teacher 'x': max_errors must be >= 0"):
        make_backend("x", {"model": "m", "prompt_version": "v1", "weights": "m", "cache_dir": "c", "max_errors": -1})


def test_the_error_message_names_the_cache_even_when_it_is_empty(tmp_path):
    """An answer cache that holds nothing yet (every item failed) is still where the next run looks."""
    from mmkd.labelling.backends import LabelSettings
    from mmkd.labelling.teachers import LabelStageError, TeacherRun, error_budget

    run = TeacherRun(tally=LabelTally(items=3, errors=3))
    with AnswerCache(tmp_path / "srv.sqlite") as cache:
        assert len(cache) == 0
        with pytest.raises(LabelStageError, match=f"3 of 3 items failed.*the answer cache {cache.path}"):
            error_budget("srv", run, LabelSettings(prompt_version="v1"), cache)
    accepted = error_budget("srv", run, LabelSettings(prompt_version="v1", max_errors=3), None)
    assert "no cache (set cache_dir" in accepted


def test_when_no_server_is_left_cached_answers_are_still_used_and_the_rest_are_recorded_unsent(world_dir, tmp_path):
    """A run against a server that is down: the answers in the cache still fill the table, the items sent before
    the server is taken out fail with the transport's reason, and the rest are recorded as not sent (with why),
    not asked one by one."""
    from fault_server import FaultInjectingChatServer

    items = read_items(world_dir / "train.parquet").head(10)
    with FaultInjectingChatServer() as server:
        params = {"backend": "openai", "model": "fake", "base_url": server.base_url, "prompt_version": "v1"}
        params |= {"max_concurrency": 1, "max_retries": 3, "timeout": 2}
        with AnswerCache(tmp_path / "srv.sqlite") as cache:
            label_items(make_backend("srv", params), items.head(4), source="srv", prompt_version="v1", cache=cache)
    backend = make_backend("srv", params)  # the server is gone: nothing listens on its port
    with AnswerCache(tmp_path / "srv.sqlite") as cache:
        answers = label_items(backend, items, source="srv", prompt_version="v1", cache=cache, tally=LabelTally())
    assert answers["status"].to_list() == ["ok"] * 4 + ["error"] * 6
    sent = [e for e in answers["error"].to_list()[4:] if not e.startswith("not sent: ")]
    unsent = [e for e in answers["error"].to_list()[4:] if e.startswith("not sent: ")]
    assert sent and all("connection failed" in e for e in sent), sent
    assert len(unsent) >= 4 and all("teacher 'srv': no server responded" in e for e in unsent), unsent
    assert backend.usage.requests == 2  # taken out after two refused connections


def test_an_answer_cached_without_a_score_is_scored_by_the_local_model(tiny_models, world_dir, tmp_path):
    """An answer cached before scores were kept is scored by one teacher-forced pass (no generation) and the score
    is written back; an unparsed answer stays unscored."""
    from mmkd.inference.answer_cache import CachedAnswer
    from mmkd.inference.answering import item_prompt
    from mmkd.items import load_image
    from mmkd.prompts import get_prompt
    from mmkd.scoring import label_score

    items = read_items(world_dir / "test.parquet").head(2)
    params = {"model": str(tiny_models["llava"]), "prompt_version": PROMPT_VERSION, "max_new_tokens": 8}
    teacher = make_backend("llava", params)
    with AnswerCache(tmp_path / "llava.sqlite") as cache:
        first = label_items(teacher, items, source="llava", prompt_version=PROMPT_VERSION, cache=cache)
        texts = ["Check: x. Label: falsified. Rationale: y.", "no answer format"]
        for key, item_id, text in zip(first["answer_key"], first["id"], texts, strict=True):
            cache.put(key, "llava", item_id, CachedAnswer(text), replace=True)
        fresh = make_backend("llava", params)
        again = label_items(fresh, items, source="llava", prompt_version=PROMPT_VERSION, cache=cache)
        assert fresh.usage.requests == 0  # scored, not asked again
        assert again["status"].to_list() == ["ok", "unparsed"]
        row = items.row(0, named=True)
        image = load_image(row["id"], row["image_path"])
        prompt = item_prompt(get_prompt(PROMPT_VERSION), row)
        expected = label_score(fresh.model, fresh.processor, prompt, image, texts[0])
        assert again["score"][0] == pytest.approx(expected, abs=1e-6) and again["score"][1] is None
        assert cache.get_many([first["answer_key"][0]])[first["answer_key"][0]].score == pytest.approx(expected)
