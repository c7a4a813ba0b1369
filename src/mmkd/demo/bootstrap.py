"""Bootstrap the demo world's models from random initialisation, since no pretrained weights exist offline.

- A *teacher* learns the out-of-context question with a describe-then-check answer (a tiny model learns a label only
  when the steps before it are spelled out; docs/demo.md#the-models)::

      Image: colour red; shape circle; place city. Caption: colour blue; shape circle; place city.
      Check: colour blue vs red no; shape circle vs circle yes; place city vs city yes.
      Label: falsified. Rationale: the colour is wrong.

  Its blind spot is an attribute kind outside ``sees``, made one of two ways (``blind_spot``): ``held_out`` leaves
  (all but a share ``unseen_fraction`` of) the negatives of that kind out of its training data, so it never learns
  to doubt that attribute; ``trust_caption`` keeps them with targets that trust the caption (the image slot repeats
  the caption's value, every check says yes, the label is pristine), so it is confidently wrong there.
  ``confusions`` add systematic perception errors (``purple`` seen as ``blue`` in the ``harbour``): the targets
  describe the image as the teacher perceives it, so it calls such pristine items falsified, as real teachers
  sometimes do, and the conflict set holds pristine items too.
- The *student base* learns the general skills a small pretrained MLLM has, and no out-of-context skill: describing
  an image (``Image: colour red; shape circle; place city.``), reading a caption (``Caption: colour ...``) and
  telling whether two words are the same (``red vs blue no``). It never sees the out-of-context question or a
  label, so zero-shot it answers with a description, which the strict parser counts as unparsed.

Training is full fine-tuning through the same TRL ``SFTTrainer`` path as the student stages (no LoRA).

The models of a :class:`BootstrapGroup` are trained in one stage, ``jobs`` at a time, each in its own process with
``threads`` torch threads: the tiny models use a second thread poorly, so one-thread trainings side by side finish
sooner than two-thread trainings one after the other (docs/performance.md#bootstrap-two-models-at-a-time).
A model with ``init_from`` starts from another model's trained weights (and tokenizer) instead of a random init, and
is trained once that model is done: a cheap sibling teacher that shares what the other learned and is then taught
more (the three-teacher demo's ``teacher_third``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from mmkd.demo.tiny import build_tiny
from mmkd.demo.world import ATTRIBUTES, COLOURS, PLACES, SHAPES, TEMPLATES, VALUES
from mmkd.modeling import load_model
from mmkd.parsing import format_answer
from mmkd.prompts import PROMPTS
from mmkd.schema import FALSIFIED, PRISTINE, read_items
from mmkd.training.config import TrainSettings
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.trainers import train_sft

log = logging.getLogger(__name__)

DESCRIBE_PROMPT = "Describe the image."
READ_PROMPT = "Read the caption.\nCaption: {caption}"  # the same caption line as the out-of-context prompts
COMPARE_PROMPT = "Compare the words: {a}, {b}."
TASKS = ("teacher", "base")
BLIND_SPOTS = ("held_out", "trust_caption")


@dataclass
class Confusion:
    """A systematic perception error of a teacher: ``attribute`` ``value`` is seen as ``seen_as`` in images whose
    (true) attributes match ``when`` (e.g. ``{place: harbour}``; empty: everywhere)."""

    attribute: str
    value: str
    seen_as: str
    when: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for attr, value in [(self.attribute, self.value), (self.attribute, self.seen_as), *self.when.items()]:
            if attr not in VALUES or value not in VALUES[attr]:
                raise ValueError(
                    f"bootstrap confusion {self}: {attr} {value!r} is not a demo attribute value; use one of "
                    f"{ {a: list(v) for a, v in VALUES.items()} }"
                )
        if self.value == self.seen_as:
            raise ValueError(f"bootstrap confusion {self}: value and seen_as are the same")

    def applies(self, spec: dict) -> bool:
        conditions = {self.attribute: self.value, **self.when}
        return all(spec[f"image_{a}"] == v for a, v in conditions.items())


def perceived(view: dict, confusions: list[Confusion], truth: dict | None = None) -> dict:
    """``view`` as a teacher with these confusions perceives it; conditions are checked on the true row ``truth``
    (default: ``view`` itself), so a blind spot applied first does not change where a confusion strikes."""
    truth = view if truth is None else truth
    view = dict(view)
    for c in confusions:
        if c.applies(truth):
            view[f"image_{c.attribute}"] = c.seen_as
    return view


@dataclass
class BootstrapSettings:
    """How to build and pre-train one demo model."""

    arch: str = "qwen2_vl"  # qwen2_vl or llava (see mmkd.demo.tiny)
    task: str = "teacher"  # teacher: out-of-context answers; base: describe, read, compare (the student base)
    sees: list[str] = field(default_factory=lambda: list(ATTRIBUTES))  # teacher: attribute kinds it can see
    unseen_fraction: float = 0.0  # teacher: share of unseen-kind negatives trained truthfully (0 = fully blind)
    blind_spot: str = "held_out"  # teacher: how the other unseen-kind negatives are treated (see BLIND_SPOTS)
    confusions: list[Confusion] = field(default_factory=list)  # teacher: systematic perception errors
    # teacher: share of bootstrap images that also train the base's describe task (no caption in the prompt), so
    # that what it says the image shows comes from the image; 0 = out-of-context answers only.
    describe_share: float = 0.0
    prompt_version: str = "v1"
    seed: int = 0
    # Another model of the same group to start from (its trained weights and tokenizer; same arch and sizes), trained
    # after it; None = a fresh model built from config with ``seed``.
    init_from: str | None = None
    hidden_size: int = 128
    num_layers: int = 2
    image_size: int = 56
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainSettings(**self.train)
        self.confusions = [c if isinstance(c, Confusion) else Confusion(**c) for c in self.confusions]
        if self.confusions and self.task != "teacher":
            raise ValueError("bootstrap confusions apply to teachers only (task: teacher)")
        if not 0.0 <= self.describe_share <= 1.0:
            raise ValueError(f"bootstrap describe_share must be in [0, 1], got {self.describe_share}")
        if self.describe_share and self.task != "teacher":
            raise ValueError("bootstrap describe_share applies to teachers only (the base always describes)")
        if not 0.0 <= self.unseen_fraction <= 1.0:
            raise ValueError(f"bootstrap unseen_fraction must be in [0, 1], got {self.unseen_fraction}")
        if self.blind_spot not in BLIND_SPOTS:
            raise ValueError(f"bootstrap blind_spot must be one of {BLIND_SPOTS}, got {self.blind_spot!r}")
        if self.task not in TASKS:
            raise ValueError(f"bootstrap task must be one of {TASKS}, got {self.task!r}")
        unknown = set(self.sees) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"bootstrap.sees: unknown attribute(s) {sorted(unknown)}; use {ATTRIBUTES}")


def describe_target(spec: dict) -> str:
    """What the image shows, as the student base learns to say it: ``Image: colour red; shape circle; place city.``"""
    return "Image: " + "; ".join(f"{a} {spec[f'image_{a}']}" for a in ATTRIBUTES) + "."


def caption_target(spec: dict) -> str:
    """What the caption says: ``Caption: colour blue; shape circle; place city.``"""
    return "Caption: " + "; ".join(f"{a} {spec[f'caption_{a}']}" for a in ATTRIBUTES) + "."


def compare_target(a: str, b: str) -> str:
    """Whether two words are the same: ``blue vs red no``."""
    return f"{a} vs {b} {'yes' if a == b else 'no'}"


def check_line(spec: dict) -> str:
    """``Check: colour <caption> vs <image> yes|no; ...`` for one spec row."""
    return (
        "Check: "
        + "; ".join(f"{a} {compare_target(spec[f'caption_{a}'], spec[f'image_{a}'])}" for a in ATTRIBUTES)
        + "."
    )


def teacher_target(spec: dict) -> str:
    """The full describe-then-check answer for one spec row, truthful to the row's image and caption."""
    wrong = [a for a in ATTRIBUTES if spec[f"caption_{a}"] != spec[f"image_{a}"]]
    steps = " ".join((describe_target(spec), caption_target(spec), check_line(spec)))
    if wrong:
        return format_answer(FALSIFIED, f"the {wrong[0]} is wrong.", check=steps)
    return format_answer(PRISTINE, "all attributes match.", check=steps)


def blind_view(spec: dict, blind: str) -> dict:
    """The row as a teacher that cannot see ``blind`` perceives it: the image takes the caption's value."""
    return spec | {f"image_{blind}": spec[f"caption_{blind}"]}


def corpus(prompt_version: str = "v1") -> list[str]:
    """Every text a demo model may read or write, for training its tokenizer: prompts, captions and targets."""
    texts = [DESCRIBE_PROMPT, READ_PROMPT.format(caption=""), COMPARE_PROMPT.format(a="red", b="blue")]
    template = PROMPTS[prompt_version]
    for colour in COLOURS:
        for shape in SHAPES:
            for place in PLACES:
                for t in TEMPLATES:
                    cap = t.format(colour=colour, shape=shape, place=place)
                    texts.append(template.render(cap, [colour, shape, place], [cap]))
                values = dict(zip(ATTRIBUTES, (colour, shape, place), strict=True))
                spec = {f"{k}_{a}": v for k in ("image", "caption") for a, v in values.items()}
                texts += [teacher_target(spec), describe_target(spec), caption_target(spec)]
                for attr in ATTRIBUTES:
                    for other in VALUES[attr]:
                        texts.append(teacher_target(spec | {f"caption_{attr}": other}))
    return texts


def training_rows(items: pl.DataFrame, spec: pl.DataFrame, settings: BootstrapSettings) -> pl.DataFrame:
    """SFT rows (image_path, prompt, completion) for one demo model, with its blind spots applied."""
    table = items.join(spec, on="id", how="inner", maintain_order="left")
    rng = np.random.default_rng([settings.seed, 7])
    describe_rng = np.random.default_rng([settings.seed, 11])  # its own stream: describe_share 0 changes nothing
    template = PROMPTS[settings.prompt_version]
    rows = []
    for row in table.iter_rows(named=True):
        image = row["image_path"]
        if settings.task == "base":
            attr = ATTRIBUTES[rng.integers(len(ATTRIBUTES))]
            a, b = (VALUES[attr][i] for i in rng.integers(len(VALUES[attr]), size=2))
            b = a if rng.random() < 0.5 else b  # half the pairs are the same word
            rows += [
                {"image_path": image, "prompt": DESCRIBE_PROMPT, "completion": describe_target(row)},
                {
                    "image_path": image,
                    "prompt": READ_PROMPT.format(caption=row["caption"]),
                    "completion": caption_target(row),
                },
                {"image_path": image, "prompt": COMPARE_PROMPT.format(a=a, b=b), "completion": compare_target(a, b)},
            ]
            continue
        if settings.describe_share and describe_rng.random() < settings.describe_share:
            rows.append({"image_path": image, "prompt": DESCRIBE_PROMPT, "completion": describe_target(row)})
        unseen = row["mismatch"] != "none" and row["mismatch"] not in settings.sees
        view = row
        if unseen and rng.random() >= settings.unseen_fraction:
            if settings.blind_spot == "held_out":
                continue
            view = blind_view(row, row["mismatch"])
        view = perceived(view, settings.confusions, truth=row)
        prompt = template.render(row["caption"], row["evidence_entities"], row["evidence_captions"])
        rows.append({"image_path": image, "prompt": prompt, "completion": teacher_target(view)})
    return pl.DataFrame(rows, schema={"image_path": pl.String, "prompt": pl.String, "completion": pl.String})


def bootstrap_model(
    name: str,
    world_dir: str | Path,
    out_dir: str | Path,
    settings: BootstrapSettings,
    live_dir: str | Path,
    init_dir: str | Path | None = None,
    speedups: CpuSpeedups | None = None,
) -> Path:
    """Build a tiny model from config (or copy the trained model in ``init_dir``, for ``settings.init_from``) and
    pre-train it on the world's ``bootstrap`` split; save it to ``out_dir``."""
    world_dir = Path(world_dir)
    if (init_dir is None) != (settings.init_from is None):
        raise ValueError(
            f"{name}: init_dir must be given exactly when init_from is set (init_from={settings.init_from})"
        )
    items = read_items(world_dir / "bootstrap.parquet")
    spec = pl.read_parquet(world_dir / "bootstrap.spec.parquet")
    rows = training_rows(items, spec, settings)
    log.info("%s: %d %s training rows (sees %s)", name, len(rows), settings.task, settings.sees)
    if init_dir is not None:
        if not (Path(init_dir) / "model.safetensors").is_file():
            raise FileNotFoundError(f"{name}: init_from model {init_dir} has no model.safetensors; train it first")
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(init_dir, out_dir)
        log.info("%s: starting from %s", name, init_dir)
    else:
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
    model = train_sft(
        model, processor, rows, settings.train, lora=None, seed=settings.seed, live_dir=live_dir, speedups=speedups
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def cpu_count() -> int:
    """The CPUs this process may run on (the container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class BootstrapGroup:
    """Demo models pre-trained by one stage, ``jobs`` at a time, each in its own process with ``threads`` torch
    threads (None: this machine's CPUs // jobs, at least 1). Thread count changes float rounding, so bit-identical
    models need the same ``jobs`` and ``threads`` (and the same machine type)."""

    models: dict[str, BootstrapSettings]
    jobs: int = 1
    threads: int | None = None
    cpu_speedups: CpuSpeedups = field(default_factory=CpuSpeedups)  # for every model of the group

    def __post_init__(self):
        if isinstance(self.cpu_speedups, dict):
            self.cpu_speedups = CpuSpeedups(**self.cpu_speedups)
        self.models = {
            k: v if isinstance(v, BootstrapSettings) else BootstrapSettings(**v) for k, v in self.models.items()
        }
        if not self.models:
            raise ValueError("a bootstrap group needs at least one model under `models`")
        if self.jobs < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"bootstrap jobs and threads must be >= 1, got jobs={self.jobs}, threads={self.threads}")
        for name, m in self.models.items():
            if m.init_from is None:
                continue
            parent = self.models.get(m.init_from)
            if parent is None or m.init_from == name:
                raise ValueError(
                    f"bootstrap {name}.init_from: {m.init_from!r} is not another model of this group "
                    f"({sorted(set(self.models) - {name})})"
                )
            for key in ("arch", "hidden_size", "num_layers", "image_size", "prompt_version"):
                if getattr(m, key) != getattr(parent, key):
                    raise ValueError(
                        f"bootstrap {name}.init_from {m.init_from}: {key} differs ({getattr(m, key)!r} vs "
                        f"{getattr(parent, key)!r}); a model started from another keeps its architecture, so set "
                        f"{name}.{key} to {getattr(parent, key)!r}"
                    )
        self.order()  # refuses cycles

    def order(self) -> list[str]:
        """The models in config order, each after the model it starts from."""
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in ordered:
                return
            if name in visiting:
                raise ValueError(f"bootstrap init_from forms a cycle through {name}")
            visiting.add(name)
            if self.models[name].init_from is not None:
                visit(self.models[name].init_from)
            ordered.append(name)

        for name in self.models:
            visit(name)
        return ordered

    @property
    def threads_per_job(self) -> int:
        return self.threads or max(1, cpu_count() // self.jobs)


def _bootstrap_one(
    name: str,
    world_dir: str,
    out_dir: str,
    settings: dict,
    live_dir: str,
    threads: int,
    init_dir: str | None,
    speedups: dict,
) -> float:
    """One model in a worker process: the same seeding and training as in-process; returns seconds taken."""
    import torch

    from mmkd.console import setup_logging
    from mmkd.stage_io import seed_everything

    setup_logging()
    torch.set_num_threads(threads)
    settings = BootstrapSettings(**settings)
    seed_everything(settings.seed)
    start = time.perf_counter()
    bootstrap_model(
        name, world_dir, out_dir, settings, live_dir=live_dir, init_dir=init_dir, speedups=CpuSpeedups(**speedups)
    )
    return time.perf_counter() - start


def bootstrap_group(
    group: BootstrapGroup, world_dir: str | Path, out_root: str | Path, live_root: str | Path
) -> dict[str, Path]:
    """Pre-train every model of ``group`` into ``out_root/<name>`` (logs in ``live_root/<name>``), ``group.jobs`` at a
    time in fresh processes. A model that fails does not stop the others; the error names every failed model."""
    threads = group.threads_per_job
    log.info("bootstrapping %s, %d at a time with %d torch thread(s) each", list(group.models), group.jobs, threads)
    # spawn, not fork: a forked child of a process that has started torch's thread pool can deadlock
    context = multiprocessing.get_context("spawn")
    # progress bars from parallel jobs would overwrite each other: each job logs a line every tenth of the way instead
    env_before = os.environ.get("TQDM_DISABLE")
    if group.jobs > 1:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=group.jobs, mp_context=context) as pool:
            failed = _run_in_order(group, pool, world_dir, out_root, live_root, threads)
    finally:
        if group.jobs > 1:
            if env_before is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = env_before
    if failed:
        raise RuntimeError(
            "bootstrap failed for " + "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in failed.items())
        ) from next(iter(failed.values()))
    return {name: Path(out_root, name) for name in group.models}


def _run_in_order(group: BootstrapGroup, pool, world_dir, out_root, live_root, threads: int) -> dict[str, Exception]:
    """Submit every model whose ``init_from`` model is done (all others at once, in config order), wait for any to
    finish, repeat. Returns the failed models; one whose ``init_from`` model failed is failed without running."""
    waiting = {name: group.models[name] for name in group.order()}
    done: set[str] = set()
    failed: dict[str, Exception] = {}
    running = {}
    while waiting or running:
        for name, settings in list(waiting.items()):
            parent = settings.init_from
            if parent in failed:
                failed[name] = RuntimeError(f"its init_from model {parent} failed")
            elif parent is None or parent in done:
                init_dir = None if parent is None else str(Path(out_root, parent))
                args = (name, str(world_dir), str(Path(out_root, name)), asdict(settings), str(Path(live_root, name)))
                running[pool.submit(_bootstrap_one, *args, threads, init_dir, asdict(group.cpu_speedups))] = name
            else:
                continue
            del waiting[name]
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            name = running.pop(future)
            try:
                log.info("%s: pre-trained in %.0f s", name, future.result())
                done.add(name)
            except Exception as e:  # noqa: BLE001 - reported by the caller with the model's name
                failed[name] = e
    return failed
