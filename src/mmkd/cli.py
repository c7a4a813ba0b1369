"""The ``mmkd`` command line: ``predict`` (one item or a file of items), ``export`` (one standalone model directory),
``vllm-ready`` (a model directory in the layout vLLM loads),
``compose`` (conf/ -> params.yaml), ``push`` / ``apply`` (share runs and experiments through a DVC remote),
``report`` (an offline HTML report of a run), ``reproduce`` (does a run reproduce the committed one),
``annotate`` (people label the conflicts), ``summarize`` (mean ± sd over experiments, e.g. seeds) and
``label-curve`` (the label-efficiency plot from a sweep of experiments)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml


def _predict(args: argparse.Namespace) -> int:
    from mmkd.deploy.predict import (
        load_predictor,
        predict_items,
        read_item_file,
        reported_threshold,
        score_calibration,
        trained_prompt_version,
    )
    from mmkd.items import BadItem, check_caption
    from mmkd.schema import items_frame

    single = args.image is not None or args.caption is not None
    if single == (args.items is not None):
        raise SystemExit("mmkd predict: give either --image and --caption, or --items FILE --out FILE")
    calibration = None if args.raw_score else score_calibration(args.adapter)
    try:
        threshold = reported_threshold(args.adapter, args.threshold, calibration)
    except ValueError as exc:
        raise SystemExit(f"mmkd predict: {exc}") from None
    predictor = load_predictor(adapter=args.adapter, base=args.base, batch_size=args.batch_size, dtype=args.dtype)
    if args.prompt_version is None:
        args.prompt_version = trained_prompt_version(args.adapter)
    if single:
        if args.image is None:
            raise SystemExit("mmkd predict: --caption needs --image")
        try:
            check_caption("cli", args.caption)
        except BadItem as exc:
            raise SystemExit(f"mmkd predict: {exc}") from None
        items = items_frame([{"id": "cli", "image_path": str(Path(args.image).resolve()), "caption": args.caption}])
        row = predict_items(predictor, items, args.prompt_version, threshold, calibration).row(0, named=True)
        if row["status"] == "skipped":
            raise SystemExit(f"mmkd predict: {row['error']}")
        out = {
            "label": row["label"],
            "score": row["score"],
            "raw_score": row["raw_score"],
            "rationale": row["rationale"],
        }
        if row["status"] != "ok":
            out |= {"status": row["status"], "raw_text": row["raw_text"]}
        print(json.dumps(out))
        return 0
    if args.out is None:
        raise SystemExit("mmkd predict: --items needs --out (a .parquet or .jsonl file)")
    answers = predict_items(predictor, read_item_file(args.items), args.prompt_version, threshold, calibration)
    out = Path(args.out)
    if out.suffix == ".jsonl":
        answers.write_ndjson(out)
    else:
        answers.write_parquet(out)
    counts = dict(answers["status"].value_counts().iter_rows())
    scale = {"score": "calibrated" if calibration else "raw"}
    print(json.dumps({"out": str(out), "n": len(answers), "status": counts, "threshold": threshold} | scale))
    return 0


def _export(args: argparse.Namespace) -> int:
    from mmkd.deploy.export import ExportError, export_model

    try:
        summary = export_model(
            args.adapter,
            args.out,
            base=args.base,
            threshold=args.threshold,
            dtype=args.dtype,
            metrics_path=args.metrics,
            params_path=args.params,
            vllm_layout=args.vllm_layout,
            overwrite=args.overwrite,
            base_model_id=args.base_model_id,
        )
    except (ExportError, ValueError) as exc:
        raise SystemExit(f"mmkd export: {exc}") from None
    summary.pop("files")
    print(json.dumps(summary))
    return 0


def _vllm_ready(args: argparse.Namespace) -> int:
    from mmkd.deploy.export import ExportError, vllm_ready

    try:
        summary = vllm_ready(args.model, args.out, overwrite=args.overwrite)
    except (ExportError, ValueError) as exc:
        raise SystemExit(f"mmkd vllm-ready: {exc}") from None
    print(json.dumps(summary))
    return 0


def compose(overrides: list[str], config_dir: str | Path = "conf") -> dict:
    """Compose the Hydra config in ``config_dir`` with ``overrides`` (as ``dvc exp run -S`` does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def _compose(args: argparse.Namespace) -> int:
    params = compose(args.overrides, args.config_dir)
    text = yaml.safe_dump(params, sort_keys=False)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


def _report(args: argparse.Namespace) -> int:
    from mmkd.evaluation.report import compact_table, html_report, markdown_table

    if args.markdown or args.compact:
        evaluate = json.loads(Path("metrics/evaluate.json").read_text())
        split_file = Path("metrics/split.json")
        split = json.loads(split_file.read_text()) if split_file.exists() else None
        sys.stdout.write((compact_table if args.compact else markdown_table)(evaluate, split))
        return 0
    Path(args.out).write_text(html_report("."))
    print(args.out)
    return 0


def _plots_offline(args: argparse.Namespace) -> int:
    from mmkd.evaluation.plots import install_offline_template

    path = install_offline_template(args.repo)
    print(f"{path} (set as plots.html_template in .dvc/config.local: `dvc plots show` / `diff` now render offline)")
    return 0


def _push(args: argparse.Namespace) -> int:
    from mmkd.deploy.sharing import SharingError, push_runs

    try:
        counts = push_runs(args.repo, remote=args.remote, jobs=args.jobs)
    except SharingError as exc:
        raise SystemExit(f"mmkd push: {exc}") from None
    print(
        f"pushed {counts['files']} files, then {counts['entry_objects']} files that run-cache entries list "
        f"(`dvc push --run-cache` leaves them out), then {counts['new_entries']} new run-cache entries "
        f"({counts['entries']} in all)"
    )
    return 0


def _apply(args: argparse.Namespace) -> int:
    from mmkd.deploy.sharing import SharingError, apply_experiment

    try:
        done = apply_experiment(args.experiment, args.repo, remote=args.remote, jobs=args.jobs)
    except SharingError as exc:
        raise SystemExit(f"mmkd apply: {exc}") from None
    restored = f"; pulled {len(done['restored'])} missing outputs: {', '.join(done['restored'])}"
    print(f"applied {args.experiment} ({done['fetched']} files fetched first{restored if done['restored'] else ''})")
    return 0


def _runs(args: argparse.Namespace):
    from mmkd.evaluation.experiments import dvc_exp_show, runs_from_show

    if args.show_json:
        show = json.loads(Path(args.show_json).read_text())
    else:
        show = dvc_exp_show(args.repo, all_commits=args.all_commits)
    runs = runs_from_show(show, args.names or None)
    if not runs:
        raise SystemExit("mmkd: no experiment with metrics/evaluate.json; run some (README: Seeds and sweeps)")
    return runs


def _reproduce(args: argparse.Namespace) -> int:
    from mmkd.evaluation.reproduce import check

    try:
        text, reproduces = check(args.repo, args.exp, args.rev)
    except (FileNotFoundError, KeyError) as exc:
        raise SystemExit(f"mmkd reproduce: {exc}") from None
    sys.stdout.write(text)
    return 0 if reproduces else 1


def _summarize(args: argparse.Namespace) -> int:
    from mmkd.evaluation.experiments import comparisons, comparisons_markdown, summarize, summary_markdown

    if args.from_file:  # a summary written before (e.g. the committed metrics/seeds.json): print it again
        summary = json.loads(Path(args.from_file).read_text())
    else:
        runs = _runs(args)
        summary = {
            "runs": [{"name": r.name, "seed": r.params.get("seed")} for r in runs],
            "systems": summarize(runs),
            "comparisons": comparisons(runs),
        }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    else:
        sys.stdout.write(summary_markdown(summary["systems"]) + "\n" + comparisons_markdown(summary["comparisons"]))
    return 0


def _label_curve(args: argparse.Namespace) -> int:
    from mmkd.evaluation.experiments import curve_csv, curve_svg, label_efficiency

    points, references = label_efficiency(_runs(args))
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    Path(args.csv).write_text(curve_csv(points))
    Path(args.svg).parent.mkdir(parents=True, exist_ok=True)
    Path(args.svg).write_text(curve_svg(points, references))
    print(json.dumps({"points": len(points), "csv": args.csv, "svg": args.svg, "references": references}))
    return 0


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="experiment names to include (default: every one with test metrics)")
    p.add_argument("--show-json", help="read `dvc exp show --json` output from this file instead of running it")
    p.add_argument("--repo", default=".", help="root of the DVC repository (default: .)")
    p.add_argument(
        "--all-commits", action="store_true", help="also the experiments of earlier commits (dvc exp show -A)"
    )


def _annotate(args: argparse.Namespace) -> int:
    from mmkd.annotation.commands import export_command, import_command

    return export_command(args) if args.verb == "export" else import_command(args)


def _annotate_parser(sub) -> None:
    """``mmkd annotate export|import`` (mmkd.annotation.commands)."""
    queue = "annotation/queue"  # mmkd.paths.ANNOTATION_QUEUE, spelled here so that the parser imports nothing
    p = sub.add_parser("annotate", help="people label what the teachers disagree on: export a queue, import labels")
    verbs = p.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("export", help="write the items that need a person (Label Studio tasks, JSONL, CSV)")
    e.add_argument("--out", default=queue, help="folder to write (default: %(default)s)")
    e.add_argument("--budget", type=int, help="at most this many items (default: annotation.budget)")
    show = e.add_mutually_exclusive_group()
    show.add_argument("--show-teachers", dest="show_teachers", action="store_true", default=None)
    show.add_argument("--hide-teachers", dest="show_teachers", action="store_false")
    e.add_argument("--params", default="params.yaml")
    i = verbs.add_parser("import", help="append checked labels (Label Studio JSON export, or .jsonl/.csv rows)")
    i.add_argument("file", type=Path)
    i.add_argument("--annotator", help="who labelled, for .jsonl/.csv rows without an annotator column")
    i.add_argument("--queue", default=queue, help="the export to check against (default: %(default)s)")
    i.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_annotate)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="mmkd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    _annotate_parser(sub)
    p = sub.add_parser("predict", help="label one image+caption, or a .parquet/.jsonl file of items")
    p.add_argument("--image", help="image file")
    p.add_argument("--caption", help="the caption to check against the image")
    p.add_argument("--items", help="a .parquet or .jsonl file of items (id, image_path, caption)")
    p.add_argument("--out", help="where batch predictions go (.parquet or .jsonl)")
    p.add_argument("--adapter", default="models/stage2", help="an mmkd adapter directory (default: models/stage2)")
    p.add_argument("--base", help="base model directory (default: the one the adapter records)")
    p.add_argument(
        "--prompt-version",
        default=None,
        help="prompt template version (default: the one the adapter was trained with, else v1)",
    )
    p.add_argument("--dtype", default="float32", help="float32 (CPU), or bfloat16 on GPU for a 7B student")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--threshold",
        type=float,
        help="label falsified when score >= this (default: the val threshold recorded in the adapter, else 0.5)",
    )
    p.add_argument(
        "--raw-score",
        action="store_true",
        help="report the raw P(falsified) as score (default: calibrated on val where the adapter recorded a fit)",
    )
    p.set_defaults(func=_predict)

    e = sub.add_parser(
        "export", help="merge an adapter chain into one standalone model directory (transformers, vLLM, a model card)"
    )
    e.add_argument("adapter", help="an mmkd adapter directory, e.g. models/stage2")
    e.add_argument("--out", required=True, help="the model directory to write")
    e.add_argument("--base", help="base model directory (default: the one the adapter records)")
    e.add_argument("--threshold", type=float, help="operating threshold (default: the adapter's val threshold)")
    e.add_argument("--dtype", default="float32", help="dtype of the saved weights (float32, bfloat16, float16)")
    e.add_argument("--metrics", default="metrics/evaluate.json", help="the run's metrics, quoted in the model card")
    e.add_argument("--params", default="params.yaml", help="the run's params (data, teachers) for the model card")
    e.add_argument("--base-model-id", help="the base's Hugging Face Hub id, for the card's base_model")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    e.add_argument(
        "--no-vllm-layout",
        dest="vllm_layout",
        action="store_false",
        help="keep transformers' own vision-tower key names (default: vLLM's, which transformers also loads)",
    )
    e.set_defaults(func=_export)

    v = sub.add_parser(
        "vllm-ready", help="copy a model directory (not an adapter) into the layout vLLM loads (docs/serving.md)"
    )
    v.add_argument("model", help="a model directory, e.g. models/demo/teacher_llava")
    v.add_argument("--out", required=True, help="the model directory to write")
    v.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    v.set_defaults(func=_vllm_ready)

    c = sub.add_parser("compose", help="compose conf/ into params.yaml (what `dvc exp run` does)")
    c.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=demo_ci stage2.dpo.beta=0.2")
    c.add_argument("--config-dir", default="conf")
    c.add_argument("--out", default="params.yaml", help="output file, or - for stdout")
    c.set_defaults(func=_compose)

    r = sub.add_parser("report", help="an offline HTML report (metrics, confusion matrices, loss curves)")
    r.add_argument("--out", default="report.html")
    r.add_argument("--markdown", action="store_true", help="print the metrics tables as Markdown instead")
    r.add_argument("--compact", action="store_true", help="print one compact Markdown table (the README's)")
    r.set_defaults(func=_report)

    o = sub.add_parser(
        "plots-offline", help="make `dvc plots show` / `dvc plots diff` render without a network (inlined vega)"
    )
    o.add_argument("--repo", default=".", help="root of the DVC repository (default: .)")
    o.set_defaults(func=_plots_offline)

    u = sub.add_parser(
        "push", help="`dvc push`, the files run-cache entries list, then the entries (mmkd.deploy.sharing)"
    )
    u.add_argument("-r", "--remote", help="DVC remote name (default: the default remote)")
    u.add_argument("-j", "--jobs", type=int, help="parallel transfers")
    u.add_argument("--repo", default=".", help="root of the DVC repository (default: .)")
    u.set_defaults(func=_push)

    a = sub.add_parser(
        "apply", help="`dvc exp apply` of a (teammate's) experiment, its outputs fetched first (mmkd.deploy.sharing)"
    )
    a.add_argument("experiment", help="experiment name or revision, e.g. one `dvc exp push origin NAME` sent here")
    a.add_argument("-r", "--remote", help="DVC remote name (default: the default remote)")
    a.add_argument("-j", "--jobs", type=int, help="parallel transfers")
    a.add_argument("--repo", default=".", help="root of the DVC repository (default: .)")
    a.set_defaults(func=_apply)

    d = sub.add_parser(
        "reproduce", help="compare this run's outputs and metrics (or an experiment's) with the committed ones"
    )
    d.add_argument("--exp", help="an experiment's name (dvc exp show) instead of the workspace")
    d.add_argument("--rev", default="HEAD", help="the committed run to compare with (default: HEAD)")
    d.add_argument("--repo", default=".", help="root of the DVC repository (default: .)")
    d.set_defaults(func=_reproduce)

    m = sub.add_parser("summarize", help="mean ± sd of each system's test accuracy over experiments (e.g. seeds)")
    _experiment_args(m)
    m.add_argument("--json", action="store_true", help="print the summary as JSON instead of Markdown tables")
    m.add_argument("--out", help="also write the summary as JSON here (a metrics file, e.g. metrics/seeds.json)")
    m.add_argument("--from", dest="from_file", help="print a summary written by --out instead of reading experiments")
    m.set_defaults(func=_summarize)

    c = sub.add_parser("label-curve", help="the label-efficiency curve (Stage 2 vs gold labels read) from experiments")
    _experiment_args(c)
    c.add_argument("--csv", default="metrics/label_efficiency.csv", help="the points (a DVC plot)")
    c.add_argument("--svg", default="docs/label_efficiency.svg", help="the figure (renders offline)")
    c.set_defaults(func=_label_curve)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
