"""Items/s of the student answering the demo test items: locally (``mmkd predict``'s LocalBackend, batched) and
served (the merged student behind ``transformers serve``, asked through ``backend: openai`` at several
concurrencies), beside how many served answers equal the local ones.

The student is an adapter chain (default: the demo's ``models/stage2`` on the base its ``mmkd_adapter.json`` names,
``pretrained/demo/student_base``); it is
exported (``mmkd.deploy.export.export_model``) into one standalone model directory in a temporary folder, which
``transformers serve`` runs on CPU. With
``--base-url`` an already running server (e.g. vLLM on an exported checkpoint) is measured instead.

    python benchmarks/serving_benchmark.py [--items 128] [--batch-sizes 1 16 64] [--concurrency 1 8 32]

Prints a Markdown table (docs/serving.md keeps one). Every run answers the same items; nothing is cached.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from mmkd.deploy.export import export_model
from mmkd.deploy.predict import load_predictor, predict_items, trained_prompt_version
from mmkd.inference.answering import label_items
from mmkd.labelling.backends import make_backend
from mmkd.schema import read_items

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the `transformers serve` launcher the serving tests use
from fault_server import transformers_serve  # noqa: E402


def timed(fn) -> tuple[pl.DataFrame, float]:
    start = time.perf_counter()
    answers = fn()
    return answers, time.perf_counter() - start


def agreement(answers: pl.DataFrame, reference: pl.DataFrame) -> str:
    """How many answers have the same raw text as the reference (local batch size 1), of all."""
    same = int((answers["raw_text"] == reference["raw_text"]).sum())
    return f"{same}/{len(reference)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=128, help="the first N items of --test")
    parser.add_argument("--test", default=str(ROOT / "data/world/test.parquet"), help="items (Parquet)")
    parser.add_argument("--adapter", default=str(ROOT / "models/stage2"), help="the student's last adapter")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64], help="local batch sizes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=64, help="as `mmkd predict` (max_new_tokens)")
    parser.add_argument("--base-url", help="measure this running server (its .../v1 URL) instead of starting one")
    parser.add_argument("--model-name", help="the model name that server knows (with --base-url)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    items = read_items(args.test).head(args.items)
    prompt_version = trained_prompt_version(args.adapter)
    rows = []
    reference = None
    for b in args.batch_sizes:
        predictor = load_predictor(adapter=args.adapter, base=None, batch_size=b, max_new_tokens=args.max_tokens)
        predictor._load()  # before the clock starts: loading is not throughput
        answers, wall = timed(lambda p=predictor: predict_items(p, items, prompt_version))
        reference = answers if reference is None else reference
        rows.append(("local (mmkd predict)", f"batch {b}", wall, answers, agreement(answers, reference)))
        del predictor

    with contextlib.ExitStack() as stack:
        if args.base_url:
            base_url, model_name = args.base_url, args.model_name
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            model_name = str(tmp / "student")
            export_model(args.adapter, model_name, metrics_path=None, params_path=None)  # the card is not measured
            base_url = stack.enter_context(transformers_serve(model_name, tmp / "serve.log"))
        for c in args.concurrency:
            teacher = {
                "backend": "openai",
                "model": model_name,
                "base_url": base_url,
                "prompt_version": prompt_version,
                "max_tokens": args.max_tokens,
                "max_concurrency": c,
                "timeout": 600,
            }
            backend = make_backend("student", teacher)
            label_items(backend, items.head(2), source="student", prompt_version=prompt_version)  # warm-up
            answers, wall = timed(
                lambda t=backend: label_items(t, items, source="student", prompt_version=prompt_version)
            )
            rows.append(("served (backend: openai)", f"concurrency {c}", wall, answers, agreement(answers, reference)))

    print(f"\n{len(items)} items of {args.test}; student {args.adapter}; max {args.max_tokens} new tokens\n")
    print("| path | setting | wall s | items/s | same text as local batch 1 | parsed | scored |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for path, setting, wall, answers, same in rows:
        parsed = int((answers["status"] == "ok").sum())
        scored = int(answers["score"].is_not_null().sum())
        print(f"| {path} | {setting} | {wall:.1f} | {len(answers) / wall:.2f} | {same} | {parsed} | {scored} |")


if __name__ == "__main__":
    main()
