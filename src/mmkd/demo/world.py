"""Generate the demo news world: one coloured shape on a place backdrop, with a caption that may lie.

A ``pristine`` item's caption describes its own image. A ``falsified`` item's caption describes a hard-negative scene
that differs from the image in exactly one attribute (colour, shape or place), so a detector must check all three.
Everything is deterministic from the seed; each split has its own random streams, so resizing one split leaves the
others byte-identical.

The out-of-distribution test set (``make_ood_split``) differs from every other split in one controlled way: its
captions (and the evidence captions) use ``OOD_TEMPLATES``, wordings that no split used for bootstrapping,
training, val or test ever shows. Scenes, images, labels and mismatch kinds are drawn exactly as for ``test``, so
what changes is how the news is phrased, not what it is about.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from mmkd.schema import FALSIFIED, GOLD_SCHEMA, PRISTINE, items_frame

log = logging.getLogger(__name__)

# Object colours: saturated and bright, so they stand out from the muted, darker backdrops below.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (235, 35, 35),
    "green": (70, 225, 60),
    "blue": (45, 95, 255),
    "yellow": (250, 230, 40),
    "purple": (170, 60, 230),
    "cyan": (40, 235, 235),
}
# Backdrops: a base colour plus a texture kind (see ``_backdrop``); the texture makes places differ in pattern too.
PLACE_RGB: dict[str, tuple[int, int, int]] = {
    "harbour": (40, 62, 92),  # dark sea blue, horizontal waves
    "desert": (176, 138, 92),  # dull sand, diagonal dunes
    "forest": (34, 78, 40),  # dark green, vertical trunks
    "city": (112, 112, 118),  # grey, a grid of windows
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
PLACES: tuple[str, ...] = tuple(PLACE_RGB)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "place")
VALUES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "place": PLACES}
MISMATCHES: tuple[str, ...] = ("none", *ATTRIBUTES)  # "none" for pristine items

# Each template names colour, shape and place once, as plain space-separated words (only a final period may touch
# one), so a word-level tokenizer sees the same token for an attribute wherever it appears.
TEMPLATES: tuple[str, ...] = (
    "Officials unveil a {colour} {shape} near the {place}.",
    "Witnesses report a {colour} {shape} in the {place} this morning.",
    "A {colour} {shape} draws crowds in the {place}.",
    "Residents of the {place} discover a {colour} {shape}.",
    "Police investigate a {colour} {shape} found in the {place} overnight.",
)
# The out-of-distribution wordings: other verbs, word orders and framing; the same three attribute words.
OOD_TEMPLATES: tuple[str, ...] = (
    "In the {place} today, reporters photographed a {colour} {shape}.",
    "Breaking: {colour} {shape} spotted over the {place}, sources say.",
    "Is this {colour} {shape} really in the {place}? Locals weigh in.",
    "The {place} council confirms a {colour} {shape} appeared overnight.",
    "Tourists flock to see the {colour} {shape} at the {place}.",
)

# What the model-bootstrap code reads to build training targets: the image's and the caption's attributes.
SPEC_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "image_colour": pl.String(),
    "image_shape": pl.String(),
    "image_place": pl.String(),
    "caption_colour": pl.String(),
    "caption_shape": pl.String(),
    "caption_place": pl.String(),
    "mismatch": pl.String(),  # one of MISMATCHES
}

# Object side as a fraction of the image side: 18-28 px at 56 px, large enough to read at 4 image tokens.
MIN_SIZE, MAX_SIZE = 18 / 56, 28 / 56
MARGIN = 2 / 56  # the object keeps this far from the border


@dataclass(frozen=True)
class Scene:
    """What one image shows. ``size``, ``x`` and ``y`` are fractions of the image side (``x``/``y``: the centre)."""

    colour: str
    shape: str
    place: str
    size: float = 0.4
    x: float = 0.5
    y: float = 0.5
    texture_seed: int = 0  # seeds the backdrop's noise and pattern phase

    def __post_init__(self) -> None:
        for attr in ATTRIBUTES:
            if getattr(self, attr) not in VALUES[attr]:
                raise ValueError(f"unknown {attr} {getattr(self, attr)!r}; use one of {VALUES[attr]}")

    def replace(self, attr: str, value: str) -> Scene:
        """The same scene with one attribute changed."""
        fields = {a: getattr(self, a) for a in ATTRIBUTES} | {attr: value}
        return Scene(**fields, size=self.size, x=self.x, y=self.y, texture_seed=self.texture_seed)


def random_scene(rng: np.random.Generator) -> Scene:
    """Draw a scene: uniform attributes, jittered size and position that keep the object inside the image."""
    colour, shape, place = (VALUES[a][rng.integers(len(VALUES[a]))] for a in ATTRIBUTES)
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    lo, hi = size / 2 + MARGIN, 1 - size / 2 - MARGIN
    x, y = (float(v) for v in rng.uniform(lo, hi, size=2))
    return Scene(colour, shape, place, size=size, x=x, y=y, texture_seed=int(rng.integers(2**31)))


def caption(scene: Scene, template: int = 0, templates: tuple[str, ...] = TEMPLATES) -> str:
    """The news caption of a scene, from one of ``templates`` (``TEMPLATES``, or ``OOD_TEMPLATES``)."""
    return templates[template].format(colour=scene.colour, shape=scene.shape, place=scene.place)


def _backdrop(place: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The place's base colour with its own faint pattern (random phase) and a little per-pixel noise."""
    yy, xx = np.mgrid[0:image_size, 0:image_size] * (56 / image_size)  # pattern scale fixed in 56-px units
    phase = rng.uniform(0, 2 * np.pi)
    if place == "harbour":
        pattern = np.sin(yy * 0.9 + 1.5 * np.sin(xx * 0.25) + phase)
    elif place == "desert":
        pattern = np.sin((xx + yy) * 0.35 + phase)
    elif place == "forest":
        pattern = np.sin(xx * 0.8 + phase) + 0.5 * np.sin(xx * 0.37 + 2 * phase)
    else:  # city: lighter windows on a darker grid
        offset = int(phase * 2)
        pattern = np.where((((xx + offset) % 8) < 4) & (((yy + offset) % 8) < 4), 1.0, -1.0)
    noise = rng.normal(0, 6, size=(image_size, image_size, 1))
    img = np.asarray(PLACE_RGB[place], dtype=np.float64) + 14 * pattern[..., None] + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(scene: Scene, image_size: int = 56) -> Image.Image:
    """Draw the scene as an RGB image: the place backdrop with one filled shape on it."""
    img = Image.fromarray(_backdrop(scene.place, image_size, np.random.default_rng(scene.texture_seed)), "RGB")
    draw = ImageDraw.Draw(img)
    half = scene.size * image_size / 2
    cx, cy = scene.x * image_size, scene.y * image_size
    left, top, right, bottom = round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1
    fill = COLOUR_RGB[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(round(cx), top), (right, bottom), (left, bottom)], fill=fill)
    else:  # cross: a plus sign whose arms are a third of the object wide
        arm = scene.size * image_size / 6
        draw.rectangle((round(cx - arm), top, round(cx + arm) - 1, bottom), fill=fill)
        draw.rectangle((left, round(cy - arm), right, round(cy + arm) - 1), fill=fill)
    return img


def _noisy(scene: Scene, noise: float, rng: np.random.Generator) -> Scene:
    """The scene with each attribute independently swapped for a wrong value with probability ``noise``.

    The same number of random draws is made whatever ``noise`` is, so the noise level changes nothing else."""
    flips, picks = rng.random(len(ATTRIBUTES)), rng.integers(1 << 30, size=len(ATTRIBUTES))
    for attr, flip, pick in zip(ATTRIBUTES, flips, picks, strict=False):
        if flip < noise:
            wrong = [v for v in VALUES[attr] if v != getattr(scene, attr)]
            scene = scene.replace(attr, wrong[pick % len(wrong)])
    return scene


def _split_rngs(seed: int, split: str) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for a split's items and its evidence, keyed by the split's name (not its position)."""
    key = zlib.crc32(split.encode())
    return np.random.default_rng([seed, key, 0]), np.random.default_rng([seed, key, 1])


def _make_split(
    out_dir: Path,
    split: str,
    n: int,
    *,
    seed: int,
    image_size: int,
    evidence_noise: float,
    templates: tuple[str, ...] = TEMPLATES,
    stream: str | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Render a split's images and return its item, gold and spec rows (in the shuffled output order); ``stream``
    names the random streams (default: the split's name)."""
    rng, ev_rng = _split_rngs(seed, stream or split)
    labels = np.array([PRISTINE] * ((n + 1) // 2) + [FALSIFIED] * (n // 2))[rng.permutation(n)]
    items, gold, spec = [], [], []
    for i, label in enumerate(labels):
        item_id = f"{split}-{i:06d}"
        scene = random_scene(rng)
        # Always draw the mismatch kind and the wrong value, so pristine and falsified items use the same stream.
        kind = ATTRIBUTES[rng.integers(len(ATTRIBUTES))]
        wrong = [v for v in VALUES[kind] if v != getattr(scene, kind)]
        negative = scene.replace(kind, wrong[rng.integers(len(wrong))])
        shown = scene if label == PRISTINE else negative
        text = caption(shown, int(rng.integers(len(templates))), templates)

        seen = _noisy(scene, evidence_noise, ev_rng)
        n_captions = 1 + int(ev_rng.integers(2))
        picks = ev_rng.integers(len(templates), size=2)
        found = [caption(_noisy(scene, evidence_noise, ev_rng), int(t), templates) for t in picks][:n_captions]

        image_path = f"images/{item_id}.png"
        render(scene, image_size).save(out_dir / image_path, format="PNG", optimize=False)
        items.append(
            {
                "id": item_id,
                "image_path": image_path,
                "caption": text,
                "evidence_entities": [seen.colour, seen.shape, seen.place],
                "evidence_captions": found,
            }
        )
        gold.append({"id": item_id, "gold_label": str(label)})
        spec.append(
            {"id": item_id}
            | {f"image_{a}": getattr(scene, a) for a in ATTRIBUTES}
            | {f"caption_{a}": getattr(shown, a) for a in ATTRIBUTES}
            | {"mismatch": "none" if label == PRISTINE else kind}
        )
    return items, gold, spec


def make_world(
    out_dir: str | Path,
    *,
    seed: int,
    sizes: dict[str, int],
    image_size: int = 56,
    evidence_noise: float = 0.2,
) -> dict:
    """Write ``images/<id>.png`` and, per split, ``<split>.parquet``, ``.gold.parquet`` and ``.spec.parquet``.

    Returns a summary: per split, the number of items, of each label and of each mismatch kind."""
    if not 0.0 <= evidence_noise <= 1.0:
        raise ValueError(f"evidence_noise must be in [0, 1], got {evidence_noise}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 px to draw a readable shape, got {image_size}")
    for split, n in sizes.items():
        if not split or not split.replace("_", "").isalnum():
            raise ValueError(f"split name {split!r} must be letters, digits and underscores (it names files)")
        if n < 0:
            raise ValueError(f"split {split!r} has size {n}; sizes must be >= 0")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    summary: dict = {"seed": seed, "image_size": image_size, "splits": {}}
    for split, n in sizes.items():
        for stale in (out_dir / "images").glob(f"{split}-*.png"):  # left over from an earlier, larger run
            stale.unlink()
        items, gold, spec = _make_split(
            out_dir, split, n, seed=seed, image_size=image_size, evidence_noise=evidence_noise
        )
        items_frame(items).write_parquet(out_dir / f"{split}.parquet", statistics=False)
        pl.DataFrame(gold, schema=GOLD_SCHEMA).write_parquet(out_dir / f"{split}.gold.parquet", statistics=False)
        pl.DataFrame(spec, schema=SPEC_SCHEMA).write_parquet(out_dir / f"{split}.spec.parquet", statistics=False)
        labels = [g["gold_label"] for g in gold]
        kinds = [s["mismatch"] for s in spec]
        summary["splits"][split] = {
            "n": n,
            "labels": {label: labels.count(label) for label in (PRISTINE, FALSIFIED)},
            "mismatch": {kind: kinds.count(kind) for kind in MISMATCHES},
        }
        log.info("world split %s: %s", split, summary["splits"][split])
    return summary


def make_ood_split(
    out_dir: str | Path,
    gold_dir: str | Path,
    *,
    n: int,
    seed: int,
    image_size: int = 56,
    evidence_noise: float = 0.2,
) -> dict:
    """Write the out-of-distribution test set as a ``test`` split: items and images in ``out_dir``
    (``test.parquet``, ``images/``; ids ``ood-<index>``), gold labels and scene specs (which give the labels
    away) apart in ``gold_dir`` (``test.gold.parquet``, ``test.spec.parquet``). Drawn as ``test`` is, with its own
    random streams (named ``test_ood``), captions from ``OOD_TEMPLATES``. Returns its summary."""
    if n < 1:
        raise ValueError(f"the out-of-distribution split needs at least 1 item, got {n}")
    out_dir, gold_dir = Path(out_dir), Path(gold_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    gold_dir.mkdir(parents=True, exist_ok=True)
    items, gold, spec = _make_split(
        out_dir,
        "ood",  # ids and images ood-<index>: never confused with the main test split's
        n,
        seed=seed,
        image_size=image_size,
        evidence_noise=evidence_noise,
        templates=OOD_TEMPLATES,
        stream="test_ood",
    )
    items_frame(items).write_parquet(out_dir / "test.parquet", statistics=False)
    pl.DataFrame(gold, schema=GOLD_SCHEMA).write_parquet(gold_dir / "test.gold.parquet", statistics=False)
    pl.DataFrame(spec, schema=SPEC_SCHEMA).write_parquet(gold_dir / "test.spec.parquet", statistics=False)
    labels, kinds = [g["gold_label"] for g in gold], [s["mismatch"] for s in spec]
    return {
        "n": n,
        "templates": "ood",
        "labels": {label: labels.count(label) for label in (PRISTINE, FALSIFIED)},
        "mismatch": {kind: kinds.count(kind) for kind in MISMATCHES},
    }
