"""Bootstrap the demo world's models from random initialisation, since no pretrained weights exist offline.

- A *teacher* learns the out-of-context question with a check-first answer (the format a tiny model can learn,
  see shared notes): ``Check: colour <caption> vs <image> yes|no; shape ...; place .... Label: ... Rationale: ...``.
  Its blind spot comes from its data: negatives of the kinds it does not ``see`` are (almost) left out, so it never
  learns to compare that attribute and copies the caption's value instead.
- The *student base* only learns to describe images (``Image: colour red; shape circle; place city.``): visual
  grounding without any out-of-context skill, like the paper's small pretrained MLLMs.

Training is full fine-tuning through the same TRL ``SFTTrainer`` path as the student stages (no LoRA).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from mmkd.demo.world import ATTRIBUTES, COLOURS, PLACES, SHAPES, TEMPLATES, VALUES
from mmkd.modeling import load_model
from mmkd.parsing import format_answer
from mmkd.prompts import PROMPTS
from mmkd.schema import FALSIFIED, PRISTINE, read_items
from mmkd.tiny import build_tiny
from mmkd.training.config import TrainSettings
from mmkd.training.trainers import train_sft

log = logging.getLogger(__name__)

DESCRIBE_PROMPT = "Describe the image."
TASKS = ("teacher", "describe")


@dataclass
class BootstrapSettings:
    """How to build and pre-train one demo model."""

    arch: str = "qwen2_vl"  # qwen2_vl or llava (see mmkd.tiny)
    task: str = "teacher"  # teacher: out-of-context answers; describe: image descriptions (student base)
    sees: list[str] = field(default_factory=lambda: list(ATTRIBUTES))  # teacher: attribute kinds it learns to check
    unseen_fraction: float = 0.0  # teacher: share of unseen-kind negatives kept (0 = fully blind)
    prompt_version: str = "v1"
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 2
    image_size: int = 56
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainSettings(**self.train)
        if self.task not in TASKS:
            raise ValueError(f"bootstrap task must be one of {TASKS}, got {self.task!r}")
        unknown = set(self.sees) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"bootstrap.sees: unknown attribute(s) {sorted(unknown)}; use {ATTRIBUTES}")


def check_line(spec: dict) -> str:
    """``Check: colour <caption> vs <image> yes|no; ...`` for one spec row."""
    parts = []
    for attr in ATTRIBUTES:
        cap, img = spec[f"caption_{attr}"], spec[f"image_{attr}"]
        parts.append(f"{attr} {cap} vs {img} {'yes' if cap == img else 'no'}")
    return "Check: " + "; ".join(parts) + "."


def teacher_target(spec: dict) -> str:
    """The full check-first answer for one spec row (truthful: blind spots come from the data, not the target)."""
    wrong = [a for a in ATTRIBUTES if spec[f"caption_{a}"] != spec[f"image_{a}"]]
    if wrong:
        return format_answer(FALSIFIED, f"the {wrong[0]} is wrong.", check=check_line(spec))
    return format_answer(PRISTINE, "all attributes match.", check=check_line(spec))


def describe_target(spec: dict) -> str:
    """What the student base learns to say about an image."""
    return "Image: " + "; ".join(f"{a} {spec[f'image_{a}']}" for a in ATTRIBUTES) + "."


def corpus(prompt_version: str = "v1") -> list[str]:
    """Every text a demo model may read or write, for training its tokenizer: prompts, captions and targets."""
    texts = [DESCRIBE_PROMPT]
    template = PROMPTS[prompt_version]
    for colour in COLOURS:
        for shape in SHAPES:
            for place in PLACES:
                for t in TEMPLATES:
                    cap = t.format(colour=colour, shape=shape, place=place)
                    texts.append(template.render(cap, [colour, shape, place], [cap]))
                values = dict(zip(ATTRIBUTES, (colour, shape, place), strict=True))
                spec = {f"{k}_{a}": v for k in ("image", "caption") for a, v in values.items()}
                texts += [teacher_target(spec), describe_target(spec)]
                for attr in ATTRIBUTES:
                    for other in VALUES[attr]:
                        texts.append(teacher_target(spec | {f"caption_{attr}": other}))
    return texts


def training_rows(items: pl.DataFrame, spec: pl.DataFrame, settings: BootstrapSettings) -> pl.DataFrame:
    """SFT rows (image_path, prompt, completion) for one demo model, with its blind spots applied."""
    table = items.join(spec, on="id", how="inner", maintain_order="left")
    rng = np.random.default_rng([settings.seed, 7])
    template = PROMPTS[settings.prompt_version]
    rows = []
    for row in table.iter_rows(named=True):
        if settings.task == "describe":
            rows.append(
                {"image_path": row["image_path"], "prompt": DESCRIBE_PROMPT, "completion": describe_target(row)}
            )
            continue
        unseen = row["mismatch"] != "none" and row["mismatch"] not in settings.sees
        if unseen and rng.random() >= settings.unseen_fraction:
            continue
        prompt = template.render(row["caption"], row["evidence_entities"], row["evidence_captions"])
        rows.append({"image_path": row["image_path"], "prompt": prompt, "completion": teacher_target(row)})
    return pl.DataFrame(rows, schema={"image_path": pl.String, "prompt": pl.String, "completion": pl.String})


def bootstrap_model(
    name: str, world_dir: str | Path, out_dir: str | Path, settings: BootstrapSettings, live_dir: str | Path
) -> Path:
    """Build a tiny model from config and pre-train it on the world's ``bootstrap`` split; save it to ``out_dir``."""
    world_dir = Path(world_dir)
    items = read_items(world_dir / "bootstrap.parquet")
    spec = pl.read_parquet(world_dir / "bootstrap.spec.parquet")
    rows = training_rows(items, spec, settings)
    log.info("%s: %d %s training rows (sees %s)", name, len(rows), settings.task, settings.sees)
    build_tiny(
        settings.arch,
        out_dir,
        corpus(settings.prompt_version),
        hidden_size=settings.hidden_size,
        num_layers=settings.num_layers,
        image_size=settings.image_size,
        seed=settings.seed,
    )
    model, processor = load_model(out_dir, device="cpu")
    model = train_sft(model, processor, rows, settings.train, lora=None, seed=settings.seed, live_dir=live_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)
