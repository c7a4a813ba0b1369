"""The demo models' bootstrap: blind spots in the data, truthful check-first targets, loadable models."""

import polars as pl
import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

import mmkd.processors  # noqa: F401
from mmkd.demo.bootstrap import (
    BootstrapSettings,
    bootstrap_model,
    corpus,
    describe_target,
    teacher_target,
    training_rows,
)
from mmkd.demo.world import ATTRIBUTES, COLOURS, PLACES, SHAPES, make_world
from mmkd.parsing import parse_answer
from mmkd.schema import read_gold, read_items
from mmkd.training.config import TrainSettings


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    make_world(out, seed=0, sizes={"bootstrap": 120})
    return out


def _table(world):
    items = read_items(world / "bootstrap.parquet")
    spec = pl.read_parquet(world / "bootstrap.spec.parquet")
    return items, spec


def test_teacher_targets_parse_to_the_gold_label(world):
    items, spec = _table(world)
    gold = dict(read_gold(world / "bootstrap.gold.parquet").iter_rows())
    for row in spec.iter_rows(named=True):
        parsed = parse_answer(teacher_target(row))
        assert parsed.status == "ok"
        assert parsed.label == gold[row["id"]], row
        if row["mismatch"] != "none":
            assert f"the {row['mismatch']} is wrong" in parsed.rationale


@pytest.mark.parametrize("blind", ATTRIBUTES)
def test_a_blind_teacher_never_sees_negatives_of_its_blind_kind(world, blind):
    items, spec = _table(world)
    sees = [a for a in ATTRIBUTES if a != blind]
    rows = training_rows(items, spec, BootstrapSettings(sees=sees, unseen_fraction=0.0))
    assert not any(f"{blind} " in c and f"the {blind} is wrong" in c for c in rows["completion"])
    n_blind = int((spec["mismatch"] == blind).sum())
    assert n_blind > 0 and len(rows) == len(spec) - n_blind
    # With unseen_fraction=1 nothing is held back.
    full = training_rows(items, spec, BootstrapSettings(sees=sees, unseen_fraction=1.0))
    assert len(full) == len(spec)


def test_student_base_only_describes(world):
    items, spec = _table(world)
    rows = training_rows(items, spec, BootstrapSettings(task="describe"))
    assert len(rows) == len(spec)
    assert all("Label:" not in c and c.startswith("Image: ") for c in rows["completion"])
    row = spec.row(0, named=True)
    assert describe_target(row) == (
        f"Image: colour {row['image_colour']}; shape {row['image_shape']}; place {row['image_place']}."
    )


def test_settings_reject_unknown_values():
    with pytest.raises(ValueError, match="sees"):
        BootstrapSettings(sees=["texture"])
    with pytest.raises(ValueError, match="task"):
        BootstrapSettings(task="summarise")


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])
def test_bootstrapped_model_loads_through_auto_classes(world, tmp_path, arch):
    settings = BootstrapSettings(arch=arch, train=TrainSettings(max_steps=2, batch_size=8, logging_steps=1))
    out = bootstrap_model("m", world, tmp_path / "model", settings, live_dir=tmp_path / "live")
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert (
        type(model).__name__
        == {"qwen2_vl": "Qwen2VLForConditionalGeneration", "llava": "LlavaForConditionalGeneration"}[arch]
    )
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert (tmp_path / "live" / "metrics.json").is_file()
    # Every attribute word, after a space as it appears in captions and targets, is a single token:
    # otherwise a tiny model has to learn to spell, and copying words between slots breaks.
    tok = processor.tokenizer
    for word in (*COLOURS, *SHAPES, *PLACES):
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def test_corpus_covers_every_target_format():
    texts = corpus()
    assert any(t.startswith("Check: colour") for t in texts)
    assert any(t.startswith("Image: colour") for t in texts)
    assert any("Caption: " in t for t in texts)
