"""``mmkd export``: one standalone model directory from an mmkd adapter chain.

The chain (base model, then the Stage-1 and Stage-2 adapters) is merged into one model and saved with
``save_pretrained`` (safetensors) beside its processor, chat template and a greedy generation config, so that plain
transformers (``AutoModelForImageTextToText`` / ``AutoProcessor``, no mmkd) and vLLM load it. Two more files say how
to use it: ``mmkd_export.json`` (mmkd.deploy.manifest) and a Hugging Face model card, ``README.md``
(mmkd.deploy.card). The directory is made independent of mmkd by the rewrites of mmkd.deploy.vllm_layout. What
loads where: docs/deploy.md.

``vllm_ready`` (``mmkd vllm-ready DIR --out OUT``) applies the same rewrites to a copy of any model directory that
is not an adapter chain (a demo teacher, a model saved by transformers 5.2x), so that vLLM serves it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import yaml

from mmkd.data.staging import staged_folder
from mmkd.deploy import ExportError
from mmkd.deploy.card import model_card, pipeline_system
from mmkd.deploy.manifest import EXPORT_INFO, export_info, resolve_threshold
from mmkd.deploy.vllm_layout import rename_tower_for_vllm, stock_processor_class
from mmkd.inference.local import LocalConfig
from mmkd.modeling import ADAPTER_INFO, DTYPES, adapter_chain, adapter_info

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = LocalConfig.__dataclass_fields__["max_new_tokens"].default  # what `mmkd predict` uses


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
    try:
        recorded_base, chain = adapter_chain(adapter)
    except (FileNotFoundError, ValueError) as exc:  # a missing, foreign or looping link of the chain
        raise ExportError(str(exc)) from None
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
        processor_class = stock_processor_class(tmp, processor, model.config.model_type)
        renamed = rename_tower_for_vllm(tmp, model.config) if vllm_layout else False
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
        processor_class = stock_processor_class(tmp, processor, config.model_type)
        renamed = rename_tower_for_vllm(tmp, config)
    seconds = round(time.perf_counter() - started, 2)
    return {"out": str(out), "processor_class": processor_class, "vllm_layout": renamed, "seconds": seconds}


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
