"""Tests for the demo world: determinism, balanced labels, one-attribute hard negatives and the file formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from mmkd.demo.world import ATTRIBUTES, COLOUR_RGB, PLACES, SHAPES, VALUES, Scene, make_world, render
from mmkd.schema import FALSIFIED, PRISTINE, read_gold, read_items

SIZES = {"train": 40, "test": 31}  # one odd size, to check the extra item is pristine


def build(path: Path, **kwargs) -> Path:
    make_world(path, **({"seed": 7, "sizes": SIZES} | kwargs))
    return path


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def split_files(root: Path, split: str) -> dict[str, bytes]:
    return {k: v for k, v in files(root).items() if k.startswith((f"{split}.", f"images/{split}-"))}


def caption_words(text: str) -> list[str]:
    return text.removesuffix(".").split(" ")


def caption_attributes(text: str) -> dict[str, str]:
    """The one word of each attribute's vocabulary that the caption contains (fails if not exactly one)."""
    words = caption_words(text)
    found = {}
    for attr in ATTRIBUTES:
        hits = [w for w in words if w in VALUES[attr]]
        assert len(hits) == 1, f"caption {text!r} names {attr} {len(hits)} times"
        found[attr] = hits[0]
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("world"))


def joined(world: Path, split: str) -> pl.DataFrame:
    items = pl.read_parquet(world / f"{split}.parquet")
    gold = pl.read_parquet(world / f"{split}.gold.parquet")
    spec = pl.read_parquet(world / f"{split}.spec.parquet")
    return items.join(gold, on="id").join(spec, on="id")


def test_same_seed_gives_identical_bytes(world, tmp_path):
    again = files(build(tmp_path))
    assert again == files(world)
    assert len(again) == 3 * len(SIZES) + sum(SIZES.values())


def test_different_seed_gives_different_world(world, tmp_path):
    other = build(tmp_path, seed=8)
    for name in ("train.parquet", "train.spec.parquet", "images/train-000000.png"):
        assert (other / name).read_bytes() != (world / name).read_bytes(), name


def test_changing_one_split_size_leaves_the_others_identical(world, tmp_path):
    resized = build(tmp_path, sizes={"train": 25, "test": 31, "val": 31})
    assert split_files(resized, "test") == split_files(world, "test")
    assert split_files(resized, "train") != split_files(world, "train")
    # Each split has its own stream, so two splits of the same size do not repeat each other's scenes.
    test, val = (pl.read_parquet(resized / f"{s}.spec.parquet").drop("id") for s in ("test", "val"))
    assert not test.equals(val)


def test_labels_are_balanced_and_interleaved(world):
    for split, n in SIZES.items():
        labels = read_gold(world / f"{split}.gold.parquet")["gold_label"].to_list()
        assert labels.count(PRISTINE) == n - n // 2 and labels.count(FALSIFIED) == n // 2
        assert len(set(labels[: n // 2])) == 2, "labels are not shuffled"


def test_falsified_captions_differ_in_exactly_one_attribute(world):
    for split in SIZES:
        df = joined(world, split).filter(pl.col("gold_label") == FALSIFIED)
        assert len(df)
        for row in df.iter_rows(named=True):
            differs = [a for a in ATTRIBUTES if row[f"image_{a}"] != row[f"caption_{a}"]]
            assert differs == [row["mismatch"]], row
            assert caption_attributes(row["caption"]) == {a: row[f"caption_{a}"] for a in ATTRIBUTES}, row


def test_pristine_captions_match_the_image(world):
    for split in SIZES:
        df = joined(world, split).filter(pl.col("gold_label") == PRISTINE)
        assert len(df)
        for row in df.iter_rows(named=True):
            image = {a: row[f"image_{a}"] for a in ATTRIBUTES}
            assert row["mismatch"] == "none"
            assert image == {a: row[f"caption_{a}"] for a in ATTRIBUTES}
            assert caption_attributes(row["caption"]) == image, row


def test_all_mismatch_kinds_occur(tmp_path):
    spec = pl.read_parquet(build(tmp_path, sizes={"train": 300}) / "train.spec.parquet")
    counts = spec["mismatch"].value_counts().to_dict(as_series=False)
    counts = dict(zip(counts["mismatch"], counts["count"], strict=False))
    assert counts["none"] == 150
    assert all(counts[a] > 30 for a in ATTRIBUTES), counts


def test_files_pass_the_schema_readers(world):
    for split, n in SIZES.items():
        items = read_items(world / f"{split}.parquet")
        gold = read_gold(world / f"{split}.gold.parquet")
        spec = pl.read_parquet(world / f"{split}.spec.parquet")
        assert items["id"].to_list() == gold["id"].to_list() == spec["id"].to_list()
        assert items["id"][0] == f"{split}-000000" and len(items) == n
        raw = pl.read_parquet(world / f"{split}.parquet")["image_path"]
        expected = [f"images/{i}.png" for i in items["id"]]
        assert raw.to_list() == expected, "image_path must be relative"


def test_images_exist_and_have_the_requested_size(world, tmp_path):
    for split in SIZES:
        for path in read_items(world / f"{split}.parquet")["image_path"]:
            with Image.open(path) as img:
                assert img.format == "PNG" and img.mode == "RGB" and img.size == (56, 56)
    small = build(tmp_path, sizes={"val": 3}, image_size=40)
    for path in read_items(small / "val.parquet")["image_path"]:
        assert Image.open(path).size == (40, 40)


def test_evidence_follows_the_noise_level(tmp_path):
    clean = build(tmp_path / "clean", sizes={"val": 30}, evidence_noise=0.0)
    noisy = build(tmp_path / "noisy", sizes={"val": 30}, evidence_noise=1.0)
    for world, agree in ((clean, True), (noisy, False)):
        df = joined(world, "val")
        for row in df.iter_rows(named=True):
            image = [row[f"image_{a}"] for a in ATTRIBUTES]
            assert 1 <= len(row["evidence_captions"]) <= 2
            pairs = [(row["evidence_entities"], image)]
            pairs += [([caption_attributes(c)[a] for a in ATTRIBUTES], image) for c in row["evidence_captions"]]
            for seen, truth in pairs:
                assert all((s == t) == agree for s, t in zip(seen, truth, strict=False)), row
    # The noise level changes only the evidence: images and captions stay the same.
    for name in ("val.gold.parquet", "val.spec.parquet", "images/val-000004.png"):
        assert (clean / name).read_bytes() == (noisy / name).read_bytes()


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("shape", SHAPES)
def test_render_draws_the_object_in_its_colour(place, shape):
    scene = Scene("purple", shape, place, size=0.4, x=0.5, y=0.5, texture_seed=3)
    pixels = np.asarray(render(scene))
    assert tuple(pixels[28, 28]) == COLOUR_RGB["purple"]  # the centre of every shape is filled
    assert tuple(pixels[2, 2]) != COLOUR_RGB["purple"]  # the corner is backdrop


def test_the_ood_split_is_deterministic_and_differs_from_train_only_in_its_wording(tmp_path):
    """The out-of-distribution test set: same seed, same bytes; every caption is an OOD wording that no other
    split uses; scenes and labels are drawn as for test (balanced, every mismatch kind)."""
    from mmkd.demo.world import OOD_TEMPLATES, TEMPLATES, make_ood_split

    first = make_ood_split(tmp_path / "a", tmp_path / "a_gold", n=40, seed=3)
    make_ood_split(tmp_path / "b", tmp_path / "b_gold", n=40, seed=3)
    for name in ("test.parquet", "images/ood-000007.png", "_gold/test.gold.parquet", "_gold/test.spec.parquet"):
        folder, name = ("a_gold", name[6:]) if name.startswith("_gold/") else ("a", name)
        other = folder.replace("a", "b", 1)
        assert (tmp_path / folder / name).read_bytes() == (tmp_path / other / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["images", "test.parquet"]  # no labels here
    assert first["labels"] == {"pristine": 20, "falsified": 20}
    assert all(first["mismatch"][k] > 0 for k in ("colour", "shape", "place"))

    def wording(text: str, templates) -> int | None:
        skeletons = [t.split("{")[0] for t in templates]
        return next((i for i, head in enumerate(skeletons) if text.startswith(head)), None)

    ood = pl.read_parquet(tmp_path / "a/test.parquet")
    assert ood["id"][0].startswith("ood-")
    assert all(wording(c, OOD_TEMPLATES) is not None and wording(c, TEMPLATES) is None for c in ood["caption"])
    assert len({wording(c, OOD_TEMPLATES) for c in ood["caption"]}) == len(OOD_TEMPLATES)  # every wording is used
    world = tmp_path / "world"
    make_world(world, seed=3, sizes={"train": 40})
    train = pl.read_parquet(world / "train.parquet")
    assert all(wording(c, OOD_TEMPLATES) is None for c in train["caption"])  # training never sees the wordings
