"""``mmkd export``: one standalone model directory from an mmkd adapter chain.

The chain (base model, then the Stage-1 and Stage-2 adapters) is merged into one model and saved with
``save_pretrained`` (safetensors) beside its processor, chat template and a greedy generation config, so that plain
transformers (``AutoModelForImageTextToText`` / ``AutoProcessor``, no mmkd) and vLLM load it. Two more files say how
to use it: ``mmkd_export.json`` (the prompt, the labels, how the score is read, the threshold and the SHA-256 of
everything merged) and a Hugging Face model card, ``README.md``. What loads where: docs/deploy.md.

Two rewrites make the directory independent of mmkd (both are what real checkpoints look like):

- a processor class that only mmkd registers (the demo's image-only Qwen2-VL / InternVL processors) is renamed to
  its stock transformers parent, with the ``video_processor`` entry the stock class needs;
- with ``vllm_layout``, a LLaVA / LLaVA-NeXT CLIP tower is saved as ``vision_tower.vision_model.*``, the layout of
  the llava-hf checkpoints, which vLLM expects and transformers still loads.

``vllm_ready`` (``mmkd vllm-ready DIR --out OUT``) applies the same two rewrites to a copy of any model directory
that is not an adapter chain (a demo teacher, a model saved by transformers 5.2x), so that vLLM serves it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import logging
import re
import shutil
import time
from pathlib import Path

import yaml

from mmkd.data.staging import staged_folder
from mmkd.inference.local import LocalConfig, _dir_sha256
from mmkd.modeling import ADAPTER_INFO, DTYPES, adapter_info
from mmkd.prompts import ANSWER_FORMAT, get_prompt
from mmkd.schema import FALSIFIED, LABELS, PRISTINE

log = logging.getLogger(__name__)

EXPORT_INFO = "mmkd_export.json"
EXPORT_FORMAT = 1  # bump when a key of mmkd_export.json changes meaning

# The text of an answer up to its label slot, when the answer starts as the format asks ("Label:").
SLOT_PREFIX = ANSWER_FORMAT.split("<", 1)[0].rstrip()

# The video processor that the stock processor class of each family needs (mmkd's image-only ones drop it).
# transformers' own table of these cannot be read without torchvision, so the families mmkd rewrites are named here.
VIDEO_PROCESSORS = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "internvl": "InternVLVideoProcessor",
}

# Model types whose CLIP tower transformers 5.2x saves as ``vision_tower.{embeddings,encoder,...}`` while vLLM (and
# the llava-hf checkpoints) use ``vision_tower.vision_model.*``; transformers loads either.
VLLM_TOWER_RENAMES = {"llava": "clip_vision_model", "llava_next": "clip_vision_model"}
TOWER, VLLM_TOWER = "vision_tower.", "vision_tower.vision_model."

DEFAULT_MAX_NEW_TOKENS = LocalConfig.__dataclass_fields__["max_new_tokens"].default  # what `mmkd predict` uses


class ExportError(Exception):
    """A problem the user can fix (a missing adapter, an output directory in the way); the message says what."""


def export_model(
    adapter: str | Path,
    out: str | Path,
    *,
    base: str | Path | None = None,
    threshold: float | None = None,
    dtype: str = "float32",
    metrics_path: str | Path | None = "metrics/evaluate.json",
    params_path: str | Path | None = "params.yaml",
    vllm_layout: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
    max_new_tokens: int | None = None,
    system: str | None = None,
    base_model_id: str | None = None,
) -> dict:
    """Merge the adapter chain ending at ``adapter`` into one model directory ``out``; returns a summary
    (``out``, ``bytes``, ``files``, ``seconds``, ``threshold``, ``processor_class``, ``vllm_layout``).

    ``base``: the base model to merge into (default: the one the chain records). ``threshold``: the operating
    threshold on the score (default: the one the adapter recorded on val, else none, i.e. 0.5). ``metrics_path`` /
    ``params_path``: the run's metrics and params, quoted in the model card when the files exist. ``system``: the
    metrics entry of this model (default ``stage2`` for a chain of two or more adapters, else ``stage1``).
    ``base_model_id``: the Hub id of the base for the card's ``base_model`` (default: the recorded base, when it is
    not a local directory). The directory is written next to ``out`` and renamed at the end, so a failed export
    leaves nothing behind; an existing non-empty ``out`` is replaced only with ``overwrite``.
    """
    started = time.perf_counter()
    recorded_base, chain = check_chain(adapter)
    if not (base or recorded_base):
        raise ExportError(f"{Path(chain[0]) / ADAPTER_INFO} records no base model; pass --base DIR")
    base = str(base or recorded_base)
    if not Path(base).is_dir():
        raise ExportError(
            f"base model {base!r} is not a local directory (recorded in {Path(chain[0]) / ADAPTER_INFO}); "
            "pass --base DIR"
        )
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    out = Path(out)
    _check_out(out, overwrite=overwrite, inputs=[base, *chain])
    info = adapter_info(chain[-1])
    chosen = resolve_threshold(threshold, chain[-1])
    metrics = _read_optional(metrics_path, json.loads)
    params = _read_optional(params_path, yaml.safe_load)
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS

    from mmkd.deploy.predict import trained_prompt_version
    from mmkd.modeling import load_student  # torch + transformers: only once the arguments are known to be good

    log.info("merging %s into %s", " + ".join(chain), base)
    model, processor = load_student(base, chain[-1], dtype=dtype, device=device)
    with staged_folder(out) as tmp:  # built beside out and swapped in at the end: a failure leaves nothing
        _untie_trained_head(model)
        _greedy_generation(model.generation_config, max_new_tokens)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        processor_class = _stock_processor_class(tmp, processor, model.config.model_type)
        renamed = _rename_tower_for_vllm(tmp, model.config) if vllm_layout else False
        export = export_info(
            base=base,
            chain=chain,
            prompt_version=trained_prompt_version(chain[-1]),
            tokenizer=processor.tokenizer,
            threshold=chosen,
            dtype=dtype,
            model=model,
            processor_class=processor_class,
            max_new_tokens=max_new_tokens,
            max_image_pixels=info.get("max_image_pixels"),
            vllm_tower=renamed,
        )
        (tmp / EXPORT_INFO).write_text(json.dumps(export, indent=2) + "\n")
        system = system or pipeline_system(chain[-1])
        card = model_card(
            export, name=out.name, metrics=metrics, params=params, system=system, base_model_id=base_model_id
        )
        (tmp / "README.md").write_text(card)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {
        "out": str(out),
        "bytes": sum((out / f).stat().st_size for f in files),
        "files": files,
        "seconds": round(time.perf_counter() - started, 2),
        "threshold": chosen["value"],
        "processor_class": processor_class,
        "vllm_layout": renamed,
    }


def vllm_ready(model_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> dict:
    """Copy the model directory ``model_dir`` to ``out`` in the layout vLLM loads: a stock processor class (with the
    video processor entry it needs) and a LLaVA-family CLIP tower under ``vision_tower.vision_model.*``; weights and
    answers are unchanged (transformers loads either). Returns ``out``, ``processor_class``, ``vllm_layout`` (whether
    tensors were renamed) and ``seconds``. An adapter directory is refused: ``export_model`` merges it first (vLLM
    refuses an adapter that trains ``lm_head``)."""
    started = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    if (model_dir / ADAPTER_INFO).is_file() or (model_dir / "adapter_config.json").is_file():
        raise ExportError(f"{model_dir} is an adapter; merge it into a model with `mmkd export {model_dir} --out DIR`")
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} is not a model directory (no config.json); give a saved model")
    _check_out(out, overwrite=overwrite, inputs=[str(model_dir)])

    from transformers import AutoConfig, AutoProcessor

    from mmkd.modeling import register_processor_plugins

    register_processor_plugins()  # the demo's image-only processors, which are to be renamed
    with staged_folder(out) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        config = AutoConfig.from_pretrained(tmp)
        processor = AutoProcessor.from_pretrained(tmp)
        if not (tmp / "processor_config.json").is_file():  # an older layout: the processor's own file first
            processor.save_pretrained(tmp)
        processor_class = _stock_processor_class(tmp, processor, config.model_type)
        renamed = _rename_tower_for_vllm(tmp, config)
    seconds = round(time.perf_counter() - started, 2)
    return {"out": str(out), "processor_class": processor_class, "vllm_layout": renamed, "seconds": seconds}


def check_chain(adapter: str | Path) -> tuple[str | None, list[str]]:
    """The recorded base and the adapters oldest first, or an ``ExportError`` naming the link that is missing."""
    chain: list[str] = []
    current: str | None = str(adapter)
    base = None
    while current:
        path = Path(current)
        child = f" (the parent named in {Path(chain[0]) / ADAPTER_INFO})" if chain else ""
        if not path.is_dir():
            raise ExportError(f"adapter directory {current}{child} does not exist")
        if not (path / ADAPTER_INFO).is_file():
            raise ExportError(
                f"{current}{child} is not an mmkd adapter (no {ADAPTER_INFO}); pass a stage1/stage2 output"
            )
        if current in chain:
            raise ExportError(f"{current}/{ADAPTER_INFO}: the adapter chain loops back to {current}")
        info = adapter_info(current)
        chain.insert(0, current)
        base = info.get("base")
        current = info.get("parent")
    return base, chain


def _check_out(out: Path, *, overwrite: bool, inputs: list[str]) -> None:
    """Refuse an output that is a file, a non-empty directory (without ``overwrite``), or that is, holds or lies
    inside one of the inputs (replacing it would destroy the input; writing inside it would change its hash)."""
    resolved = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if resolved == src or resolved in src.parents or src in resolved.parents:
            raise ExportError(f"--out {out} overlaps the input {source}; choose a directory outside it")
    if out.is_file():
        raise ExportError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; remove it or pass --overwrite")


def resolve_threshold(explicit: float | None, adapter: str | Path) -> dict:
    """The threshold to ship, by ``mmkd predict``'s precedence (``operating_threshold``): ``explicit`` > the value
    the adapter recorded on val (with its rule) > none (null: the label the model wrote, i.e. score >= 0.5)."""
    from mmkd.deploy.predict import operating_threshold
    from mmkd.evaluation.thresholds import THRESHOLD_KEY

    try:
        value = operating_threshold(str(adapter), explicit)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if value is None:
        return {"value": None, "source": None}
    if explicit is not None:
        return {"value": float(value), "source": "argument"}
    return {**adapter_info(adapter)[THRESHOLD_KEY], "value": float(value), "source": "adapter"}


def chain_hashes(base: str | Path, chain: list[str]) -> dict:
    """SHA-256 of the base model directory and of each adapter directory (oldest first), with their paths."""
    return {
        "base": {"path": str(base), "sha256": _dir_sha256(base)},
        "adapters": [{"path": str(a), "sha256": _dir_sha256(a)} for a in chain],
    }


def prompt_info(version: str) -> dict:
    """The prompt template as text: ``template`` with ``{caption}`` to replace (and, for templates that show
    evidence, the pieces that build the evidence lines)."""
    prompt = get_prompt(version)
    info = {"version": version, "template": prompt.render("{caption}"), "uses_evidence": prompt.uses_evidence}
    if prompt.uses_evidence:
        fields = dataclasses.asdict(prompt)
        info |= {k: fields[k] for k in ("entities_label", "captions_label", "captions_separator", "no_evidence")}
        info["template_with_evidence"] = prompt.render("{caption}", ["{entities}"], ["{search_captions}"])
    return info


def score_info(tokenizer) -> dict:
    """How the score is read, and the two label tokens right after ``Label:`` in this tokenizer."""
    from mmkd.scoring import label_token_ids

    ids = label_token_ids(tokenizer, SLOT_PREFIX)
    return {
        "name": f"P({FALSIFIED})",
        "reads": (
            "the next-token probabilities at the answer's label slot (the first token of the value of its first "
            f"'{SLOT_PREFIX}' field), renormalised over the two label tokens: "
            f"p({FALSIFIED}) / (p({FALSIFIED}) + p({PRISTINE}))"
        ),
        "slot_prefix": SLOT_PREFIX,
        "token_ids": ids,  # null: both labels begin with the same token here, so the slot cannot tell them apart
        "tokens": {label: tokenizer.decode([i]) for label, i in ids.items()} if ids else None,
    }


def export_info(
    *,
    base: str,
    chain: list[str],
    prompt_version: str,
    tokenizer,
    threshold: dict,
    dtype: str,
    model,
    processor_class: str,
    max_new_tokens: int,
    max_image_pixels: int | None,
    vllm_tower: bool,
) -> dict:
    """The contents of ``mmkd_export.json``: what the model is asked, how its answer and score are read, and what
    was merged into it."""
    return {
        "format": EXPORT_FORMAT,
        "mmkd_version": importlib.metadata.version("mmkd"),
        "model_type": model.config.model_type,
        "architecture": type(model).__name__,
        "processor_class": processor_class,
        "dtype": dtype,
        "prompt": prompt_info(prompt_version),
        "labels": list(LABELS),
        "positive_label": FALSIFIED,
        "answer_format": ANSWER_FORMAT,
        "score": score_info(tokenizer),
        "threshold": threshold
        | {"rule": threshold.get("rule"), "meaning": f"score >= value: {FALSIFIED}; null: 0.5 (the likelier label)"},
        "generation": {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens, "padding_side": "left"},
        "max_image_pixels": max_image_pixels,
        "weights_layout": {"vision_tower": VLLM_TOWER + "*"} if vllm_tower else None,
        "merged": chain_hashes(base, chain),
    }


def _read_optional(path: str | Path | None, parse):
    """A parsed file, or None when no path is given or the file is absent; a broken file is an error."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return parse(Path(path).read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise ExportError(f"{path} could not be read ({exc}); fix it or pass another file") from None


def _untie_trained_head(model) -> None:
    """Stage 1 trains ``lm_head`` on its own (``modules_to_save``): when the base ties it to the input embeddings,
    the merged head differs from them, so the saved config must not tie them again on load."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embed is None or head.weight is embed.weight:
        return
    configs = [model.config, model.config.get_text_config()]
    if any(getattr(c, "tie_word_embeddings", False) for c in configs):
        for c in configs:
            c.tie_word_embeddings = False


def _greedy_generation(config, max_new_tokens: int) -> None:
    """Greedy decoding with mmkd's answer length, as ``mmkd predict`` generates."""
    config.do_sample = False
    config.num_beams = 1
    config.max_new_tokens = max_new_tokens
    config.temperature = config.top_p = config.top_k = None  # unused by greedy decoding; kept out of the file
    config._from_model_config = False  # else generate() may rebuild it from the model config and drop these


def _stock_processor_class(out: Path, processor, model_type: str) -> str:
    """Name a stock transformers processor class in ``out`` where the processor is one only mmkd registers."""
    from transformers import ProcessorMixin

    cls = type(processor)
    if cls.__module__.startswith("transformers."):
        return cls.__name__
    stock = next(
        (c for c in cls.__mro__[1:] if c.__module__.startswith("transformers.") and issubclass(c, ProcessorMixin)),
        None,
    )
    if stock is None or stock is ProcessorMixin:
        raise ExportError(f"the processor {cls.__name__} has no stock transformers class to name instead")
    config_file = out / "processor_config.json"
    config = json.loads(config_file.read_text())
    if "video_processor" in inspect.signature(stock.__init__).parameters and "video_processor" not in config:
        if model_type not in VIDEO_PROCESSORS:
            raise ExportError(
                f"{cls.__name__} -> {stock.__name__}: no video processor known for {model_type!r} models "
                f"(known: {sorted(VIDEO_PROCESSORS)})"
            )
        video = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
        config["video_processor"] = video | {"video_processor_type": VIDEO_PROCESSORS[model_type]}
    config["processor_class"] = stock.__name__
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_file = out / "tokenizer_config.json"
    if tokenizer_file.is_file():
        tokenizer_config = json.loads(tokenizer_file.read_text())
        tokenizer_config["processor_class"] = stock.__name__
        tokenizer_file.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return stock.__name__


def _rename_tower_for_vllm(out: Path, config) -> bool:
    """Rename the CLIP tower's tensors to ``vision_tower.vision_model.*`` in every weight file; False when this
    model type needs no renaming."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tower = getattr(getattr(config, "vision_config", None), "model_type", None)
    if VLLM_TOWER_RENAMES.get(config.model_type) != tower:
        return False

    def renamed(key: str) -> str:
        return VLLM_TOWER + key[len(TOWER) :] if key.startswith(TOWER) and not key.startswith(VLLM_TOWER) else key

    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            metadata = f.metadata()
            tensors = {renamed(k): f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(shard), metadata=metadata)
    index = out / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")
    return True


# The model card ------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def model_card(
    export: dict,
    *,
    name: str,
    metrics: dict | None,
    params: dict | None,
    system: str,
    base_model_id: str | None = None,
) -> str:
    """The ``README.md`` of an export: Hugging Face model-card front matter, then what the model is, its measured
    quality, its data and teachers, its uses and limits, its licence, and how to run and score it without mmkd."""
    base = export["merged"]["base"]["path"]
    base_model_id = base_model_id or (base if _HUB_ID.match(base) and not Path(base).exists() else None)
    front = {
        "license": _base_license(base) or "other",
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        **({"base_model": base_model_id} if base_model_id else {}),
        "tags": ["mmkd", "out-of-context-detection", "misinformation", "knowledge-distillation", export["model_type"]],
    }
    stages = "Stage 1: supervised on the teachers' labels"
    if len(export["merged"]["adapters"]) > 1:
        stages += "; Stage 2: SFT and DPO on the items where they disagree"
    sections = [
        f"# {name}\n\n"
        "A small vision-language model that tells whether a news caption belongs to its image (**pristine**) or "
        "is out of context (**falsified**: a real image with a caption from another event). It was distilled "
        f"from several vision-language teachers with mmkd ({stages}) and exported as one merged checkpoint "
        f"({export['architecture']}, {export['dtype']}).",
        _results_section(metrics, system, export["threshold"]),
        _data_section(params, export),
        _usage_section(name, export),
        "## Intended use\n\n"
        "A research tool and a first-pass filter for fact-checkers: it flags image-caption pairs for a human to "
        "review, with a score to rank them by. It is meant for news images and captions in English, like the data "
        "it was trained on.",
        "## Out-of-scope use\n\n"
        "- Deciding on its own that a post is false, or acting against people or accounts on its verdict.\n"
        "- Detecting manipulated or generated images: it assumes the image is real and only judges the caption.\n"
        "- Claims that are not about an image, other languages, and domains far from its training data.",
        "## Limitations\n\n"
        "- Its accuracy is the one measured on the test split above, for that data; on other data it may be far "
        "lower, and it inherits the teachers' errors and blind spots.\n"
        "- The score is a model probability: check its calibration (ECE, when reported above) before reading it as "
        "the chance that a caption is falsified. A shipped threshold was chosen on the validation split of the same "
        "data.\n"
        "- Without web evidence in the prompt it can only compare the caption with what the image shows.\n"
        "- An answer outside the format (no `Label:` field) has no label and no score; do not guess one.",
        _licence_section(base, params),
        "## Provenance\n\n"
        f"Exported by mmkd {export['mmkd_version']} from `{base}` + "
        + " + ".join(f"`{a['path']}`" for a in export["merged"]["adapters"])
        + f". `{EXPORT_INFO}` holds the prompt, the label tokens, the threshold and the SHA-256 of the base and of "
        "each adapter merged.",
    ]
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n\n".join(sections) + "\n"


def _base_license(base: str) -> str | None:
    """The ``license`` of the base model's own model card, when it has one."""
    card = Path(base) / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    try:
        front = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    return front.get("license") if isinstance(front, dict) and isinstance(front.get("license"), str) else None


# The keys of an ``evaluate`` system entry the card quotes (mmkd.evaluation: score, score_ranked), in order.
RESULT_ROWS = (
    ("macro_f1", "Macro F1"),
    ("accuracy_at_threshold", "Accuracy at the val threshold"),
    ("auroc", "AUROC"),
    ("auprc", "AUPRC"),
    ("ece", "ECE"),
    ("brier", "Brier score"),
    ("unparsed_rate", "Unparsed answers"),
)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else str(value)


def pipeline_system(adapter: str | Path) -> str | None:
    """The entry of ``metrics/evaluate.json`` that scores ``adapter``, when it is one of the pipeline's own
    outputs (``models/stage1``, ``models/stage2``, ``models/baselines/<name>``): ``stage1``, ``stage2`` or
    ``baselines/<name>``; None for any other directory (its metrics are not the run's)."""
    from mmkd import paths

    here = Path(adapter).resolve()
    for name, path in (("stage1", paths.STAGE1_ADAPTER), ("stage2", paths.STAGE2_ADAPTER)):
        if here == path.resolve():
            return name
    if here.parent == paths.BASELINE_MODELS.resolve():
        return f"baselines/{here.name}"
    return None


def _results_section(metrics: dict | None, system: str | None, threshold: dict) -> str:
    head = "## Results\n\n"
    if system is None:
        return head + "This adapter is not one of the pipeline's outputs, so no run metrics are quoted."
    entry = metrics or {}
    for part in system.split("/"):  # baselines/<name> is nested
        entry = entry.get(part) if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or "accuracy" not in entry:
        return head + f"No metrics for `{system}` were found when this model was exported."
    accuracy = f"{_fmt(entry['accuracy'])}"
    if isinstance(ci := entry.get("accuracy_ci95"), list) and len(ci) == 2:
        accuracy += f" (95 % CI {_fmt(ci[0])}–{_fmt(ci[1])})"
    rows = [("Accuracy", accuracy)]
    for key, label in RESULT_ROWS:
        if entry.get(key) is not None:  # keys a run did not report (no scores, older metrics) are left out
            rows.append((label, _fmt(entry[key])))
    if entry.get("threshold") is not None:
        rule = f", {entry['threshold_rule']}" if entry.get("threshold_rule") else ""
        rows.append(("Threshold (chosen on val)", f"{_fmt(entry['threshold'])}{rule}"))
    n = f" on {entry['n']} test items" if "n" in entry else ""
    lines = [f"The run's `metrics/evaluate.json` (`{system}`){n}:", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    teachers = {k: v["accuracy"] for k, v in (metrics.get("teachers") or {}).items() if "accuracy" in v}
    if teachers:
        lines += [
            "",
            "Its teachers' accuracy on the same items: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in teachers.items())
            + ".",
        ]
    if threshold["value"] is not None:
        lines += [
            "",
            f"This export flags an item as {FALSIFIED} when its score is at least {_fmt(threshold['value'])}.",
        ]
    return head + "\n".join(lines)


def _data_section(params: dict | None, export: dict) -> str:
    head = "## Training data and teachers\n\n"
    if not params:
        return head + "The run's params.yaml was not available at export time."
    data = params.get("data") or {}
    names = params.get("teacher_names") or []
    teachers = params.get("teachers") or {}
    where = f"`{data.get('dir', '?')}`"
    if "world" in data:  # the demo's synthetic world: say so, the card's news wording would mislead otherwise
        lines = [f"- Data: mmkd's synthetic demo world in {where} (coloured shapes in places; no real news image)."]
    else:
        lines = [f"- Data: the items prepared in {where}."]
    if names:
        lines.append(
            "- Teachers: " + ", ".join(f"{n} (`{(teachers.get(n) or {}).get('model', '?')}`)" for n in names) + "."
        )
    lines.append(f"- Prompt: version `{export['prompt']['version']}` (the text is in `{EXPORT_INFO}`).")
    return head + "\n".join(lines)


# The model card's example: runs with plain transformers (tests/test_export.py runs it against `mmkd predict`).
CARD_CODE = r'''import json
import re

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

MODEL = "./@NAME@"
model = AutoModelForImageTextToText.from_pretrained(MODEL).eval()  # add device_map="auto" on a GPU
processor = AutoProcessor.from_pretrained(MODEL)
info = json.load(open(f"{MODEL}/@EXPORT_INFO@"))
SLOT = re.compile(r"\blabel\s*:\s*$", re.IGNORECASE)  # an answer's text up to its label slot


def chat(caption):
    prompt = info["prompt"]["template"].replace("{caption}", caption)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


def slot_score(new_ids, step_logits):
    """P(falsified) at the first token of the answer's first Label: value; None without one."""
    tok, slot = processor.tokenizer, None
    for i in range(len(new_ids) + 1):
        if SLOT.search(tok.decode(new_ids[:i], skip_special_tokens=True)):
            slot = i  # white space after "Label:" moves the slot on
        elif slot is not None:
            break
    if slot is None or slot >= len(new_ids):
        return None
    prefix = tok.decode(new_ids[:slot], skip_special_tokens=True)
    head, ids = tok.encode(prefix, add_special_tokens=False), {}
    for label in info["labels"]:  # the token that would begin each label at the slot
        value = label if prefix[-1:].isspace() else " " + label
        full = tok.encode(prefix + value, add_special_tokens=False)
        if full[: len(head)] != head or len(full) == len(head):
            full = head + tok.encode(value, add_special_tokens=False)
        ids[label] = full[len(head)]
    if ids["pristine"] == ids["falsified"]:
        return None
    pair = torch.stack([step_logits[slot][ids["falsified"]], step_logits[slot][ids["pristine"]]]).float()
    return torch.softmax(pair, dim=0)[0].item()


@torch.inference_mode()
def answer(images, captions):
    """(answer, score) per item: greedy, left padding, the score read from generation's own logits."""
    enc = processor(text=[chat(c) for c in captions], images=images, padding=True, padding_side="left",
                    return_tensors="pt").to(model.device)
    out = model.generate(**enc, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    texts = processor.batch_decode(new, skip_special_tokens=True)
    return [(t.strip(), slot_score(new[r].tolist(), [s[r] for s in out.logits])) for r, t in enumerate(texts)]


image = Image.open("photo.jpg").convert("RGB")
text, p = answer([image], ["Flood waters cover the town square."])[0]
threshold = info["threshold"]["value"]
if p is not None and threshold is not None:
    label = "falsified" if p >= threshold else "pristine"
else:  # the label as written (mmkd.parsing is stricter: one exact label, no contradiction)
    found = re.search(r"\blabel\s*:\s*(pristine|falsified)\b", text, re.IGNORECASE)
    label = found.group(1).lower() if found else None  # no label: unparsed, do not guess
print(label, p, text)
'''


def _usage_section(name: str, export: dict) -> str:
    evidence = (
        "\n\nThis prompt version also shows web evidence when an item has it: see `template_with_evidence` and the "
        f"evidence fields in `{EXPORT_INFO}`; without evidence, `template` is the whole prompt."
        if export["prompt"]["uses_evidence"]
        else ""
    )
    if export["score"]["token_ids"] is None:
        tokens = (
            f"This tokenizer begins both labels with the same token after `{SLOT_PREFIX}` (`score.token_ids` is "
            "null), so a slot right after it cannot tell them apart."
        )
    else:
        tokens = (
            f"Right after `{SLOT_PREFIX}` the two label tokens are `{json.dumps(export['score']['tokens'])}` (ids in "
            f"`{EXPORT_INFO}`, `score.token_ids`), e.g. for a server's top logprobs."
        )
    code = CARD_CODE.replace("@NAME@", name).replace("@EXPORT_INFO@", EXPORT_INFO)
    return f"""## How to use it (plain transformers)

Its answers take the form `{export["answer_format"]}`

Ask it greedily (the generation config does), with the image and the prompt in one user turn. This code gives the
answers and scores that `mmkd predict` gives, without mmkd.{evidence}

```python
{code}```

## How the score is read

The score is P({FALSIFIED}): {export["score"]["reads"]}. It is read from the logits that generation produced at the
slot, as `slot_score` above does; an answer without a `{SLOT_PREFIX}` field has no score. {tokens} An item is
{FALSIFIED} when its score is at least the threshold (`threshold.value` in `{EXPORT_INFO}`); with no threshold, or
no score, the label is the one the model wrote (the likelier of the two, i.e. score >= 0.5)."""


def _licence_section(base: str, params: dict | None) -> str:
    project = importlib.metadata.metadata("mmkd").get("License") or "open source"
    data = ((params or {}).get("data") or {}).get("dir", "the training data")
    return (
        "## Licence\n\n"
        f"mmkd, the code that trained and exported this model, is open source ({project}). These weights are "
        f"derived from the base model `{base}` and from `{data}`: their licence follows the base model's licence "
        "and the terms of the training data (and of the teachers' outputs, where those restrict use). Check all of "
        "them before you redistribute the weights."
    )
