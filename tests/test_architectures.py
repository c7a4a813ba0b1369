"""Every architecture class the paper-scale profiles use (LLaVA-NeXT student; Qwen2-VL and InternVL teachers), and the
demo's LLaVA, runs through the whole method as a tiny model of the same class: labelling through the local backend
with the profiles' settings, Stage 1, Stage 2 (SFT + DPO) and the ``mmkd predict`` command.

Stage 1 and Stage 2 themselves are asserted on every architecture in tests/training/test_trainers.py (adapter files,
every LoRA parameter trained, loss logged, DPO leaving ln 2); the runs are the session fixtures of conftest.py, so
this module reuses them instead of training again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from peft import get_peft_model
from peft.tuners.tuners_utils import check_target_module_exists
from transformers import LlavaNextForConditionalGeneration

from mmkd.cli import compose
from mmkd.demo.tiny import ARCHITECTURES
from mmkd.inference.answering import label_items
from mmkd.inference.local import LocalConfig
from mmkd.labelling.backends import LABELLING_KEYS, make_backend
from mmkd.modeling import load_model
from mmkd.schema import ANSWER_SCHEMA, read_items
from mmkd.training.config import LoraSettings, Stage1Settings, Stage2Settings, TrainSettings, from_params
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.trainers import lora_config

ROOT = Path(__file__).resolve().parent.parent
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
PAPER_PROFILE = ["data=newsclippings", "teachers=paper_local", "student=paper", "stage1=paper", "stage2=paper"]


def linear_names(model) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def language_model_projections(names: set[str]) -> set[str]:
    return {n for n in names if ".language_model." in n and n.rsplit(".", 1)[-1] in PROJECTIONS}


def load_benchmark():
    """benchmarks/gpu_step_benchmark.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_step_benchmark", ROOT / "benchmarks" / "gpu_step_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


# --- The profiles themselves --------------------------------------------------------------------------------------


def test_paper_profiles_parse_into_gpu_settings_and_the_demo_stays_on_cpu_settings():
    paper, demo = compose(PAPER_PROFILE, ROOT / "conf"), compose([], ROOT / "conf")
    stage1 = from_params(TrainSettings, paper["stage1"]["train"])
    stage2 = from_params(Stage2Settings, paper["stage2"])
    # The CPU speed-ups for tiny models are never set at paper scale: TRL's own code paths run.
    assert "cpu_speedups" not in paper["stage1"] and "cpu_speedups" not in paper["stage2"]
    assert from_params(Stage1Settings, paper["stage1"]).cpu_speedups == stage2.cpu_speedups == CpuSpeedups()
    for s in (stage1, stage2.sft, stage2.dpo):
        assert (s.bf16, s.tf32, s.gradient_checkpointing) == (True, True, True)
    assert stage1.batch_size * stage1.grad_accum == 128  # LLaVA-1.5's LoRA recipe: 128 items per step
    assert stage2.max_image_pixels is None  # Stage 2 inherits Stage 1's cap
    assert paper["student"] == {
        "model": "models/hf/llava-v1.6-vicuna-7b-hf",
        "prompt_version": paper["data"]["prompt_version"],
        "dtype": "bfloat16",
    }
    assert sorted(paper["teachers"]) == ["internvl2_5_78b", "qwen2_vl_72b"]
    for name, teacher in paper["teachers"].items():
        config = LocalConfig(**{k: v for k, v in teacher.items() if k not in LABELLING_KEYS})  # every key known
        assert (config.dtype, config.device_map, teacher["weights"]) == ("bfloat16", "auto", config.model), name
    # The CPU demo keeps its settings: nothing above leaks into the default config.
    demo_stage2 = from_params(Stage2Settings, demo["stage2"])
    for s in (from_params(TrainSettings, demo["stage1"]["train"]), demo_stage2.sft, demo_stage2.dpo):
        assert (s.bf16, s.tf32, s.gradient_checkpointing, s.max_image_pixels) == (False, None, False, None)
    assert demo["student"]["dtype"] == "float32"
    assert from_params(Stage1Settings, demo["stage1"]).cpu_speedups == demo_stage2.cpu_speedups != CpuSpeedups()


# --- LoRA goes on the language model only ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_lora_adapts_every_language_model_projection_and_nothing_else(tiny_models, arch):
    base, _ = load_model(tiny_models[arch], device="cpu")
    linears = linear_names(base)
    expected = language_model_projections(linears)
    assert len(expected) == 2 * len(PROJECTIONS)  # 2 layers x 7 projections
    # The vision towers of LLaVA (CLIP) and InternVL (InternViT) have q/k/v projections of the same names: the regex
    # must tell them apart by their path, not their name.
    if arch != "qwen2_vl":  # Qwen2-VL's vision attention is a fused qkv
        assert any("vision_tower" in n and n.endswith("q_proj") for n in linears), "a decoy the regex must skip"

    peft_model = get_peft_model(base, lora_config(LoraSettings()))
    adapted = {
        n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and m.lora_A
    }
    assert adapted == expected


def test_paper_profile_lora_targets_the_real_size_student_language_model_only():
    """The paper student (LLaVA-v1.6-Vicuna-7B, built on the meta device: no memory, no weights) and the paper
    profiles' LoRA settings, matched with PEFT's own module matcher: 32 layers x 7 projections, none in CLIP."""
    config = load_benchmark().paper_student_config({"<s>": 1, "</s>": 2, "<pad>": 32001, "<image>": 32000})
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(config)
    assert 7.0e9 < sum(p.numel() for p in model.parameters()) < 7.1e9  # LLaVA-v1.6-Vicuna-7B has 7.06B
    params = compose(PAPER_PROFILE, ROOT / "conf")
    linears = linear_names(model)
    for stage_lora in (params["stage1"]["lora"], params["stage2"]["lora"]):
        peft_config = lora_config(from_params(LoraSettings, stage_lora))
        targeted = {n for n in linears if check_target_module_exists(peft_config, n)}
        assert targeted == language_model_projections(linears)
        assert len(targeted) == 32 * len(PROJECTIONS)


# --- Labelling: the local backend with the paper teachers' settings ----------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_local_teacher_with_profile_settings_labels_items(tiny_models, world_dir, tmp_path, arch):
    """A paper teacher's params (conf/teachers/paper_local.yaml), every key of them, on a tiny model of each class,
    through ``make_backend`` as the label stage builds it. Only what cannot apply here is changed."""
    paper = compose(PAPER_PROFILE, ROOT / "conf")["teachers"]
    params = next(iter(paper.values())) | {
        "model": str(tiny_models[arch]),
        "weights": str(tiny_models[arch]),
        "cache_dir": str(tmp_path / "cache"),
        "prompt_version": "v1",  # the tiny models' tokenizers were trained on v1 prompts
        "dtype": "float32",  # bfloat16 and device_map: auto are GPU settings
        "device_map": None,
        "device": "cpu",
        "attn_implementation": "eager",  # not transformers' default (sdpa), so that passing it on is visible
        "max_image_pixels": 56 * 112,  # two 56-px tiles of the tiny models (the profile's cap is for 448-px tiles)
        "batch_size": 4,
        "max_new_tokens": 8,
    }
    teacher = make_backend(arch, params)
    assert teacher.model.config._attn_implementation == "eager"
    assert teacher.identity()["max_image_pixels"] == 56 * 112  # cached answers are keyed by the cap too
    if arch == "internvl":
        assert teacher.processor.image_processor.max_patches == 2
    if arch == "llava_next":
        assert teacher.model.config.image_grid_pinpoints == [[56, 112], [112, 56]]

    items = read_items(world_dir / "test.parquet").head(5)
    answers = label_items(teacher, items, source=arch, prompt_version="v1")
    assert answers.schema == pl.Schema(ANSWER_SCHEMA)
    assert answers["id"].to_list() == items["id"].to_list()
    assert set(answers["status"]) <= {"ok", "unparsed"}  # every item reached the model and came back
    assert all(isinstance(t, str) for t in answers["raw_text"])


# --- mmkd predict on the Stage-2 adapter (a chain: base -> Stage 1 -> Stage 2) ------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_predict_command_on_each_architecture(stage2_run, world_dir, tmp_path, arch):
    adapter = stage2_run(arch).adapter
    items = read_items(world_dir / "test.parquet").head(3)
    items_file = tmp_path / "items.jsonl"
    items_file.write_text(
        "".join(
            json.dumps({k: r[k] for k in ("id", "image_path", "caption")}) + "\n" for r in items.iter_rows(named=True)
        )
    )
    out = tmp_path / "answers.parquet"
    mmkd = Path(sys.executable).parent / "mmkd"  # the console script pip installed next to this interpreter
    cmd = [str(mmkd), "predict", "--items", str(items_file), "--out", str(out), "--adapter", str(adapter)]
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [*cmd, "--batch-size", "2"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == len(items) and summary["out"] == str(out)
    answers = pl.read_parquet(out)
    assert answers.schema == pl.Schema(ANSWER_SCHEMA | {"raw_score": pl.Float64})  # the score before calibration
    assert answers["id"].to_list() == items["id"].to_list()
    assert set(answers["status"]) <= {"ok", "unparsed"}
    assert answers["source"].to_list() == ["student"] * len(items)
