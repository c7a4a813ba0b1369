"""Tests for ``mmkd export``: the merged directory answers like ``mmkd predict`` in a process without mmkd (using the
model card's own code), names only stock classes, carries a model card that quotes the run, records the hashes of
what was merged and the threshold by precedence, and refuses or cleans up instead of leaving half a directory."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from expected_files import DEMO_MODEL_FILES
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmkd import label_slot, scoring
from mmkd.cli import main
from mmkd.deploy import card_example
from mmkd.deploy import export as export_module
from mmkd.deploy.card import example_code, pipeline_system
from mmkd.deploy.export import ExportError, export_model, vllm_ready
from mmkd.deploy.manifest import EXPORT_INFO, SLOT_PREFIX, chain_hashes, resolve_threshold, score_info
from mmkd.modeling import ADAPTER_INFO, load_student, user_turn, write_adapter_info
from mmkd.prompts import get_prompt
from mmkd.schema import LABELS, read_items
from mmkd.scoring import generated_score

TARGETS = r".*language_model.*\.(q_proj|v_proj|up_proj)"


def random_adapter(base: Path, parent: Path | None, out: Path, *, seed: int, train_head: bool) -> Path:
    """A LoRA adapter with random nonzero weights on top of ``base`` (+ ``parent`` merged), saved as mmkd saves one;
    ``train_head`` also trains ``lm_head`` (``modules_to_save``), as Stage 1 does."""
    model, _ = load_student(base, parent, device="cpu")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["lm_head"] if train_head else None)
    peft = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (p for p in peft.parameters() if p.requires_grad):  # LoRA B starts at zero: move everything
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    peft.save_pretrained(out)
    write_adapter_info(out, base=str(base), parent=str(parent) if parent else None, prompt_version="v1")
    return out


@pytest.fixture(scope="module")
def chain(tiny_models, tmp_path_factory):
    """``chain(arch, n)``: the last adapter of a chain of ``n`` random adapters on the tiny ``arch`` model (the first
    trains lm_head, like Stage 1; the rest do not, like Stage 2)."""
    done: dict[tuple[str, int], Path] = {}

    def build(arch: str, n: int = 2) -> Path:
        if (arch, n) not in done:
            root = tmp_path_factory.mktemp(f"chain_{arch}")
            parent = None
            for i in range(n):
                parent = random_adapter(tiny_models[arch], parent, root / f"stage{i + 1}", seed=i, train_head=i == 0)
            done[arch, n] = parent
        return done[arch, n]

    return build


@pytest.fixture(scope="module")
def items(world_dir) -> pl.DataFrame:
    return read_items(world_dir / "test.parquet").head(4)


def card_code(card: str) -> str:
    """The Python block of a model card, without the command line that runs it on a photo."""
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert len(blocks) == 1, "the model card should hold one Python example"
    return blocks[0].split('\nif __name__ == "__main__":', 1)[0]


# Answers whose label slot the card's slot_score must find where mmkd.scoring does (or find none, as it does).
SLOT_ANSWERS = [
    "Label: falsified. Rationale: another event.",
    "Check: the sky. Label:  pristine. Rationale: fine.",
    "label:falsified",
    "Rationale: no label here.",
    "Label:",
]

PLAIN_RUN = """
model, processor, info = load(sys.argv[1])
rows = json.loads(sys.argv[2])
images = [Image.open(r["image_path"]).convert("RGB") for r in rows]
answers = answer(model, processor, info, images, [r["caption"] for r in rows])
slots = []
for k, text in enumerate(json.loads(sys.argv[3])):
    ids = processor.tokenizer.encode(text, add_special_tokens=False)
    logits = torch.randn(len(ids), len(processor.tokenizer), generator=torch.Generator().manual_seed(k))
    slots.append(generated_score(processor.tokenizer, ids, list(logits)))
out = {
    "chats": [chat(processor, info, r["caption"]) for r in rows],
    "texts": [t for t, _ in answers],
    "scores": [p for _, p in answers],
    "slot_scores": slots,
}
assert "mmkd" not in sys.modules, "the exported model must load without mmkd"
print(json.dumps(out))
"""


def run_plain(card: str, model_dir: Path, items: pl.DataFrame, cwd: Path) -> dict:
    """Run the model card's code on ``items`` in a fresh Python process that never imports mmkd."""
    script = cwd / "plain.py"
    script.write_text(card_code(card) + textwrap.dedent(PLAIN_RUN))
    rows = json.dumps(items.select("image_path", "caption").to_dicts())
    done = subprocess.run(
        [sys.executable, str(script), str(model_dir), rows, json.dumps(SLOT_ANSWERS)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# The stock Qwen2-VL and InternVL processors need a video processor, so torchvision, which does not import beside
# the CPU torch wheel pinned here: on such a machine only the LLaVA families load through plain AutoProcessor.
NEEDS_TORCHVISION = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="the stock processor of this family needs torchvision"
)
VLLM_RENAMED = {"llava", "llava_next"}  # the families whose CLIP tower is saved as vision_tower.vision_model.*


@pytest.mark.parametrize(
    "arch",
    [
        "llava",
        "llava_next",
        pytest.param("qwen2_vl", marks=NEEDS_TORCHVISION),
        pytest.param("internvl", marks=NEEDS_TORCHVISION),
    ],
)
def test_exported_model_answers_like_mmkd_predict_without_mmkd(arch, chain, items, tmp_path):
    adapter = chain(arch)
    out = tmp_path / "export"
    summary = export_model(adapter, out, metrics_path=None, params_path=None)
    assert summary["out"] == str(out) and summary["bytes"] > 0 and summary["vllm_layout"] == (arch in VLLM_RENAMED)
    assert set(summary["files"]) >= DEMO_MODEL_FILES | {EXPORT_INFO, "README.md"}  # a saved model, plus ours
    assert not list(tmp_path.glob(".export.*")), "the temporary directory should be gone"

    # What mmkd predict answers with the adapter chain, item by item.
    items_file = tmp_path / "items.parquet"
    items.write_parquet(items_file)
    answers = tmp_path / "answers.parquet"
    assert main(["predict", "--items", str(items_file), "--out", str(answers), "--adapter", str(adapter)]) == 0
    expected = pl.read_parquet(answers)

    plain = run_plain((out / "README.md").read_text(), out, items, tmp_path)
    assert plain["texts"] == expected["raw_text"].to_list()
    assert plain["scores"] == pytest.approx(expected["score"].to_list(), abs=1e-6)

    # The card's prompt and slot reading are mmkd's: the same chat text, the same P(falsified) at the same slot.
    model, processor = load_student(None, adapter, device="cpu")
    prompts = [get_prompt("v1").render(c) for c in items["caption"]]
    chats = [processor.apply_chat_template(user_turn(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    assert plain["chats"] == chats
    tokenizer = processor.tokenizer
    slot_scores = []
    for k, text in enumerate(SLOT_ANSWERS):
        ids = tokenizer.encode(text, add_special_tokens=False)
        logits = torch.randn(len(ids), len(tokenizer), generator=torch.Generator().manual_seed(k))
        slot_scores.append(generated_score(tokenizer, ids, list(logits)))
    assert sum(s is not None for s in slot_scores) == 3, "three of the answers have a label slot"
    assert plain["slot_scores"] == pytest.approx(slot_scores, abs=1e-6)

    # The weights are the merged chain's, saved in the layout vLLM reads (and transformers still loads).
    if arch in VLLM_RENAMED:
        with safe_open(str(out / "model.safetensors"), framework="pt") as f:
            tower = [k for k in f.keys() if k.startswith("vision_tower.")]
        assert tower and all(k.startswith("vision_tower.vision_model.") for k in tower)
    exported = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    merged = model.state_dict()
    assert exported.keys() == merged.keys()
    assert all(torch.equal(exported[k], merged[k]) for k in merged)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["max_new_tokens"] == 64


def standalone_card_program() -> dict:
    """The names the card's program defines, run from its text (which must not import mmkd)."""
    code = example_code()
    assert not re.search(r"^\s*(from|import)\s+mmkd\b", code, re.MULTILINE), "the card's program must not need mmkd"
    namespace = {"__name__": "card"}
    exec(compile(code, "card.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_the_cards_program_reads_the_score_of_mmkd_label_slot_on_hand_made_logits(arch, tiny_models):
    """p(falsified) : p(pristine) = 3 : 1 at the slot, any other token far likelier: the score is 3/4, read by the
    card's program and by mmkd (the local backend's ``generated_score``) alike; other steps do not count."""
    card = standalone_card_program()
    tokenizer = AutoProcessor.from_pretrained(tiny_models[arch]).tokenizer
    before = "Check: the sky. Label:"
    ids = tokenizer.encode(before + " falsified. Rationale: another event.", add_special_tokens=False)
    slot = len(tokenizer.encode(before, add_special_tokens=False))  # the value's first token, by hand
    first = {label: tokenizer.encode(f"{before} {label}", add_special_tokens=False)[slot] for label in LABELS}
    assert ids[slot] == first["falsified"] != first["pristine"]
    logits = torch.randn(len(ids), len(tokenizer), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits[slot] = 0.0
    logits[slot, first["falsified"]], logits[slot, first["pristine"]] = math.log(3.0), 0.0
    logits[slot, tokenizer.encode(" the", add_special_tokens=False)[-1]] = 20.0  # renormalised away
    for score in (card["generated_score"], label_slot.generated_score, scoring.generated_score):
        assert score(tokenizer, ids, list(logits)) == pytest.approx(0.75, abs=1e-12)
    logits[slot + 1, first["pristine"]] = 50.0  # the step after the slot is not read
    assert card["generated_score"](tokenizer, ids, list(logits)) == pytest.approx(0.75, abs=1e-12)
    assert card["generated_score"](tokenizer, ids[:slot], list(logits[:slot])) is None  # the answer ends at "Label:"


def test_the_cards_program_is_card_example_with_mmkd_label_slot_written_out():
    """The card embeds card_example.py and mmkd/label_slot.py verbatim (bar their docstrings and mmkd imports), and
    its labels are mmkd's; its fallback reads the label as written only where there is no score or threshold."""
    code = example_code()
    for module in (card_example, label_slot):
        for name in ("answer", "decide", "slot_index", "label_token_ids", "falsified_probability", "generated_score"):
            if hasattr(module, name) and getattr(module, name).__module__ == module.__name__:
                assert inspect.getsource(getattr(module, name)) in code
    card = standalone_card_program()
    assert card["LABELS"] == LABELS and card["FALSIFIED"] == "falsified" and card["PRISTINE"] == "pristine"
    info = {"threshold": {"value": 0.4}}
    assert card["decide"](info, "Label: pristine.", 0.45) == "falsified"  # the score against the threshold
    assert card["decide"](info, "Label:  Pristine. Rationale: x", None) == "pristine"  # no score: as written
    assert card["decide"]({"threshold": {"value": None}}, "label:falsified", 0.1) == "falsified"
    assert card["decide"](info, "Rationale: no label.", None) is None


def test_the_manifest_names_the_label_tokens_the_score_is_read_at(tiny_models):
    """``score.token_ids`` in mmkd_export.json are the tokens at which ``generated_score`` (the local backend's,
    mmkd.scoring's) reads each label after ``Label:``; the local backend and the manifest share one definition."""
    assert scoring.generated_score is label_slot.generated_score
    tokenizer = AutoProcessor.from_pretrained(tiny_models["llava"]).tokenizer
    info = score_info(tokenizer)
    assert info["slot_prefix"] == SLOT_PREFIX == "Label:"
    for label in LABELS:
        ids = tokenizer.encode(f"{SLOT_PREFIX} {label}. Rationale: x.", add_special_tokens=False)
        assert ids[label_slot.slot_index(tokenizer, ids)] == info["token_ids"][label]


@pytest.mark.parametrize(("arch", "stock", "video"), [("qwen2_vl", "Qwen2VLProcessor", "Qwen2VLVideoProcessor")])
def test_image_only_processor_is_renamed_to_the_stock_class(arch, stock, video, chain, tmp_path):
    """The demo's Qwen2-VL processor is an mmkd class; the export names the stock one (which vLLM calls), and the
    tied embeddings of the base stay untied, since Stage 1 trained lm_head on its own."""
    adapter = chain(arch, 1)
    out = tmp_path / "export"
    summary = export_model(adapter, out, metrics_path=None, params_path=None)
    assert summary["processor_class"] == stock and summary["vllm_layout"] is False
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["processor_class"] == stock
    assert processor_config["video_processor"]["video_processor_type"] == video
    assert json.loads((out / "tokenizer_config.json").read_text())["processor_class"] == stock
    assert "ImageOnly" not in "".join(p.read_text() for p in out.glob("*.json"))

    model, _ = load_student(None, adapter, device="cpu")
    exported = AutoModelForImageTextToText.from_pretrained(out)
    assert exported.get_output_embeddings().weight is not exported.get_input_embeddings().weight
    reloaded, merged = exported.state_dict(), model.state_dict()
    assert all(torch.equal(reloaded[k], merged[k]) for k in merged)


def test_without_the_vllm_layout_the_tower_keeps_transformers_keys(chain, tmp_path):
    out = tmp_path / "export"
    export_model(chain("llava"), out, metrics_path=None, params_path=None, vllm_layout=False)
    keys = load_file(out / "model.safetensors").keys()
    assert any(k.startswith("vision_tower.embeddings.") for k in keys)
    assert not any(k.startswith("vision_tower.vision_model.") for k in keys)
    assert json.loads((out / EXPORT_INFO).read_text())["weights_layout"] is None
    assert AutoProcessor.from_pretrained(out).__class__.__name__ == "LlavaProcessor"


METRICS = {  # a system entry as mmkd.evaluation.metrics.score_ranked writes it
    "stage2": {
        "accuracy": 0.7312,
        "accuracy_ci95": [0.6851, 0.7714],
        "macro_f1": 0.7088,
        "n": 400,
        "auroc": 0.8123,
        "ece": 0.0456,
        "auprc": None,
        "accuracy_at_threshold": 0.7525,
        "threshold": 0.4321,
        "threshold_rule": "max_accuracy",
    },
    "teachers": {"teacher_qwen": {"accuracy": 0.7025}},
}
PARAMS = {
    "data": {"dir": "data/newsclippings_merged"},
    "teacher_names": ["teacher_qwen", "teacher_intern"],
    "teachers": {
        "teacher_qwen": {"model": "models/hf/Qwen2-VL-72B-Instruct"},
        "teacher_intern": {"model": "OpenGVLab/InternVL2_5-78B"},
    },
}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), "a model card starts with YAML front matter"
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_model_card_has_front_matter_and_quotes_the_run(chain, tmp_path):
    metrics, params = tmp_path / "evaluate.json", tmp_path / "params.yaml"
    metrics.write_text(json.dumps(METRICS))
    params.write_text(yaml.safe_dump(PARAMS))
    out = tmp_path / "export"
    export_model(
        chain("llava"), out, metrics_path=metrics, params_path=params, base_model_id="llava-hf/tiny", system="stage2"
    )
    card = (out / "README.md").read_text()

    front = front_matter(card)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "image-text-to-text"
    assert front["base_model"] == "llava-hf/tiny" and front["license"] and "mmkd" in front["tags"]
    quotes = ("0.731", "0.685", "0.771", "0.812", "0.046", "0.752", "0.432", "400 test items", "teacher_qwen 0.703")
    for quoted in quotes:
        assert quoted in card, f"the card should quote {quoted}"
    for fact in ("data/newsclippings_merged", "models/hf/Qwen2-VL-72B-Instruct", "OpenGVLab/InternVL2_5-78B"):
        assert fact in card
    assert "AUPRC" not in card, "a metric the run did not report (null) is left out"
    for section in ("## Intended use", "## Out-of-scope use", "## Limitations", "## Licence", "## How the score"):
        assert section in card
    assert "Apache-2.0" in card and "follows the base model" in card


def test_model_card_without_metrics_or_params_says_so(chain, tmp_path):
    metrics = tmp_path / "evaluate.json"
    metrics.write_text(json.dumps({"stage1": {"accuracy": 0.5}}))  # no entry for this Stage-2 export
    out = tmp_path / "export"
    export_model(chain("llava"), out, metrics_path=metrics, params_path=tmp_path / "absent.yaml", system="stage2")
    card = (out / "README.md").read_text()
    front = front_matter(card)
    assert "base_model" not in front, "a local base directory is not a Hub id"
    assert "No metrics for `stage2`" in card and "params.yaml was not available" in card
    export_model(chain("llava"), tmp_path / "other", metrics_path=metrics)  # not a pipeline output: no metrics
    assert "not one of the pipeline's outputs" in (tmp_path / "other/README.md").read_text()


def test_the_card_quotes_the_entry_of_the_pipeline_output_it_exports(monkeypatch, tmp_path):
    """models/stage1, models/stage2 and models/baselines/<name> are scored under stage1, stage2 and
    baselines.<name> (a baseline trained on top of Stage 1 must not quote Stage 2's numbers)."""
    monkeypatch.chdir(tmp_path)
    for folder in ("models/stage1", "models/stage2", "models/baselines/random_budget", "elsewhere/stage2"):
        (tmp_path / folder).mkdir(parents=True)
    assert pipeline_system("models/stage2") == "stage2" and pipeline_system(tmp_path / "models/stage1") == "stage1"
    assert pipeline_system("models/baselines/random_budget") == "baselines/random_budget"
    assert pipeline_system("elsewhere/stage2") is None


def test_hashes_follow_the_adapter_weights(chain, tiny_models, tmp_path):
    stage2 = chain("llava")
    stage1 = Path(json.loads((stage2 / ADAPTER_INFO).read_text())["parent"])
    copy = tmp_path / "stage2"
    shutil.copytree(stage2, copy)
    before = chain_hashes(tiny_models["llava"], [str(stage1), str(copy)])
    weights = load_file(copy / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1e-3
    save_file(weights, copy / "adapter_model.safetensors")
    after = chain_hashes(tiny_models["llava"], [str(stage1), str(copy)])
    assert after["base"] == before["base"] and after["adapters"][0] == before["adapters"][0]
    assert after["adapters"][1]["sha256"] != before["adapters"][1]["sha256"]


def test_export_records_the_hashes_of_base_and_chain(chain, tiny_models, tmp_path):
    stage2 = chain("llava")
    out = tmp_path / "export"
    export_model(stage2, out, metrics_path=None, params_path=None)
    merged = json.loads((out / EXPORT_INFO).read_text())["merged"]
    stage1 = json.loads((stage2 / ADAPTER_INFO).read_text())["parent"]
    assert merged == chain_hashes(tiny_models["llava"], [stage1, str(stage2)])


RECORDED = {"value": 0.37, "rule": "max_fpr", "max_fpr": 0.05, "val_n_scored": 200, "val_accuracy": 0.81}


@pytest.mark.parametrize(
    ("explicit", "recorded", "value", "source"),
    [
        (0.6, RECORDED, 0.6, "argument"),  # the argument wins
        (None, RECORDED, 0.37, "adapter"),  # else what the adapter chose on val
        (None, RECORDED | {"value": None}, None, None),  # else none: the label as written (score >= 0.5)
        (None, None, None, None),
    ],
)
def test_threshold_precedence(explicit, recorded, value, source, tmp_path):
    info = {"base": "base", "parent": None} | ({"threshold": recorded} if recorded else {})
    (tmp_path / ADAPTER_INFO).write_text(json.dumps(info))
    chosen = resolve_threshold(explicit, tmp_path)
    assert chosen["value"] == value and chosen["source"] == source
    if source == "adapter":
        assert chosen["rule"] == "max_fpr" and chosen["max_fpr"] == 0.05


def test_export_ships_the_adapters_recorded_threshold_unless_given(chain, tmp_path):
    adapter = tmp_path / "stage2"
    shutil.copytree(chain("llava"), adapter)
    info = json.loads((adapter / ADAPTER_INFO).read_text()) | {"threshold": RECORDED}
    (adapter / ADAPTER_INFO).write_text(json.dumps(info))
    recorded = export_model(adapter, tmp_path / "a", metrics_path=None, params_path=None)
    given = export_model(adapter, tmp_path / "b", threshold=0.8, metrics_path=None, params_path=None)
    assert recorded["threshold"] == 0.37 and given["threshold"] == 0.8
    shipped = json.loads((tmp_path / "a" / EXPORT_INFO).read_text())["threshold"]
    assert shipped["value"] == 0.37 and shipped["source"] == "adapter" and shipped["rule"] == "max_fpr"


def test_user_errors_are_messages(chain, tmp_path):
    adapter = chain("llava")
    with pytest.raises(ExportError, match="does not exist"):
        export_model(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ExportError, match="is not an mmkd adapter"):
        export_model(tmp_path / "plain_dir", tmp_path / "out")
    orphan = tmp_path / "orphan"
    shutil.copytree(adapter, orphan)
    info = json.loads((orphan / ADAPTER_INFO).read_text()) | {"parent": str(tmp_path / "gone")}
    (orphan / ADAPTER_INFO).write_text(json.dumps(info))
    with pytest.raises(ExportError, match="the parent named in"):
        export_model(orphan, tmp_path / "out")
    with pytest.raises(ExportError, match="overlaps the input"):
        export_model(adapter, adapter, overwrite=True)
    with pytest.raises(ExportError, match="overlaps the input"):
        export_model(adapter, adapter / "export")
    with pytest.raises(ExportError, match="give a probability"):
        export_model(adapter, tmp_path / "out", threshold=1.5)
    with pytest.raises(ExportError, match="pass --base"):
        export_model(adapter, tmp_path / "out", base=tmp_path / "no_base")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(adapter, busy, metrics_path=None, params_path=None)
    assert (busy / "keep.txt").read_text() == "mine"
    export_model(adapter, busy, metrics_path=None, params_path=None, overwrite=True)
    assert not (busy / "keep.txt").exists() and (busy / EXPORT_INFO).is_file()


def test_a_failed_export_leaves_nothing_behind(chain, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "rename_tower_for_vllm", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(chain("llava"), tmp_path / "export", metrics_path=None, params_path=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])
def test_vllm_ready_copies_a_model_directory_into_the_layout_vllm_loads(arch, tiny_models, tmp_path, capsys):
    """A demo teacher (no adapter): the stock processor class with its video processor (Qwen2-VL), the CLIP tower
    under vision_tower.vision_model.* (LLaVA); the same tensors and answers in transformers, the source untouched."""
    source = tiny_models[arch]
    before = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    out = tmp_path / "ready"
    assert main(["vllm-ready", str(source), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and {p.name for p in out.iterdir()} == set(before)
    assert {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()} == before
    assert list(tmp_path.iterdir()) == [out]  # no partial directory left beside it
    keys = load_file(out / "model.safetensors").keys()
    if arch == "qwen2_vl":
        assert summary == summary | {"processor_class": "Qwen2VLProcessor", "vllm_layout": False}
        config = json.loads((out / "processor_config.json").read_text())
        assert config["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
        assert json.loads((out / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
        assert "ImageOnly" not in "".join(p.read_text() for p in out.glob("*.json"))
    else:
        assert summary == summary | {"processor_class": "LlavaProcessor", "vllm_layout": True}
        assert any(k.startswith("vision_tower.vision_model.") for k in keys)
        assert not any(k.startswith(("vision_tower.embeddings.", "vision_tower.encoder.")) for k in keys)
    original = AutoModelForImageTextToText.from_pretrained(source).state_dict()
    ready = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert ready.keys() == original.keys() and all(torch.equal(ready[k], original[k]) for k in original)


def test_vllm_ready_refuses_adapters_and_what_is_in_the_way(chain, tiny_models, tmp_path):
    with pytest.raises(ExportError, match="mmkd export"):
        vllm_ready(chain("llava", 1), tmp_path / "out")
    with pytest.raises(ExportError, match="no config.json"):
        vllm_ready(tmp_path, tmp_path / "out")
    with pytest.raises(ExportError, match="overlaps the input"):
        vllm_ready(tiny_models["llava"], tiny_models["llava"] / "ready")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        vllm_ready(tiny_models["llava"], busy)
    vllm_ready(tiny_models["llava"], busy, overwrite=True)
    assert not (busy / "keep.txt").exists() and (busy / "model.safetensors").is_file()
    with pytest.raises(SystemExit, match="mmkd vllm-ready: .* is an adapter"):
        main(["vllm-ready", str(chain("llava", 1)), "--out", str(tmp_path / "cli")])
