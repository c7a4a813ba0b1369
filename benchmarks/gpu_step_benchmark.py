"""Benchmark the paper-scale student on a GPU: one Stage-1 step and one Stage-2 step (SFT, then DPO) of the
LLaVA-v1.6-Vicuna-7B architecture at its real size, through mmkd's own ``run_stage1`` / ``run_stage2`` with the
settings of the paper profiles (conf/stage1/paper.yaml, conf/stage2/paper.yaml). Prints a table: seconds per step,
samples per second, model FLOP utilisation (MFU) and peak GPU memory.

    python benchmarks/gpu_step_benchmark.py                  # on a GPU machine (80 GB class; ~15 GB of disk)
    python benchmarks/gpu_step_benchmark.py --batch-size 4   # another per-device batch size
    python benchmarks/gpu_step_benchmark.py --tiny           # the same code path on CPU with a tiny model

Weights are random (speed and memory do not depend on them), and the tokenizer is trained locally on the
benchmark's own texts, so nothing is downloaded. The model is saved to a temporary directory and loaded back by the
stage functions, exactly as in the pipeline; only the training steps are timed, after ``--warmup`` untimed steps.

How FLOPs are counted (model FLOPs: activation recomputation by gradient checkpointing is not counted):
- Forward: 2 FLOPs per multiply-accumulate of every matmul weight a token passes through (language model layers,
  LoRA A/B, lm_head; the CLIP tower and projector per image patch), plus attention scores and values: 2·T·d per
  token and layer for the causal language model, 4·P·d per patch and layer for the bidirectional vision tower.
- Backward of a LoRA step: the base weights are frozen, so each matmul needs only its activation gradient (1x its
  forward cost, where full fine-tuning's weight gradients would add another 1x: the usual 6·N·T), LoRA weights get
  both (2x), attention needs 2x its forward. The vision tower gets no backward at all (nothing before it trains).
- DPO: the policy's forward and backward on chosen and rejected sequences, plus the reference model's forward.
Token counts are the padded lengths the model actually computes (batch x sequence length, image tokens included).
MFU = counted FLOPs / step time / peak dense bf16 FLOP/s of the GPU (``PEAK_BF16_TFLOPS``, or ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from mmkd.cli import compose
from mmkd.demo.tiny import LLAVA_SPECIALS, VICUNA_CHAT_TEMPLATE, build_tiny, llava_next_pinpoints, train_tokenizer
from mmkd.prompts import get_prompt
from mmkd.training.config import DPOSettings, LoraSettings, Stage2Settings, TrainSettings, from_params
from mmkd.training.trainers import run_stage1, run_stage2

log = logging.getLogger("gpu_step_benchmark")
ROOT = Path(__file__).resolve().parent.parent
PAPER_PROFILE = ["data=newsclippings", "teachers=paper_local", "student=paper", "stage1=paper", "stage2=paper"]

# Peak dense bf16 tensor-core FLOP/s (no sparsity) from NVIDIA's data sheets, by a substring of the device name;
# the first match wins, so the PCIe H100 comes before the SXM one.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.0}

# llava-hf/llava-v1.6-vicuna-7b-hf, written out from its config.json: a Vicuna-7B (Llama-2-7B) language model, a
# CLIP ViT-L/14 at 336 px (the second-to-last layer, without its class token) and LLaVA-NeXT's any-resolution grids
# of 336-px tiles. The vocabulary is Llama's 32,000 tokens plus <image> and <pad>, padded to 32,064.
PAPER_SIZE = {
    "text": dict(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "vision": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
    "image": (640, 480),  # width, height of the synthetic images: a typical news photo
}


@dataclasses.dataclass
class Phase:
    """What one training phase (Stage-1 SFT, Stage-2 SFT, Stage-2 DPO) measured, timed steps only."""

    name: str
    batch_size: int
    step_seconds: list[float] = dataclasses.field(default_factory=list)
    step_flops: list[float] = dataclasses.field(default_factory=list)
    lm_tokens: list[int] = dataclasses.field(default_factory=list)  # language-model tokens per timed step
    peak_gib: float | None = None


class StepMeter(TrainerCallback):
    """Times each optimiser step and counts its model FLOPs with forward hooks on the model being trained.

    A step's time runs from the end of the previous step to the end of this one, so it includes loading and
    collating the batch (image processing runs in the training process) and logging, as in a real run. Hooks on
    the language model, the vision tower and the lm_head see every forward call and its shapes, and whether
    autograd is on (a training forward, which will also run backward) or off (DPO's reference forward).
    """

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.phases: list[Phase] = []
        self._hooks: list = []
        self._flops = 0.0
        self._tokens = 0
        self._last = 0.0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        phase = "Stage 1 SFT" if not self.phases else ("Stage 2 SFT" if len(self.phases) == 1 else "Stage 2 DPO")
        self.phases.append(Phase(phase, args.per_device_train_batch_size * args.gradient_accumulation_steps))
        self._attach(model)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._flops, self._tokens, self._last = 0.0, 0, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        now, phase = time.perf_counter(), self.phases[-1]
        if state.global_step > self.warmup:
            phase.step_seconds.append(now - self._last)
            phase.step_flops.append(self._flops)
            phase.lm_tokens.append(self._tokens)
        self._flops, self._tokens, self._last = 0.0, 0, now

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            self.phases[-1].peak_gib = torch.cuda.max_memory_allocated() / 2**30
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _attach(self, model) -> None:
        modules = dict(model.named_modules())
        lm = _module(modules, "language_model")
        vision = _module(modules, "vision_tower")
        head = _module(modules, "lm_head")
        projector = _module(modules, "multi_modal_projector")
        lm_base, lm_lora = _matmul_params(lm)
        vision_params = sum(_matmul_params(vision)) + sum(_matmul_params(projector))
        head_params = sum(_matmul_params(head))
        text, vis = model.config.text_config, model.config.vision_config
        patch = vis.patch_size

        def on_lm(module, args, kwargs):
            embeds = kwargs.get("inputs_embeds")
            batch, seq = embeds.shape[:2]
            tokens = batch * seq
            train = torch.is_grad_enabled()
            linear = 2 * tokens * lm_base * (2 if train else 1) + 2 * tokens * lm_lora * (3 if train else 1)
            attention = 2 * tokens * seq * text.hidden_size * text.num_hidden_layers * (3 if train else 1)
            self._flops += linear + attention
            self._tokens += tokens

        def on_head(module, args, kwargs):
            hidden = args[0] if args else kwargs["input"]
            tokens = hidden.shape[0] * hidden.shape[1]
            self._flops += 2 * tokens * head_params * (2 if torch.is_grad_enabled() else 1)

        def on_vision(module, args, kwargs):
            pixels = args[0] if args else kwargs["pixel_values"]
            tiles, patches = pixels.shape[0], (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch) + 1
            attention = 4 * patches * patches * vis.hidden_size * vis.num_hidden_layers
            self._flops += tiles * (2 * patches * vision_params + attention)  # forward only

        for module, hook in ((lm, on_lm), (head, on_head), (vision, on_vision)):
            self._hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _module(modules: dict, suffix: str):
    names = sorted((n for n in modules if n.endswith(suffix)), key=len)
    if not names:
        raise RuntimeError(f"no module named *{suffix} in the model; is it a LLaVA-NeXT model?")
    return modules[names[0]]


def _matmul_params(module) -> tuple[int, int]:
    """(base, LoRA) weights of the matmuls in ``module``: Linear and Conv2d weights (embeddings are lookups).

    LoRA counts the trained adapter ("default") only: DPO's frozen "ref" copy runs instead of it, not as well.
    """
    base = lora = 0
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            if ".lora_" not in name:
                base += m.weight.numel()
            elif name.endswith(".default"):
                lora += m.weight.numel()
    return base, lora


def paper_student_config(ids: dict[str, int]) -> LlavaNextConfig:
    """The LLaVA-v1.6-Vicuna-7B config (``PAPER_SIZE``) with the special-token ids of our tokenizer."""
    return LlavaNextConfig(
        text_config=LlamaConfig(
            **PAPER_SIZE["text"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]
        ),
        vision_config=CLIPVisionConfig(**PAPER_SIZE["vision"]),
        image_token_id=ids["<image>"],
        image_grid_pinpoints=llava_next_pinpoints(PAPER_SIZE["vision"]["image_size"]),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def paper_student(out_dir: Path, corpus: list[str]) -> Path:
    """Save a randomly initialised LLaVA-v1.6-Vicuna-7B (bf16) with its processor to ``out_dir``."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(corpus, LLAVA_SPECIALS, vocab_size=32000),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}
    tile = PAPER_SIZE["vision"]["image_size"]
    pinpoints = llava_next_pinpoints(tile)  # [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=PAPER_SIZE["vision"]["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=VICUNA_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = paper_student_config(ids)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialise where it runs: 7B random weights on a CPU take minutes
        model = LlavaNextForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = ids["<pad>"]
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out_dir


def synthetic_rows(
    root: Path, n: int, image_size: tuple[int, int], prompt_version: str, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` SFT rows and ``n`` DPO pairs on random-noise images, with a news-length caption, evidence and teacher
    answers. The texts are the same in every row, so every batch has the same shape and steps are comparable."""
    rng = np.random.default_rng(seed)
    words = "officials unveil new harbour bridge after storm damage city council says repairs will take months".split()

    def sentence(k: int) -> str:
        return " ".join(rng.choice(words, k))

    prompt = get_prompt(prompt_version).render(
        sentence(24).capitalize() + ".", [str(w) for w in rng.choice(words, 6)], [sentence(16) for _ in range(3)]
    )
    chosen = f"Label: falsified. Rationale: {sentence(45)}."
    rejected = f"Label: pristine. Rationale: {sentence(45)}."
    (root / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(str(root / "images" / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (image_size[1], image_size[0], 3), dtype=np.uint8)).save(paths[-1])
    df = pl.DataFrame({"id": [str(i) for i in range(n)], "image_path": paths}).with_columns(
        prompt=pl.lit(prompt), completion=pl.lit(chosen), chosen=pl.lit(chosen), rejected=pl.lit(rejected)
    )
    return df.select("id", "image_path", "prompt", "completion"), df.select(
        "id", "image_path", "prompt", "chosen", "rejected"
    )


def benchmark_settings(params: dict, args: argparse.Namespace) -> tuple[LoraSettings, TrainSettings, Stage2Settings]:
    """The paper profiles' settings with a fixed number of steps (and, for --tiny, what a CPU can run)."""
    steps = args.warmup + args.steps

    def adapt(s: TrainSettings) -> TrainSettings:
        changes = dict(max_steps=steps, warmup_steps=0, logging_steps=1, grad_accum=args.grad_accum)
        if args.batch_size:
            changes["batch_size"] = args.batch_size
        if args.tiny:
            changes |= dict(bf16=False, tf32=None)
        return dataclasses.replace(s, **changes)

    stage1 = params["stage1"]
    stage2 = from_params(Stage2Settings, params["stage2"])
    lora = from_params(LoraSettings, stage1["lora"])
    if args.tiny:
        lora = dataclasses.replace(lora, r=4, alpha=8)
        stage2 = dataclasses.replace(stage2, lora=lora)
    stage2 = dataclasses.replace(stage2, sft=adapt(stage2.sft), dpo=adapt(stage2.dpo))
    assert isinstance(stage2.dpo, DPOSettings)
    return lora, adapt(from_params(TrainSettings, stage1["train"])), stage2


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run(args: argparse.Namespace) -> tuple[list[Phase], dict]:
    """Build the student, train Stage 1 and Stage 2 for ``warmup + steps`` steps each; return what was measured."""
    params = compose(PAPER_PROFILE, ROOT / "conf")
    prompt_version = params["student"]["prompt_version"]
    dtype = "float32" if args.tiny else params["student"]["dtype"]
    lora, stage1, stage2 = benchmark_settings(params, args)
    largest_batch = max(s.batch_size * s.grad_accum for s in (stage1, stage2.sft, stage2.dpo))
    n_rows = largest_batch * (args.warmup + args.steps)
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        image_size = (112, 84) if args.tiny else PAPER_SIZE["image"]
        sft_rows, pairs = synthetic_rows(tmp / "data", n_rows, image_size, prompt_version)
        corpus = [*sft_rows["prompt"], *sft_rows["completion"], *pairs["rejected"]]
        start = time.perf_counter()
        if args.tiny:
            base = build_tiny("llava_next", tmp / "student", corpus)  # the same classes, tiny sizes
        else:
            base = paper_student(tmp / "student", corpus)
        log.info("student built and saved in %.0f s", time.perf_counter() - start)
        meter = StepMeter(args.warmup)
        common = dict(seed=0, dtype=dtype, callbacks=[meter])
        run_stage1(
            str(base), sft_rows, lora=lora, settings=stage1, out_dir=tmp / "stage1", live_dir=tmp / "live1", **common
        )
        run_stage2(
            str(base),
            str(tmp / "stage1"),
            sft_rows,
            pairs,
            settings=stage2,
            out_dir=tmp / "stage2",
            live_dir=tmp / "live2",
            **common,
        )
        info = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
            "model": "LLaVA-NeXT, tiny config" if args.tiny else "LLaVA-v1.6-Vicuna-7B architecture, random weights",
            "dtype": dtype,
            "lora": f"r={lora.r}, alpha={lora.alpha}, language model only",
            "gradient_checkpointing": stage1.gradient_checkpointing,
            "image": f"{image_size[0]}x{image_size[1]} (max_image_pixels={stage1.max_image_pixels})",
        }
    return meter.phases, info


def table(phases: list[Phase], info: dict, peak: float | None) -> str:
    """The results as a Markdown table, with the run's settings above it."""
    lines = [f"{k}: {v}" for k, v in info.items()]
    lines.append(f"peak bf16 TFLOP/s assumed: {peak if peak else 'unknown (pass --peak-tflops for MFU)'}")
    lines += [
        "",
        "| phase | samples/step | LM tokens/step | s/step | samples/s | TFLOP/step | MFU | peak GPU memory (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        seconds = float(np.mean(p.step_seconds))
        tflop = float(np.mean(p.step_flops)) / 1e12
        mfu = f"{100 * tflop / seconds / peak:.1f} %" if peak else "n/a"
        memory = f"{p.peak_gib:.1f}" if p.peak_gib is not None else "n/a"
        tokens = int(np.mean(p.lm_tokens))
        lines.append(
            f"| {p.name} | {p.batch_size} | {tokens} | {seconds:.3f} | {p.batch_size / seconds:.3g} | {tflop:.4g} "
            f"| {mfu} | {memory} |"
        )
    lines.append("")
    lines.append(f"timed steps per phase: {len(phases[0].step_seconds)} (after the warm-up steps)")
    if not torch.cuda.is_available():
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        lines.append(f"no GPU: peak resident memory of this process {rss:.2f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny LLaVA-NeXT on CPU: the same code path, for tests")
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per phase")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (CUDA kernels, allocator)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch size (default: the profile's)")
    parser.add_argument("--grad-accum", type=int, default=1, help="batches per optimiser step (profile: 8-16)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s of the GPU, for MFU")
    parser.add_argument("--tmp-dir", default=None, help="where the model (about 15 GB) and adapters are written")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("gpu_step_benchmark: no CUDA GPU here; run it on a GPU machine, or pass --tiny for the CPU smoke run")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    phases, info = run(args)
    print(table(phases, info, peak_tflops(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
