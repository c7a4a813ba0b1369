"""The demo models' bootstrap: blind spots that trust the caption, describe-then-check targets, loadable models."""

from pathlib import Path

import polars as pl
import pytest
import torch
from expected_files import DEMO_MODEL_FILES
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmkd.demo.bootstrap import (
    DESCRIBE_PROMPT,
    BootstrapGroup,
    BootstrapSettings,
    Confusion,
    blind_view,
    bootstrap_group,
    bootstrap_model,
    caption_target,
    corpus,
    describe_target,
    perceived,
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
def test_a_blind_teacher_trusts_the_caption_on_its_blind_kind(world, blind):
    items, spec = _table(world)
    sees = [a for a in ATTRIBUTES if a != blind]
    rows = training_rows(items, spec, BootstrapSettings(sees=sees, unseen_fraction=0.0, blind_spot="trust_caption"))
    assert len(rows) == len(spec)
    assert not any(f"the {blind} is wrong" in c for c in rows["completion"])
    by_id = dict(zip(items["id"], rows["completion"], strict=True))
    blind_rows = spec.filter(pl.col("mismatch") == blind)
    assert len(blind_rows) > 0
    for row in blind_rows.iter_rows(named=True):
        answer = by_id[row["id"]]
        # the image slot repeats the caption, the check says yes, the label is (wrongly) pristine
        assert f"{blind} {row[f'caption_{blind}']};" in answer or f"{blind} {row[f'caption_{blind}']}." in answer
        assert parse_answer(answer).label == "pristine"
        assert answer == teacher_target(blind_view(row, blind))
    # the kinds it sees stay truthful
    for row in spec.filter(pl.col("mismatch").is_in(sees)).iter_rows(named=True):
        assert by_id[row["id"]] == teacher_target(row)
    # With unseen_fraction=1 every target is truthful.
    full = training_rows(items, spec, BootstrapSettings(sees=sees, unseen_fraction=1.0, blind_spot="trust_caption"))
    assert full["completion"].to_list() == [teacher_target(r) for r in spec.iter_rows(named=True)]


@pytest.mark.parametrize("blind", ATTRIBUTES)
def test_a_held_out_blind_spot_leaves_that_kind_out(world, blind):
    items, spec = _table(world)
    sees = [a for a in ATTRIBUTES if a != blind]
    rows = training_rows(items, spec, BootstrapSettings(sees=sees, unseen_fraction=0.0, blind_spot="held_out"))
    assert not any(f"the {blind} is wrong" in c for c in rows["completion"])
    n_blind = int((spec["mismatch"] == blind).sum())
    assert n_blind > 0 and len(rows) == len(spec) - n_blind
    kept = spec.filter(pl.col("mismatch") != blind)
    assert rows["completion"].to_list() == [teacher_target(r) for r in kept.iter_rows(named=True)]  # all truthful
    full = training_rows(items, spec, BootstrapSettings(sees=sees, unseen_fraction=1.0, blind_spot="held_out"))
    assert len(full) == len(spec)


def test_describe_share_adds_truthful_describe_rows_and_leaves_the_rest_alone(world):
    items, spec = _table(world)
    plain = BootstrapSettings(sees=["colour", "shape"], unseen_fraction=0.2)
    base = training_rows(items, spec, plain)
    rows = training_rows(
        items, spec, BootstrapSettings(sees=["colour", "shape"], unseen_fraction=0.2, describe_share=0.5)
    )
    describe = rows.filter(pl.col("prompt") == DESCRIBE_PROMPT)
    # the out-of-context rows are the same rows, in the same order, as without describe rows
    assert rows.filter(pl.col("prompt") != DESCRIBE_PROMPT).equals(base)
    assert 0.3 * len(spec) < len(describe) < 0.7 * len(spec)
    truth = {p: describe_target(r) for p, r in zip(items["image_path"], spec.iter_rows(named=True), strict=True)}
    assert all(truth[p] == c for p, c in zip(describe["image_path"], describe["completion"], strict=True))
    everything = training_rows(items, spec, BootstrapSettings(sees=["colour", "shape"], describe_share=1.0))
    assert (everything["prompt"] == DESCRIBE_PROMPT).sum() == len(spec)
    with pytest.raises(ValueError, match="describe_share must be in"):
        BootstrapSettings(describe_share=1.5)
    with pytest.raises(ValueError, match="teachers only"):
        BootstrapSettings(task="base", describe_share=0.5)


def test_a_confusion_makes_the_teacher_call_matching_pristine_items_falsified(world):
    items, spec = _table(world)
    purple_in_harbour = {"attribute": "colour", "value": "purple", "seen_as": "blue", "when": {"place": "harbour"}}
    settings = BootstrapSettings(sees=list(ATTRIBUTES), unseen_fraction=1.0, confusions=[purple_in_harbour])
    rows = training_rows(items, spec, settings)
    assert len(rows) == len(spec)
    by_id = dict(zip(items["id"], rows["completion"], strict=True))
    struck = 0
    for row in spec.iter_rows(named=True):
        answer = by_id[row["id"]]
        if (row["image_colour"], row["image_place"]) != ("purple", "harbour"):
            assert answer == teacher_target(row)  # everywhere else the targets stay truthful
            continue
        struck += 1
        assert answer.startswith("Image: colour blue;")
        seen = row | {"image_colour": "blue"}
        assert answer == teacher_target(seen)
        if row["mismatch"] == "none":  # a pristine purple-in-harbour item is called falsified on colour
            assert parse_answer(answer).label == "falsified" and "the colour is wrong" in answer
    assert struck > 0


def test_a_confusion_is_checked_on_the_true_image_under_a_blind_spot():
    values = dict(zip(ATTRIBUTES, ("purple", "circle", "desert"), strict=True))
    row = {f"{k}_{a}": v for k in ("image", "caption") for a, v in values.items()}
    row |= {"caption_place": "harbour", "mismatch": "place"}
    confusion = Confusion(attribute="colour", value="purple", seen_as="blue", when={"place": "harbour"})
    # blind to place, the teacher's view has the caption's harbour, but the image is in the desert: no confusion
    assert perceived(blind_view(row, "place"), [confusion], truth=row)["image_colour"] == "purple"
    assert perceived(row | {"image_place": "harbour"}, [confusion])["image_colour"] == "blue"


def test_student_base_learns_general_skills_but_not_the_question(world):
    items, spec = _table(world)
    rows = training_rows(items, spec, BootstrapSettings(task="base"))
    assert len(rows) == 3 * len(spec)
    assert not any("Label:" in c or "Check:" in c for c in rows["completion"])
    assert not any("out of context" in p for p in rows["prompt"])
    row = spec.row(0, named=True)
    assert describe_target(row) == (
        f"Image: colour {row['image_colour']}; shape {row['image_shape']}; place {row['image_place']}."
    )
    assert caption_target(row) == (
        f"Caption: colour {row['caption_colour']}; shape {row['caption_shape']}; place {row['caption_place']}."
    )
    compares = rows.filter(pl.col("prompt").str.starts_with("Compare"))["completion"].to_list()
    assert len(compares) == len(spec)
    same = [c.endswith(" yes") for c in compares]
    assert 0.3 < sum(same) / len(same) < 0.8  # about half the pairs are the same word
    for c in compares:
        a, _, b, verdict = c.split(" ")
        assert verdict == ("yes" if a == b else "no")


def test_settings_reject_unknown_values():
    with pytest.raises(ValueError, match="sees"):
        BootstrapSettings(sees=["texture"])
    with pytest.raises(ValueError, match="task"):
        BootstrapSettings(task="summarise")
    with pytest.raises(ValueError, match="blind_spot"):
        BootstrapSettings(blind_spot="squint")
    with pytest.raises(ValueError, match="not a demo attribute value"):
        BootstrapSettings(confusions=[{"attribute": "colour", "value": "mauve", "seen_as": "blue"}])
    with pytest.raises(ValueError, match="not a demo attribute value"):
        BootstrapSettings(
            confusions=[{"attribute": "colour", "value": "red", "seen_as": "blue", "when": {"sky": "o"}}]
        )
    with pytest.raises(ValueError, match="teachers only"):
        BootstrapSettings(task="base", confusions=[{"attribute": "colour", "value": "red", "seen_as": "blue"}])


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
    assert {p.name for p in out.iterdir()} == DEMO_MODEL_FILES  # safetensors weights, no pickles
    assert (tmp_path / "live" / "metrics.json").is_file()
    # Every attribute word, after a space as it appears in captions and targets, is a single token:
    # otherwise a tiny model has to learn to spell, and copying words between slots breaks.
    tok = processor.tokenizer
    for word in (*COLOURS, *SHAPES, *PLACES):
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def test_corpus_covers_every_target_format():
    texts = corpus()
    assert any(t.startswith("Image: colour") and "Check: colour" in t for t in texts)
    assert any(t.startswith("Image: colour") for t in texts)
    assert any(t.startswith("Caption: colour") for t in texts)
    assert any("Caption: " in t for t in texts)


TINY_TRAIN = {"max_steps": 2, "batch_size": 8, "logging_steps": 1}


def _group(jobs: int, **extra_models) -> BootstrapGroup:
    models = {
        "teacher": {"arch": "qwen2_vl", "seed": 1, "train": TINY_TRAIN},
        "base": {"arch": "llava", "task": "base", "seed": 3, "train": TINY_TRAIN},
        **extra_models,
    }
    return BootstrapGroup(models=models, jobs=jobs, threads=1, cpu_speedups={"logprob_head": "full"})


# The init_from test's models: a child of the teacher with a negligible step, and the same model without init_from.
CHILD = {"arch": "qwen2_vl", "seed": 5, "init_from": "teacher", "train": TINY_TRAIN | {"learning_rate": 1e-12}}
FRESH = {k: v for k, v in CHILD.items() if k != "init_from"}


@pytest.fixture(scope="module")
def side_by_side(world, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """One group trained two jobs at a time (fresh processes are most of a tiny group's time, so two tests share it):
    ``_group``'s teacher and base, then CHILD and FRESH listed before them, since the order of the config must not
    matter. Returns the root (models in models/, logs in live/) and bootstrap_group's result."""
    root = tmp_path_factory.mktemp("side_by_side")
    pair = _group(jobs=2)  # the settings the one-job-at-a-time run gets, cpu_speedups included
    group = BootstrapGroup(
        models={"child": CHILD, "fresh": FRESH, **pair.models}, jobs=2, threads=1, cpu_speedups=pair.cpu_speedups
    )
    assert group.order().index("teacher") < group.order().index("child")
    return root, bootstrap_group(group, world, root / "models", root / "live")


def test_a_group_trained_side_by_side_gives_the_models_trained_one_after_the_other(world, side_by_side, tmp_path):
    """Two jobs at once (each in its own process, one thread) write the same weights as one job at a time: what runs
    beside a model does not change it, so the side-by-side speed-up costs no reproducibility."""
    apart = bootstrap_group(_group(jobs=1), world, tmp_path / "apart", tmp_path / "live_apart")
    root, together = side_by_side
    assert set(together) == {"teacher", "base", "child", "fresh"}
    for name, out in together.items():
        assert out == root / "models" / name
        assert {p.name for p in out.iterdir()} == DEMO_MODEL_FILES, name
        assert (root / "live" / name / "metrics.json").is_file()
    for name in apart:
        a, b = load_file(apart[name] / "model.safetensors"), load_file(together[name] / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_failing_model_is_named_and_the_others_are_still_written(world, tmp_path):
    group = _group(jobs=2, broken={"arch": "transformer9000", "train": TINY_TRAIN})
    with pytest.raises(RuntimeError, match=r"bootstrap failed for broken: ValueError: unknown tiny architecture"):
        bootstrap_group(group, world, tmp_path / "models", tmp_path / "live")
    written = {p.name for p in (tmp_path / "models").iterdir() if (p / "model.safetensors").is_file()}
    assert written == {"teacher", "base"}


def test_group_settings_are_checked():
    with pytest.raises(ValueError, match="at least one model"):
        BootstrapGroup(models={})
    with pytest.raises(ValueError, match="jobs and threads must be >= 1"):
        BootstrapGroup(models={"m": {}}, jobs=0)
    with pytest.raises(ValueError, match="sees"):
        BootstrapGroup(models={"m": {"sees": ["texture"]}})
    assert BootstrapGroup(models={"m": {}}, jobs=2, threads=3).threads_per_job == 3
    assert BootstrapGroup(models={"m": {}}, jobs=10**6).threads_per_job == 1


def _weights(path):
    return load_file(path / "model.safetensors")


def test_init_from_starts_from_the_named_models_trained_weights(side_by_side):
    """A model with init_from is trained after its parent, from the parent's trained weights and tokenizer: with a
    negligible step it ends where the parent ended, not where a fresh model of its seed starts."""
    out = side_by_side[1]
    parent, started, scratch = _weights(out["teacher"]), _weights(out["child"]), _weights(out["fresh"])
    assert parent.keys() == started.keys()
    assert all(torch.allclose(parent[k], started[k], atol=1e-9) for k in parent)
    assert not all(torch.allclose(scratch[k], started[k], atol=1e-3) for k in parent)
    assert (out["child"] / "tokenizer.json").read_bytes() == (out["teacher"] / "tokenizer.json").read_bytes()
    assert {p.name for p in out["child"].iterdir()} == DEMO_MODEL_FILES
    assert (
        type(AutoModelForImageTextToText.from_pretrained(out["child"])).__name__ == "Qwen2VLForConditionalGeneration"
    )


def test_a_model_whose_init_from_model_fails_is_named_and_not_run(world, tmp_path):
    group = BootstrapGroup(
        models={
            "broken": {"arch": "transformer9000", "train": TINY_TRAIN},
            "child": {"arch": "transformer9000", "init_from": "broken", "train": TINY_TRAIN},
            "base": {"arch": "llava", "task": "base", "seed": 3, "train": TINY_TRAIN},
        },
        jobs=2,
        threads=1,
    )
    with pytest.raises(
        RuntimeError,
        match=r"broken: ValueError: unknown tiny architecture.*; "
        r"child: RuntimeError: its init_from model broken failed",
    ):
        bootstrap_group(group, world, tmp_path / "models", tmp_path / "live")
    assert (tmp_path / "models" / "base" / "model.safetensors").is_file()
    assert not (tmp_path / "models" / "child").exists()


def test_init_from_settings_are_checked():
    with pytest.raises(ValueError, match="'nobody' is not another model of this group"):
        BootstrapGroup(models={"m": {"init_from": "nobody"}})
    with pytest.raises(ValueError, match="'m' is not another model"):
        BootstrapGroup(models={"m": {"init_from": "m"}})
    with pytest.raises(ValueError, match="arch differs .* set b.arch to 'qwen2_vl'"):
        BootstrapGroup(models={"a": {}, "b": {"arch": "llava", "init_from": "a"}})
    with pytest.raises(ValueError, match="hidden_size differs"):
        BootstrapGroup(models={"a": {}, "b": {"hidden_size": 64, "init_from": "a"}})
    with pytest.raises(ValueError, match="cycle"):
        BootstrapGroup(models={"a": {"init_from": "b"}, "b": {"init_from": "a"}})
