"""Session-wide fixtures: a small demo world, one tiny randomly initialised model per architecture, and Stage-1 and
Stage-2 adapters trained on them (built lazily, once, only by the tests that ask).

Random weights are enough for the mechanics tests (shapes, files, parameter updates); nothing here needs a model
that answers well. Everything is built locally, so the suite runs offline. Also here: which tests make the slow tier
(docs/developing.md), and the early start of the end-to-end pipeline runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch
from answering_models import trained_like
from scheduling import run_order, xdist_worker

from mmkd.demo.bootstrap import corpus, teacher_target
from mmkd.demo.tiny import ARCHITECTURES, build_tiny
from mmkd.demo.world import make_world
from mmkd.modeling import register_processor_plugins
from mmkd.schema import read_gold, read_items
from mmkd.training import trainers
from mmkd.training.config import DPOSettings, LoraSettings, Stage2Settings, TrainSettings
from mmkd.training.rows import with_prompts

# What load_model does before it loads a processor; some tests call AutoProcessor.from_pretrained directly.
register_processor_plugins()

# One torch thread in the test process: the end-to-end pipelines run beside the tests (tests/test_pipeline_e2e.py),
# and on a 2-core machine a two-thread torch that shares its cores stalls at every op's barrier (tiny models run
# many tiny ops). Stages in subprocesses pin their own count (mmkd.numerics).
torch.set_num_threads(1)

# The slow tier (`-m slow`; the fast one is `-m "not slow"`, docs/developing.md): tests with these markers, tests
# that use a fixture that trains, and the tests below, each more than a few seconds (measured with --durations).
# A new slow test says so itself, with @pytest.mark.slow.
SLOW_MARKERS = ("e2e", "multiprocess", "vllm", "label_studio")
TRAINING_FIXTURES = ("answering_models", "stage1_run", "stage2_run")
SLOW_TESTS = (  # node-id prefixes: a whole module, or a test and its parameters
    "tests/data/test_prepare_stage.py::test_repro_prepares_the_raw_folder_and_tracks_it",
    "tests/data/test_prepare_stage.py::test_stage_list_has_prepare_and_no_demo_stages",
    "tests/data/test_prepare_stage_safety.py::test_a_hostile_raw_folder_is_prepared_with_its_report",
    "tests/data/test_prepare_stage_safety.py::test_a_data_dir_holding_the_raw_folder_is_refused",
    "tests/data/test_verite.py::test_the_stage_runs_prepare_verite_by_name",
    "tests/demo/test_bootstrap.py::test_a_failing_model_is_named",
    "tests/demo/test_bootstrap.py::test_a_group_trained_side_by_side",
    "tests/demo/test_bootstrap.py::test_a_model_whose_init_from_model_fails",
    "tests/demo/test_bootstrap.py::test_bootstrapped_model_loads_through_auto_classes",
    "tests/demo/test_bootstrap.py::test_init_from_starts_from_the_named_models_trained_weights",
    "tests/demo/test_tiny.py::test_generate_answers_every_batch_from_its_own_prompts",
    "tests/demo/test_tiny.py::test_generate_pads_on_the_left",
    "tests/inference/test_label_stage.py",  # `dvc repro` of the label stage against servers
    "tests/inference/test_transformers_serve.py",  # a served model
    "tests/test_architectures.py::test_local_teacher_with_profile_settings_labels_items",
    "tests/test_export.py::test_exported_model_answers_like_mmkd_predict_without_mmkd",
    "tests/test_gpu_step_benchmark.py",
    "tests/test_labelling.py::test_an_answer_cached_without_a_score_is_scored_by_the_local_model",
    "tests/test_plots_offline.py",
    "tests/test_scoring.py::test_generation_returns_a_score_per_answer",
    "tests/training/test_collate.py::test_sft_trains_to_the_same_weights_with_the_cache",
    "tests/training/test_logprob_head.py::test_full_head_trains_sft_and_dpo_as_the_kernel_does",
    "tests/training/test_trainers.py::test_gradient_checkpointing_and_accumulation_still_train_every_lora_parameter",
    "tests/training/test_trainers.py::test_image_cap_is_recorded_inherited_by_stage2_and_applied_when_loading",
    "tests/training/test_trainers.py::test_modules_to_save_trains_the_output_layer_in_full_and_loads_back",
)


def pytest_collection_modifyitems(config, items):
    """Mark the slow tier (see SLOW_MARKERS), and order the tests (``run_order``)."""
    for item in items:
        if (
            any(item.get_closest_marker(m) for m in SLOW_MARKERS)
            or set(TRAINING_FIXTURES) & set(getattr(item, "fixturenames", ()))
            or item.nodeid.startswith(SLOW_TESTS)
        ):
            item.add_marker(pytest.mark.slow)
    items[:] = run_order(items, distributed=xdist_worker() is not None)


@pytest.fixture(scope="session", autouse=True)
def e2e_pipeline_started(request, tmp_path_factory):
    """When a test of tests/test_pipeline_e2e.py is selected, its two cold pipeline runs start with the session, in
    the background, so that they overlap the tests before it (``test_pipeline_e2e.start_pipeline``); else None. A
    failure to start is handed to that module's fixture, which raises it there, not in whichever test came first.
    Under pytest-xdist, None: every worker collects every test, but only one runs that module, and it starts them
    itself as the first module it runs (``run_order``)."""
    if xdist_worker() is not None or not any(
        item.path.name == "test_pipeline_e2e.py" for item in request.session.items
    ):
        yield None
        return
    from test_pipeline_e2e import start_pipeline

    try:
        started = start_pipeline(tmp_path_factory.mktemp("pipeline"))
    except (Exception, pytest.skip.Exception, pytest.fail.Exception) as e:
        yield e
        return
    yield started
    started.stop()


WORLD_SIZES = {"bootstrap": 64, "train": 24, "test": 16}
PROMPT_VERSION = "v1"

# Tiny but real: 3 optimiser steps, enough for every LoRA A and B matrix to move (B starts at zero, so A only
# gets a gradient from the second step on). The learning rate is large so that the change is far above noise.
STAGE1_LORA = LoraSettings(r=4, alpha=8)
STAGE1_TRAIN = TrainSettings(max_steps=3, batch_size=4, learning_rate=1e-2, logging_steps=1)
STAGE2_LORA = LoraSettings(r=4, alpha=8)
STAGE2 = Stage2Settings(
    lora=STAGE2_LORA,
    sft=TrainSettings(max_steps=2, batch_size=4, learning_rate=1e-2, logging_steps=1),
    # Large enough a step that the DPO loss leaves ln 2 within a few steps.
    dpo=DPOSettings(max_steps=3, batch_size=4, learning_rate=5e-3, logging_steps=1),
)
REJECTED = "Label: pristine. Rationale: it looks fine."  # the `rejected` answer of every DPO pair


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """A demo world (images, items, gold and spec files) with small splits."""
    out = tmp_path_factory.mktemp("world")
    make_world(out, seed=0, sizes=WORLD_SIZES)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """arch -> directory of a tiny model + processor with random weights, for every architecture in mmkd.demo.tiny."""
    root = tmp_path_factory.mktemp("tiny")
    texts = corpus(PROMPT_VERSION)
    return {arch: build_tiny(arch, root / arch, texts) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def answering_models(tiny_models, world_dir, tmp_path_factory) -> Callable[[str], Path]:
    """``answering_models(arch)``: that architecture's tiny model fine-tuned to write the answer format
    (``answering_models.trained_like``), trained once per session, on first use."""
    done: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in done:
            items = read_items(world_dir / "bootstrap.parquet")
            gold = read_gold(world_dir / "bootstrap.gold.parquet")
            out = tmp_path_factory.mktemp(f"answering_{arch}") / arch
            done[arch] = trained_like(tiny_models[arch], items, gold, out)
        return done[arch]

    return get


@pytest.fixture(scope="session")
def sft_rows(world_dir) -> pl.DataFrame:
    """SFT rows (id, completion, image_path, prompt) for the world's train items, with the demo teacher's target."""
    spec = pl.read_parquet(world_dir / "train.spec.parquet")
    rows = pl.DataFrame({"id": spec["id"], "completion": [teacher_target(r) for r in spec.iter_rows(named=True)]})
    return with_prompts(rows, read_items(world_dir / "train.parquet"), PROMPT_VERSION)


@contextlib.contextmanager
def recording_trainable_params() -> Iterator[list[dict[str, torch.Tensor]]]:
    """Record a copy of every trainable parameter each time an SFT or DPO trainer starts training.

    The trainers are built and run inside ``run_stage1`` / ``run_stage2``, so the initial LoRA weights (created
    there) can only be seen from inside: the TRL trainer classes they use are swapped for subclasses that take a
    snapshot when ``train()`` is called.
    """
    snapshots: list[dict[str, torch.Tensor]] = []

    def snapshotting(trainer_cls):
        class Snapshotting(trainer_cls):
            def train(self, *args, **kwargs):
                snapshots.append({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad})
                return super().train(*args, **kwargs)

        return Snapshotting

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainers, "SFTTrainer", snapshotting(trainers.SFTTrainer))
        mp.setattr(trainers, "DPOTrainer", snapshotting(trainers.DPOTrainer))
        yield snapshots


@pytest.fixture(scope="session")
def record_trainable_params() -> Callable[[], contextlib.AbstractContextManager]:
    """The ``recording_trainable_params`` context manager, for test modules (conftest is not importable)."""
    return recording_trainable_params


@dataclass(frozen=True)
class Stage1Run:
    """What one ``run_stage1`` call produced, plus the trainable parameters at the start of training."""

    arch: str
    base: Path
    adapter: Path
    live: Path
    initial: dict[str, torch.Tensor]


@pytest.fixture(scope="session")
def stage1_run(tiny_models, sft_rows, tmp_path_factory) -> Callable[[str], Stage1Run]:
    """``stage1_run(arch)``: a tiny Stage-1 run on that architecture's model, trained once per session."""
    done: dict[str, Stage1Run] = {}

    def run(arch: str) -> Stage1Run:
        if arch not in done:
            root = tmp_path_factory.mktemp(f"stage1_{arch}")
            with recording_trainable_params() as snapshots:
                trainers.run_stage1(
                    str(tiny_models[arch]),
                    sft_rows,
                    lora=STAGE1_LORA,
                    settings=STAGE1_TRAIN,
                    seed=0,
                    out_dir=root / "adapter",
                    live_dir=root / "dvclive",
                )
            assert len(snapshots) == 1, "Stage 1 should train exactly once"
            done[arch] = Stage1Run(arch, tiny_models[arch], root / "adapter", root / "dvclive", snapshots[0])
        return done[arch]

    return run


@pytest.fixture(scope="session")
def stage2_settings() -> Stage2Settings:
    """The tiny Stage-2 settings every ``stage2_run`` uses."""
    return STAGE2


@pytest.fixture(scope="session")
def stage2_data(sft_rows) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A small conflict set: SFT rows, and DPO pairs preferring the teacher's target over a wrong answer."""
    sft = sft_rows.head(8)
    pairs = sft.select(
        "id", "image_path", "prompt", pl.col("completion").alias("chosen"), pl.lit(REJECTED).alias("rejected")
    )
    return sft, pairs


@dataclass(frozen=True)
class Stage2Run:
    """What one ``run_stage2`` call (SFT then DPO) on top of a Stage-1 run produced."""

    stage1: Stage1Run
    settings: Stage2Settings
    trained: bool
    adapter: Path
    live: Path
    snapshots: list[dict[str, torch.Tensor]]  # trainable parameters as SFT starts, then as DPO starts


@pytest.fixture(scope="session")
def stage2_run(stage1_run, stage2_data, tmp_path_factory) -> Callable[[str], Stage2Run]:
    """``stage2_run(arch)``: a tiny Stage-2 run (SFT + DPO) on top of ``stage1_run(arch)``, once per session."""
    done: dict[str, Stage2Run] = {}

    def run(arch: str) -> Stage2Run:
        if arch not in done:
            s1 = stage1_run(arch)
            root = tmp_path_factory.mktemp(f"stage2_{arch}")
            with recording_trainable_params() as snapshots:
                trained = trainers.run_stage2(
                    str(s1.base),
                    str(s1.adapter),
                    *stage2_data,
                    settings=STAGE2,
                    seed=0,
                    out_dir=root / "adapter",
                    live_dir=root / "dvclive",
                )
            done[arch] = Stage2Run(s1, STAGE2, trained, root / "adapter", root / "dvclive", snapshots)
        return done[arch]

    return run
