"""An offline report of a pipeline run: the metrics table, ranking and calibration of the scores, confusion
matrices, ROC curves, reliability diagrams and training curves.

``dvc plots show`` writes HTML that fetches vega from a CDN, which does not render without a network. This report
is one self-contained HTML file (inline SVG, no scripts), and the metrics table is also printed as Markdown for
the README.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import polars as pl

from mmkd.evaluation.metrics import METRIC_KEYS

CURVES = {  # title -> dvclive directory (relative to the repo root)
    "Stage 1 SFT": "dvclive/stage1",
    "Stage 2 SFT": "dvclive/stage2/sft",
    "Stage 2 DPO": "dvclive/stage2/dpo",
}


TABLE_KEYS = ("accuracy", "accuracy_ci95", *METRIC_KEYS[1:])
# The scores' table: ranking and calibration as fractions, the threshold chosen on val, accuracies in %
RANKING_COLUMNS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "ece": "ECE",
    "ece_calibrated": "ECE (calibrated on val)",
    "brier": "Brier",
    "brier_calibrated": "Brier (calibrated)",
    "threshold": "threshold (val)",
    "accuracy_at_half": "accuracy @ 0.5",
    "accuracy_at_threshold": "accuracy @ threshold",
}


def _fmt_ranking(key: str, value) -> str:
    if value is None:
        return "-"
    if key.startswith("accuracy"):
        return f"{100 * value:.1f}"
    return f"{value:.6g}" if key == "threshold" else f"{value:.3f}"  # a threshold near 1 needs its digits


def ranking_rows(evaluate: dict) -> list[tuple[str, list[str]]]:
    """(system, formatted RANKING_COLUMNS) for every system that has scores."""
    return [
        (name, [_fmt_ranking(k, m.get(k)) for k in RANKING_COLUMNS])
        for name, m in metrics_rows(evaluate)
        if m.get("n_scored")
    ]


def metrics_rows(evaluate: dict) -> list[tuple[str, dict]]:
    """(name, metrics) in reading order: teachers, baselines, then zero-shot, Stage 1, Stage 2."""
    rows = [(f"teacher: {name}", m) for name, m in sorted(evaluate.get("teachers", {}).items())]
    rows += [(f"baseline: {name}", m) for name, m in sorted(evaluate.get("baselines", {}).items())]
    rows += [(name, evaluate[name]) for name in ("zero_shot", "stage1", "stage2") if name in evaluate]
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):  # an interval
        return "–".join(f"{100 * v:.1f}" for v in value)
    return f"{100 * value:.1f}" if isinstance(value, float) else str(value)


def comparison_rows(evaluate: dict) -> list[tuple[str, str, str, str, str]]:
    """(comparison, accuracy difference, its 95 % interval, McNemar p, discordant counts), all formatted."""
    rows = []
    for name, c in evaluate.get("significance", {}).items():
        diff = f"{100 * c['accuracy_diff']:+.1f}"
        interval = "–".join(f"{100 * v:+.1f}" for v in c["diff_ci95"])
        rows.append(
            (name, diff, interval, f"{c['mcnemar_p']:.2g}", f"{c['only_system_right']} / {c['only_other_right']}")
        )
    return rows


def cross_dataset(evaluate: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Each system's accuracy (%) on the test split and on every extra test set (``test_sets``), with its
    per-pair accuracies where a set has finer classes (VERITE's true vs out-of-context, ...): column titles and
    (system, cells) rows; none without an extra test set."""
    extra = evaluate.get("test_sets") or {}
    if not extra:
        return [], []
    sets = {"test": evaluate, **extra}
    by_set = {name: dict(metrics_rows(table)) for name, table in sets.items()}
    pairs = {
        name: sorted({p for m in systems.values() for p in (m.get("accuracy_by_pair") or {})})
        for name, systems in by_set.items()
    }
    columns = [c for name in sets for c in (name, *(f"{name}: {p}" for p in pairs[name]))]
    rows = []
    for system, _ in metrics_rows(evaluate):
        cells = []
        for name in sets:
            m = by_set[name].get(system, {})
            cells.append(_fmt(m.get("accuracy")))
            cells += [_fmt((m.get("accuracy_by_pair") or {}).get(p)) for p in pairs[name]]
        rows.append((system, cells))
    return columns, rows


COMPACT_HEAD = "| model | accuracy (%) | 95 % CI | AUROC | ECE raw -> calibrated on val |"


def compact_table(evaluate: dict, split: dict | None = None) -> str:
    """One table for the README's first screen: each system's test accuracy with its Wilson interval, AUROC and
    ECE before and after the val-fitted score calibration, then the labelling cost (the full tables: docs/demo.md,
    ``markdown_table``)."""
    extra = sorted(evaluate.get("test_sets") or {})
    head = COMPACT_HEAD + "".join(f" on {s} (%) |" for s in extra) + "\n|---|" + "---:|" * (4 + len(extra)) + "\n"
    rows = []
    for name, m in metrics_rows(evaluate):
        ece = (
            "-"
            if m.get("ece") is None
            else f"{m['ece']:.3f} -> " + ("-" if m.get("ece_calibrated") is None else f"{m['ece_calibrated']:.3f}")
        )
        auroc = "-" if m.get("auroc") is None else f"{m['auroc']:.3f}"
        cells = [_fmt(m.get("accuracy")), _fmt(m.get("accuracy_ci95")), auroc, ece]
        cells += [_fmt(dict(metrics_rows(evaluate["test_sets"][s])).get(name, {}).get("accuracy")) for s in extra]
        rows.append(f"| {name} | " + " | ".join(cells) + " |\n")
    table = head + "".join(rows)
    if split:
        table += (
            f"\nGold labels read: {split['gold_labels_read']} of {split['n_items']} training items "
            f"({_fmt(split['labelled_fraction'])}%).\n"
        )
    return table


def markdown_table(evaluate: dict, split: dict | None = None) -> str:
    """The metrics table (accuracies in %, with the Wilson 95 % interval) as Markdown, then Stage 2 against the
    others (paired), then the labelling cost."""
    head = "| model | " + " | ".join(TABLE_KEYS) + " |\n|---|" + "---:|" * len(TABLE_KEYS) + "\n"
    body = "".join(
        f"| {n} | " + " | ".join(_fmt(m.get(k)) for k in TABLE_KEYS) + " |\n" for n, m in metrics_rows(evaluate)
    )
    if rows := comparison_rows(evaluate):
        body += (
            "\n| comparison | accuracy difference | paired bootstrap 95 % CI | McNemar exact p | only Stage 2 right / "
            "only the other right |\n|---|---:|---:|---:|---:|\n"
        )
        body += "".join("| " + " | ".join(r) + " |\n" for r in rows)
    if rows := ranking_rows(evaluate):
        body += (
            "\n| scores of | "
            + " | ".join(RANKING_COLUMNS.values())
            + " |\n|---|"
            + "---:|" * len(RANKING_COLUMNS)
            + "\n"
        )
        body += "".join(f"| {n} | " + " | ".join(cells) + " |\n" for n, cells in rows)
    columns, rows = cross_dataset(evaluate)
    if rows:
        body += "\n| accuracy (%) on | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns) + "\n"
        body += "".join(f"| {n} | " + " | ".join(cells) + " |\n" for n, cells in rows)
    if split:
        rule = split.get("selection", {}).get("rule", "conflict")
        body += (
            f"\nGold labels used: {split['gold_labels_read']} of {split['n_items']} training items "
            f"({_fmt(split['labelled_fraction'])}%, selection rule {rule}).\n"
        )
    return head + body


def _svg_curve(
    points: list[tuple[float, float]],
    width: int = 360,
    height: int = 160,
    x_name: str = "step",
    unit_square: bool = False,
) -> str:
    """A line through ``points``; ``unit_square`` draws both axes over [0, 1] (ROC, reliability), with the
    diagonal for reference."""
    if not points:
        return "<p>(no data)</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = (0.0, 1.0, 0.0, 1.0) if unit_square else (min(xs), max(xs), min(ys), max(ys))
    sx = (width - 50) / ((x1 - x0) or 1)
    sy = (height - 30) / ((y1 - y0) or 1)
    path = " ".join(f"{40 + (x - x0) * sx:.1f},{height - 20 - (y - y0) * sy:.1f}" for x, y in points)
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect width="{width}" height="{height}" fill="white" stroke="#ccc"/>'
        + (
            f'<line x1="40" y1="{height - 20}" x2="{width - 10}" y2="10" stroke="#bbb" stroke-dasharray="3"/>'
            if unit_square
            else ""
        )
        + f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{path}"/>'
        f'<text x="2" y="14" font-size="10">{y1:.3g}</text>'
        f'<text x="2" y="{height - 20}" font-size="10">{y0:.3g}</text>'
        f'<text x="40" y="{height - 4}" font-size="10">{x_name} {x0:g}</text>'
        f'<text x="{width - 70}" y="{height - 4}" font-size="10">{x_name} {x1:g}</text></svg>'
    )


def _confusion_table(path: Path) -> str:
    df = pl.read_csv(path)
    table = df.group_by("actual", "predicted").len().sort("actual", "predicted")
    cols = sorted(set(table["predicted"]))
    cells = {(a, p): n for a, p, n in table.iter_rows()}
    rows = "".join(
        f"<tr><th>{html.escape(a)}</th>" + "".join(f"<td>{cells.get((a, p), 0)}</td>" for p in cols) + "</tr>"
        for a in sorted(set(table["actual"]))
    )
    head = "<tr><th>actual \\ predicted</th>" + "".join(f"<th>{html.escape(p)}</th>" for p in cols) + "</tr>"
    return f"<table>{head}{rows}</table>"


def html_report(root: str | Path = ".") -> str:
    """The whole report as one HTML page (renders offline)."""
    root = Path(root)
    evaluate = json.loads((root / "metrics/evaluate.json").read_text())
    split_file = root / "metrics/split.json"
    split = json.loads(split_file.read_text()) if split_file.exists() else None
    parts = [
        "<html><head><meta charset='utf-8'><title>mmkd report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>",
        "<h1>mmkd report</h1><h2>Test metrics</h2><table><tr><th>model</th>",
    ]
    parts.append("".join(f"<th>{k}</th>" for k in TABLE_KEYS) + "</tr>")
    for name, m in metrics_rows(evaluate):
        parts.append(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_fmt(m.get(k))}</td>" for k in TABLE_KEYS))
    parts.append("</table><p>Accuracies and macro-F1 in %; accuracy_ci95 is the Wilson 95 % interval.</p>")
    if rows := comparison_rows(evaluate):
        parts.append(
            "<h2>Stage 2 against the others (same test items)</h2><table><tr><th>comparison</th><th>accuracy "
            "difference</th><th>paired bootstrap 95 % CI</th><th>McNemar exact p</th><th>only Stage 2 right / only "
            "the other right</th></tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    if rows := ranking_rows(evaluate):
        parts.append(
            "<h2>Scores: ranking and calibration (test)</h2><table><tr><th>system</th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in RANKING_COLUMNS.values())
            + "</tr>"
        )
        parts += [
            f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for n, cells in rows
        ]
        parts.append(
            "</table><p>score = P(falsified) at the answer's label slot; falsified is the positive class. ECE: 10 "
            "equal-width bins. The threshold is chosen on val (best accuracy, or a false-positive budget).</p>"
        )
    columns, rows = cross_dataset(evaluate)
    if rows:
        parts.append(
            "<h2>Accuracy on each test set (%)</h2><table><tr><th>system</th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            + "</tr>"
        )
        parts += [
            f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for n, cells in rows
        ]
        parts.append("</table>")
    if split:
        parts.append(f"<p>Gold labels used: {split['gold_labels_read']} of {split['n_items']} training items.</p>")
    parts.append("<h2>Training loss</h2>")
    for title, d in CURVES.items():
        tsv = root / d / "plots/metrics/loss.tsv"
        if tsv.exists():
            df = pl.read_csv(tsv, separator="\t")
            parts.append(f"<h3>{title}</h3>" + _svg_curve(list(zip(df["step"], df["loss"], strict=True))))
    parts.append("<h2>Confusion matrices (test)</h2>")
    confusion = root / "metrics/confusion"
    for csv in sorted(confusion.rglob("*.csv")):
        name = str(csv.relative_to(confusion).with_suffix(""))
        parts.append(f"<h3>{html.escape(name)}</h3>" + _confusion_table(csv))
    for title, folder, x, y in (
        ("ROC curves (test; x: false-positive rate, y: true-positive rate)", "metrics/roc", "fpr", "tpr"),
        (
            "Reliability diagrams (test; x: mean score of a bin, y: fraction falsified in it)",
            "metrics/reliability",
            "mean_score",
            "fraction_falsified",
        ),
    ):
        curves = sorted((root / folder).rglob("*.csv")) if (root / folder).is_dir() else []
        if curves:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        for csv in curves:
            df = pl.read_csv(csv)
            name = str(csv.relative_to(root / folder).with_suffix(""))
            points = list(zip(df[x], df[y], strict=True)) if len(df) else []
            parts.append(f"<h3>{html.escape(name)}</h3>" + _svg_curve(points, x_name=x, unit_square=True))
    parts.append("</body></html>")
    return "\n".join(parts)
