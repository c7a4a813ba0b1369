"""Tests for the student trainers on tiny models: what each stage writes, that every LoRA parameter is trained, that
Stage-2 adapters chain onto Stage 1, and that bad settings fail with a message instead of training nothing."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch
from expected_files import ADAPTER_FILES
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor

from mmkd.demo.tiny import ARCHITECTURES
from mmkd.modeling import ADAPTER_INFO, adapter_chain, generate, load_model, load_student, user_turn
from mmkd.training.config import DPOSettings, LoraSettings, Stage2Settings, TrainSettings, from_params
from mmkd.training.trainers import check_dpo_length, run_stage1, run_stage2

STAGE2_ARCH = "llava"  # the demo student's architecture, for the tests that need only one


def saved_name(param_name: str) -> str:
    """The key PEFT saves a trainable parameter under (without the adapter name)."""
    return param_name.replace(".default.", ".")


def assert_every_param_changed(initial: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """TRL-style: every trainable parameter is a LoRA weight of the language model, is saved, and moved."""
    assert initial, "nothing was trainable"
    for name in initial:
        assert "lora_" in name and "language_model" in name, f"{name} should be frozen"
    assert {saved_name(n) for n in initial} == set(saved)
    unchanged = [n for n, p in initial.items() if torch.allclose(p, saved[saved_name(n)])]
    assert not unchanged, f"{len(unchanged)}/{len(initial)} parameters did not change, e.g. {unchanged[:3]}"


def lora_layers(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (A, B) of a saved adapter."""
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    return {
        k.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): (v, weights[k.replace("lora_A", "lora_B")])
        for k, v in weights.items()
        if k.endswith("lora_A.weight")
    }


def assert_merged(before, after, adapter_dir: Path, lora: LoraSettings) -> None:
    """``after`` holds ``before`` plus the adapter's ``B @ A * alpha / r`` in every adapted layer, nothing else."""
    layers = lora_layers(adapter_dir)
    old, new = before.state_dict(), after.state_dict()
    assert set(old) == set(new)
    for name, (a, b) in layers.items():
        expected = old[f"{name}.weight"] + (b @ a) * (lora.alpha / lora.r)
        torch.testing.assert_close(new[f"{name}.weight"], expected, atol=1e-5, rtol=1e-4)
    untouched = [k for k in old if k.removesuffix(".weight") not in layers]
    assert untouched
    for k in untouched:
        assert torch.equal(old[k], new[k]), f"{k} changed but has no LoRA"


def tsv_values(path: Path) -> list[float]:
    lines = path.read_text().splitlines()
    assert lines[0].split("\t")[-1] == "loss", lines[0]
    return [float(line.split("\t")[-1]) for line in lines[1:]]


def first_image(rows: pl.DataFrame) -> Image.Image:
    return Image.open(rows["image_path"][0]).convert("RGB")


def answers_one(model, processor, rows: pl.DataFrame) -> None:
    out = generate(model, processor, [rows["prompt"][0]], [first_image(rows)], max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)


# --- Stage 1 -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage1_saves_a_safetensors_adapter_with_its_base(stage1_run, arch):
    run = stage1_run(arch)
    assert {p.name for p in run.adapter.iterdir()} == ADAPTER_FILES  # safetensors only, no pickles
    assert json.loads((run.adapter / ADAPTER_INFO).read_text()) == {"base": str(run.base), "parent": None}
    assert adapter_chain(run.adapter) == (str(run.base), [str(run.adapter)])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage1_logs_the_loss_with_dvclive(stage1_run, arch):
    run = stage1_run(arch)
    metrics = json.loads((run.live / "metrics.json").read_text())
    assert math.isfinite(metrics["loss"])
    losses = tsv_values(run.live / "plots" / "metrics" / "loss.tsv")
    assert len(losses) == 3  # logging_steps=1, max_steps=3
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage1_trains_every_lora_parameter(stage1_run, arch):
    run = stage1_run(arch)
    saved = load_file(run.adapter / "adapter_model.safetensors")
    # B starts at zero, so a B that is still zero was never trained; A must have moved from its random start.
    assert all(name.endswith(("lora_A.weight", "lora_B.weight")) for name in saved)
    assert_every_param_changed(run.initial, saved)
    # Every projection of every language-model layer is adapted (the config's regex), none of the vision tower.
    modules = {n.rsplit(".lora_", 1)[0] for n in saved}
    assert {m.rsplit(".", 1)[-1] for m in modules} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage1_adapter_loads_back_merged_and_generates(stage1_run, sft_rows, arch):
    run = stage1_run(arch)
    base, _ = load_model(run.base, device="cpu")
    student, processor = load_student(None, run.adapter, device="cpu")
    assert_merged(base, student, run.adapter, LoraSettings(r=4, alpha=8))
    answers_one(student, processor, sft_rows)


# --- Stage 2 -------------------------------------------------------------------------------------------------------
# One tiny Stage-2 run (SFT then DPO) per architecture, on top of that architecture's Stage 1 (conftest.stage2_run).


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage2_saves_an_adapter_whose_parent_is_stage1(stage2_run, arch):
    run = stage2_run(arch)
    s1, out = run.stage1, run.adapter
    assert run.trained is True
    # only the trained adapter is saved, not TRL's frozen DPO reference copy (a `ref` folder)
    assert {str(p.relative_to(out)) for p in out.rglob("*")} == ADAPTER_FILES
    assert json.loads((out / ADAPTER_INFO).read_text()) == {"base": str(s1.base), "parent": str(s1.adapter)}
    assert adapter_chain(out) == (str(s1.base), [str(s1.adapter), str(out)])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage2_logs_sft_and_dpo_and_dpo_learns(stage2_run, arch):
    live = stage2_run(arch).live
    assert {p.name for p in live.iterdir()} == {"sft", "dpo"}
    for phase in ("sft", "dpo"):
        assert {p.name for p in (live / phase).iterdir()} == {"metrics.json", "params.yaml", "plots"}, phase
        assert all(math.isfinite(v) for v in tsv_values(live / phase / "plots" / "metrics" / "loss.tsv"))
    dpo = tsv_values(live / "dpo" / "plots" / "metrics" / "loss.tsv")
    assert len(dpo) == 3
    # ln 2 is the loss of a policy equal to its reference; a DPO that truncated its responses would stay there.
    assert abs(dpo[-1] - math.log(2)) > 0.01, dpo


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage2_trains_every_parameter_of_the_new_lora(stage2_run, arch):
    run = stage2_run(arch)
    sft_start, dpo_start = run.snapshots  # one snapshot as SFT starts, one as DPO starts
    saved = load_file(run.adapter / "adapter_model.safetensors")
    assert_every_param_changed(sft_start, saved)
    assert_every_param_changed(dpo_start, saved)  # DPO itself moved every parameter too
    # A fresh LoRA, not a continuation of Stage 1's: its B starts at zero.
    assert all(not p.any() for n, p in sft_start.items() if "lora_B" in n)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stage2_adapter_applies_the_chain_and_generates(stage2_run, sft_rows, arch):
    run = stage2_run(arch)
    after_stage1, _ = load_student(None, run.stage1.adapter, device="cpu")
    student, processor = load_student(None, run.adapter, device="cpu")
    assert_merged(after_stage1, student, run.adapter, run.settings.lora)
    answers_one(student, processor, sft_rows)


def test_stage2_with_an_empty_conflict_set_passes_stage1_through(stage1_run, stage2_data, stage2_settings, tmp_path):
    s1 = stage1_run(STAGE2_ARCH)
    sft, pairs = (df.clear() for df in stage2_data)
    out, live = tmp_path / "stage2", tmp_path / "dvclive"
    (out / "stale").mkdir(parents=True)  # left over from an earlier run; must not survive

    trained = run_stage2(
        str(s1.base), str(s1.adapter), sft, pairs, settings=stage2_settings, seed=0, out_dir=out, live_dir=live
    )
    assert trained is False

    def files(d: Path) -> dict[str, bytes]:
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    assert files(out) == files(s1.adapter)
    assert live.is_dir()


# --- Settings -------------------------------------------------------------------------------------------------------


def test_dpo_max_length_shorter_than_an_item_is_refused(tiny_models, stage2_data):
    processor = AutoProcessor.from_pretrained(tiny_models[STAGE2_ARCH])
    _, pairs = stage2_data
    with pytest.raises(ValueError, match=rf"max_length=10 is shorter than item '{pairs['id'][0]}'"):
        check_dpo_length(processor, pairs, 10)
    check_dpo_length(processor, pairs, None)
    check_dpo_length(processor, pairs, 4096)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainSettings(batch_size=0), "batch_size and grad_accum must be >= 1"),
        (lambda: TrainSettings(max_steps=-1, epochs=0), "set epochs > 0 or max_steps > 0"),
        (lambda: TrainSettings(learning_rate=0), "learning_rate must be > 0"),
        (lambda: LoraSettings(r=0), "lora.r must be >= 1"),
        (lambda: DPOSettings(beta=0), "dpo.beta must be > 0"),
        (lambda: from_params(TrainSettings, {"lr": 1e-3}), r"TrainSettings: unknown setting\(s\) \['lr'\]"),
        (
            lambda: from_params(Stage2Settings, {"dpo": {"betta": 0.2}}),
            r"Stage2Settings.dpo: unknown setting\(s\) \['betta'\]",
        ),
        (lambda: from_params(Stage2Settings, {"sft": {"batch_size": 0}}), "batch_size and grad_accum must be >= 1"),
        (lambda: TrainSettings(max_image_pixels=100), r"max_image_pixels must be null or >= 784"),
        (
            lambda: from_params(
                Stage2Settings, {"sft": {"max_image_pixels": 1000}, "dpo": {"max_image_pixels": 2000}}
            ),
            r"stage2.sft.max_image_pixels=1000 and stage2.dpo.max_image_pixels=2000 differ",
        ),
    ],
)
def test_bad_settings_are_refused_with_a_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_from_params_builds_nested_stage2_settings():
    s = from_params(Stage2Settings, {"run_sft": False, "dpo": {"beta": 0.3}, "lora": {"r": 2}})
    assert (s.run_sft, s.dpo.beta, s.lora.r, s.sft.batch_size) == (False, 0.3, 2, TrainSettings().batch_size)
    assert isinstance(s.dpo, DPOSettings) and s.dpo.learning_rate == DPOSettings().learning_rate


def test_cpu_defaults_stay_as_they_were():
    """The demo runs on CPU: no bf16, no TF32 change, no checkpointing, no image cap unless a profile asks."""
    s = TrainSettings()
    assert (s.bf16, s.tf32, s.gradient_checkpointing, s.max_image_pixels, s.grad_accum) == (
        False,
        None,
        False,
        None,
        1,
    )
    s.check_hardware()  # nothing to refuse


# --- GPU settings ----------------------------------------------------------------------------------------------------
# The paper-scale profiles turn on gradient checkpointing, gradient accumulation and an image cap. These run on CPU
# too, so they are tested here on the paper student's architecture (LLaVA-NeXT).

GPU_ARCH = "llava_next"
# Keeps the 1x2 and 2x1 any-resolution grids of the tiny model (56x112 pixels) and drops 2x2, 3x1 and 1x3.
CAP = 56 * 112
WIDE = (168, 56)  # width, height: a 3:1 image, which would use the 3x1 grid without the cap


@pytest.fixture(scope="module")
def gpu_settings_run(tiny_models, sft_rows, stage2_data, record_trainable_params, tmp_path_factory):
    """Stage 1 with gradient checkpointing, accumulation over 2 batches and an image cap; then Stage 2 (SFT + DPO)
    with gradient checkpointing and no cap of its own."""
    base, root = str(tiny_models[GPU_ARCH]), tmp_path_factory.mktemp("gpu_settings")
    lora = LoraSettings(r=4, alpha=8)
    common = dict(batch_size=2, grad_accum=2, logging_steps=1, gradient_checkpointing=True)
    with record_trainable_params() as snapshots:
        run_stage1(
            base,
            sft_rows,
            lora=lora,
            settings=TrainSettings(max_steps=3, learning_rate=1e-2, max_image_pixels=CAP, **common),
            seed=0,
            out_dir=root / "stage1",
            live_dir=root / "live1",
        )
        run_stage2(
            base,
            str(root / "stage1"),
            *stage2_data,
            settings=Stage2Settings(
                lora=lora,
                sft=TrainSettings(max_steps=2, learning_rate=1e-2, **common),
                dpo=DPOSettings(max_steps=2, learning_rate=5e-3, **common),
            ),
            seed=0,
            out_dir=root / "stage2",
            live_dir=root / "live2",
        )
    return root, snapshots


def test_gradient_checkpointing_and_accumulation_still_train_every_lora_parameter(gpu_settings_run):
    root, (stage1_start, sft_start, dpo_start) = gpu_settings_run
    assert_every_param_changed(stage1_start, load_file(root / "stage1" / "adapter_model.safetensors"))
    stage2 = load_file(root / "stage2" / "adapter_model.safetensors")
    assert_every_param_changed(sft_start, stage2)
    assert_every_param_changed(dpo_start, stage2)
    # One logged loss per optimiser step (grad_accum batches each), not per batch.
    assert len(tsv_values(root / "live1" / "plots" / "metrics" / "loss.tsv")) == 3


def test_image_cap_is_recorded_inherited_by_stage2_and_applied_when_loading(gpu_settings_run, tiny_models):
    root, _ = gpu_settings_run
    for stage in ("stage1", "stage2"):
        assert json.loads((root / stage / ADAPTER_INFO).read_text())["max_image_pixels"] == CAP, stage

    def image_tokens(model, processor) -> int:
        prompt = processor.apply_chat_template(user_turn("Q?"), add_generation_prompt=True, tokenize=False)
        enc = processor(text=[prompt], images=[Image.new("RGB", WIDE)], return_tensors="pt")
        with torch.no_grad():
            assert torch.isfinite(model(**enc).logits).all()  # the model agrees with the processor on the grids
        return int((enc["input_ids"] == model.config.image_token_id).sum())

    base_model, base_processor = load_model(tiny_models[GPU_ARCH], device="cpu")
    student, processor = load_student(None, root / "stage2", device="cpu")  # the cap comes from the adapter
    assert student.config.image_grid_pinpoints == [[56, 112], [112, 56]]
    assert processor.image_processor.image_grid_pinpoints == [[56, 112], [112, 56]]
    assert image_tokens(student, processor) < image_tokens(base_model, base_processor)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_bf16_on_a_cpu_machine_is_refused_before_the_model_is_loaded(sft_rows, tmp_path):
    settings = TrainSettings(max_steps=1, bf16=True)
    with pytest.raises(ValueError, match=r"bf16: true needs a CUDA GPU.*set bf16: false"):
        # The base does not exist: the settings must be refused before anything tries to load it.
        run_stage1(
            str(tmp_path / "no-such-model"),
            sft_rows,
            lora=LoraSettings(),
            settings=settings,
            seed=0,
            out_dir=tmp_path / "out",
            live_dir=tmp_path / "live",
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="tf32: true needs an Ampere or newer CUDA GPU"):
        TrainSettings(tf32=True).check_hardware()


def test_modules_to_save_trains_the_output_layer_in_full_and_loads_back(tiny_models, sft_rows, tmp_path):
    """The demo student's ``lora.modules_to_save: [lm_head]``: the whole output layer is trained and saved with the
    adapter, and loading the adapter (and a Stage-2 chain on top) applies it."""
    base = str(tiny_models[STAGE2_ARCH])
    lora = LoraSettings(r=4, alpha=8, modules_to_save=["lm_head"])
    train = TrainSettings(max_steps=3, learning_rate=1e-2, batch_size=4, logging_steps=1)
    run_stage1(
        base,
        sft_rows,
        lora=lora,
        settings=train,
        seed=0,
        out_dir=tmp_path / "s1",
        live_dir=tmp_path / "l1",
        prompt_version="v1-evidence",
    )
    assert json.loads((tmp_path / "s1" / ADAPTER_INFO).read_text())["prompt_version"] == "v1-evidence"
    saved = load_file(tmp_path / "s1" / "adapter_model.safetensors")
    head_keys = [k for k in saved if "lm_head" in k]
    assert head_keys, sorted(saved)[:5]
    original, _ = load_model(base, device="cpu")
    student, _ = load_student(None, tmp_path / "s1", device="cpu")
    before = original.get_output_embeddings().weight
    after = student.get_output_embeddings().weight
    assert before.shape == after.shape and not torch.allclose(before, after)
    torch.testing.assert_close(after, saved[head_keys[0]])


def test_a_baseline_with_no_rows_saves_an_untrained_adapter_and_stage1_refuses(tiny_models, sft_rows, tmp_path):
    """A supervised baseline whose selection is empty (e.g. one teacher: no conflicts) is the base model: an adapter
    whose LoRA B matrices are zero, so it answers as the base does. Stage 1 itself still refuses to train on none."""
    lora, train = LoraSettings(r=4, alpha=8), TrainSettings(max_steps=3, batch_size=4, learning_rate=1e-2)
    base, empty = str(tiny_models[STAGE2_ARCH]), sft_rows.clear()
    on_nothing = functools.partial(
        run_stage1, base, empty, lora=lora, settings=train, seed=0, out_dir=tmp_path / "a", live_dir=tmp_path / "l"
    )
    with pytest.raises(ValueError, match="Stage 1 has no training rows"):
        on_nothing()
    on_nothing(allow_empty=True)
    assert {p.name for p in (tmp_path / "a").iterdir()} == ADAPTER_FILES
    layers = lora_layers(tmp_path / "a")
    assert layers and all(torch.count_nonzero(b) == 0 for _, b in layers.values())
    plain, processor = load_model(base)
    adapted, _ = load_student(base, str(tmp_path / "a"))
    image, prompt = first_image(sft_rows), sft_rows["prompt"][0]
    assert generate(adapted, processor, [prompt], [image], max_new_tokens=6) == generate(
        plain, processor, [prompt], [image], max_new_tokens=6
    )


def test_training_logs_in_a_git_repo_without_a_commit(tmp_path, monkeypatch):
    """`git init`, `dvc init`, `dvc repro` before any commit: dvclive alone stops there ("Empty git repo")."""
    import subprocess

    from dvc.repo import Repo

    from mmkd.training.callbacks import open_live

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    Repo.init(str(tmp_path)).close()
    monkeypatch.chdir(tmp_path)
    live = open_live(tmp_path / "live")
    live.log_metric("loss", 1.5)
    live.next_step()
    live.end()
    assert json.loads((tmp_path / "live/metrics.json").read_text())["loss"] == 1.5
    assert (tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines()[1].split("\t")[1] == "1.5"
