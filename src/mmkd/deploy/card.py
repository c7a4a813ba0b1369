"""The model card (``README.md``) of an exported model: Hugging Face front matter, what the model is, the run's
measured quality, its data and teachers, its uses and limits, its licence, and a program that runs and scores it.

The program is mmkd.deploy.card_example with the definitions it imports from mmkd written out (``example_code``),
so one definition of the score serves mmkd and the card, and the card's program runs without mmkd.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import json
import re
import sys
from pathlib import Path

import yaml

from mmkd.deploy import card_example
from mmkd.deploy.manifest import EXPORT_INFO, SLOT_PREFIX
from mmkd.schema import FALSIFIED

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
    return f"""## How to use it (plain transformers)

Its answers take the form `{export["answer_format"]}`

Ask it greedily (the generation config does), with the image and the prompt in one user turn. This program gives
the answers and scores that `mmkd predict` gives, without mmkd; save it as `example.py` and run
`python example.py ./{name} photo.jpg "Flood waters cover the town square."`.{evidence}

```python
{example_code()}```

## How the score is read

The score is P({FALSIFIED}): {export["score"]["reads"]}. It is read from the logits that generation produced at the
slot, as `generated_score` above does; an answer without a `{SLOT_PREFIX}` field has no score. {tokens} An item is
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


def example_code() -> str:
    """The card's program: the source of mmkd.deploy.card_example, standalone (see ``standalone_source``)."""
    return standalone_source(card_example)


def standalone_source(module) -> str:
    """The source of ``module`` without its docstring and its ``__future__`` and mmkd imports, so that it runs
    without mmkd: names imported from an mmkd module are written out where the import was, constants as their values
    and functions as that module's whole standalone source; the standard-library imports of both are merged."""
    stdlib, text = _standalone(module)
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("import "))
    kept = [line for line in lines if not _stdlib_import(line)]
    return "".join([*kept[:first], *(f"import {name}\n" for name in sorted(stdlib)), *kept[first:]])


def _standalone(module) -> tuple[set[str], str]:
    """The standard-library modules that ``module`` and the mmkd modules it inlines import, and its source as
    ``standalone_source`` writes it, those imports left in place."""
    source = inspect.getsource(module)
    lines = source.splitlines(keepends=True)
    stdlib = {line.split()[1] for line in lines if _stdlib_import(line)}
    replaced: list[tuple[int, int, str]] = []  # (first line, last line, text), 0-based, end exclusive
    for i, node in enumerate(ast.parse(source).body):
        span = (node.lineno - 1, node.end_lineno)
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            replaced.append((*span, ""))  # the module docstring
        elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
            replaced.append((*span, ""))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mmkd":
            imported = importlib.import_module(node.module)
            values = {a.name: getattr(imported, a.name) for a in node.names}
            if all(isinstance(v, str | tuple) for v in values.values()):
                text = "".join(f"{name} = {_literal(v)}\n" for name, v in values.items())
            else:
                inner_stdlib, inner = _standalone(imported)
                stdlib |= inner_stdlib
                text = "".join(line for line in inner.splitlines(keepends=True) if not _stdlib_import(line))
                text = text.strip("\n") + "\n"
            replaced.append((*span, text))
    out, at = [], 0
    for start, end, text in replaced:
        out += [*lines[at:start], text]
        at = end
    return stdlib, "".join(out + lines[at:]).lstrip("\n")


def _stdlib_import(line: str) -> bool:
    return line.startswith("import ") and line.split()[1].split(".")[0] in sys.stdlib_module_names


def _literal(value: str | tuple) -> str:
    """Python text for a label name or a tuple of them, quoted as ruff formats it."""
    if isinstance(value, tuple):
        return "(" + ", ".join(json.dumps(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return json.dumps(value)
