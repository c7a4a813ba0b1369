"""Summaries over DVC experiments: mean ± sd of each system's test accuracy over a set of runs (e.g. training
seeds), and the label-efficiency curve (test accuracy of the final student against the gold labels it read).

Both read ``dvc exp show --json``: a list of baseline revisions, each with ``data`` (``params`` and ``metrics``,
by file) and ``experiments`` (each with ``revs``). The runs are the commits (their committed metrics) and their
experiments; the ``workspace`` entry is left out unless named (after ``dvc exp run`` it repeats the last
experiment), and so is a run without ``metrics/evaluate.json`` (queued, failed). Runs with identical params are the
same run (the pipeline is deterministic): each is counted once.
"""

from __future__ import annotations

import html
import json
import math
import statistics
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EVALUATE, SPLIT = "metrics/evaluate.json", "metrics/split.json"
REFERENCES = ("best_teacher", "baselines/majority_vote", "baselines/full_supervision")  # the curve's flat lines
CURVE_COLUMNS = ("rule", "gold_labels_read", "labelled_fraction", "accuracy", "accuracy_sd", "runs")


@dataclass(frozen=True)
class Run:
    """One experiment (or the workspace): its name, params and the two metric files."""

    name: str
    params: dict
    evaluate: dict
    split: dict


def _file(data: dict, kind: str, path: str) -> dict | None:
    found = (data.get(kind) or {}).get(path) or {}
    return found.get("data")


def runs_from_show(show: list[dict], names: Iterable[str] | None = None) -> list[Run]:
    """The runs in ``dvc exp show --json`` output that have test metrics (only ``names`` when given)."""
    wanted = set(names) if names is not None else None
    found, seen = [], set()
    for baseline in show:
        revs = [baseline] + [rev for exp in baseline.get("experiments") or [] for rev in exp.get("revs", [])]
        for rev in revs:
            name = rev.get("name") or rev.get("rev") or "?"
            data = rev.get("data") or {}
            evaluate = _file(data, "metrics", EVALUATE)
            if evaluate is None or (name not in wanted if wanted is not None else rev.get("rev") == "workspace"):
                continue
            params = _file(data, "params", "params.yaml") or {}
            key = json.dumps(params, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            found.append(Run(name, params, evaluate, _file(data, "metrics", SPLIT) or {}))
    return found


def dvc_exp_show(repo: str | Path = ".", *, all_commits: bool = False) -> list[dict]:
    """``dvc exp show --json`` of ``repo``: the experiments of the current commit, or of every commit."""
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def accuracies(evaluate: dict) -> dict[str, float]:
    """Test accuracy of every system in one ``metrics/evaluate.json``: the student variants, ``teachers/<t>``,
    ``baselines/<b>``, and ``best_teacher`` (the best teacher's accuracy in that run)."""
    out = {k: v["accuracy"] for k, v in evaluate.items() if isinstance(v, dict) and "accuracy" in v}
    for group in ("teachers", "baselines"):
        out |= {f"{group}/{k}": v["accuracy"] for k, v in (evaluate.get(group) or {}).items()}
    teachers = [v["accuracy"] for v in (evaluate.get("teachers") or {}).values()]
    if teachers:
        out["best_teacher"] = max(teachers)
    return out


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(runs: list[Run]) -> list[dict]:
    """One row per system: mean and sd of its test accuracy over ``runs``, and how many runs have it; plus the
    gold labels read (mean) when the runs record them."""
    by_system: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for system, accuracy in accuracies(run.evaluate).items():
            by_system[system].append(accuracy)
    rows = []
    for system in sorted(by_system, key=_system_order):
        mean, sd = mean_sd(by_system[system])
        rows.append({"system": system, "accuracy_mean": mean, "accuracy_sd": sd, "runs": len(by_system[system])})
    read = [r.split["gold_labels_read"] for r in runs if "gold_labels_read" in r.split]
    if read:
        fractions = [r.split["labelled_fraction"] for r in runs if "labelled_fraction" in r.split]
        rows.append(
            {
                "system": "gold labels read",
                "accuracy_mean": None,
                "accuracy_sd": None,
                "runs": len(read),
                "gold_labels_read": statistics.fmean(read),
                "labelled_fraction": statistics.fmean(fractions),
            }
        )
    return rows


def _system_order(name: str) -> tuple[int, str]:
    groups = ("teachers/", "best_teacher", "baselines/", "zero_shot", "stage1", "stage2")
    return next((i for i, g in enumerate(groups) if name.startswith(g)), len(groups)), name


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| system | test accuracy, mean ± sd (%) | runs |", "|---|---:|---:|"]
    for row in rows:
        if row["accuracy_mean"] is None:
            lines.append(
                f"| {row['system']} | {row['gold_labels_read']:.1f} ({100 * row['labelled_fraction']:.1f} % of "
                f"train) | {row['runs']} |"
            )
            continue
        sd = f" ± {100 * row['accuracy_sd']:.1f}" if row["accuracy_sd"] is not None else ""
        lines.append(f"| {row['system']} | {100 * row['accuracy_mean']:.1f}{sd} | {row['runs']} |")
    return "\n".join(lines) + "\n"


def label_efficiency(runs: list[Run]) -> tuple[list[dict], dict[str, float]]:
    """The curve's points (one per selection rule and budget, averaged over the seeds of the runs that share them;
    runs with the same rule, budget and seed are one point) and its reference lines (mean over all runs of
    ``REFERENCES`` that the runs report)."""
    groups: dict[tuple[str, object], list[Run]] = defaultdict(list)
    seen = set()
    for run in runs:
        select = ((run.params.get("split") or {}).get("select")) or {"rule": "conflict", "budget": None}
        key = (select.get("rule", "conflict"), json.dumps(select.get("budget")))
        if (
            "stage2" not in run.evaluate
            or "gold_labels_read" not in run.split
            or (*key, run.params.get("seed")) in seen
        ):
            continue  # a run that only differs elsewhere (e.g. more baselines) has the same Stage 2: counted once
        seen.add((*key, run.params.get("seed")))
        groups[key].append(run)
    points = []
    for (rule, _), members in groups.items():
        mean, sd = mean_sd([r.evaluate["stage2"]["accuracy"] for r in members])
        points.append(
            {
                "rule": rule,
                "gold_labels_read": statistics.fmean(r.split["gold_labels_read"] for r in members),
                "labelled_fraction": statistics.fmean(r.split["labelled_fraction"] for r in members),
                "accuracy": mean,
                "accuracy_sd": sd,
                "runs": len(members),
            }
        )
    points.sort(key=lambda p: (p["rule"], p["gold_labels_read"]))
    references = {}
    for name in REFERENCES:
        values = [accuracies(r.evaluate)[name] for r in runs if name in accuracies(r.evaluate)]
        if values:
            references[name] = statistics.fmean(values)
    return points, references


def curve_csv(points: list[dict]) -> str:
    """The points as CSV (a DVC plot: x gold_labels_read, y accuracy, one line per rule)."""
    rows = [",".join(CURVE_COLUMNS)]
    for p in points:
        rows.append(",".join("" if p[c] is None else (f"{p[c]:.6g}" if isinstance(p[c], float) else str(p[c]))
                             for c in CURVE_COLUMNS))  # fmt: skip
    return "\n".join(rows) + "\n"


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def curve_svg(points: list[dict], references: dict[str, float], *, width: int = 560, height: int = 340) -> str:
    """The label-efficiency plot as a self-contained SVG (renders offline): accuracy against gold labels read,
    one line per rule, and a dashed line per reference."""
    if not points:
        raise ValueError("no runs with Stage-2 metrics and a gold-label count: run the sweep first")
    left, right, top, bottom = 60, 210, 20, 45
    xs = [p["gold_labels_read"] for p in points]
    ys = [p["accuracy"] for p in points] + list(references.values())
    x0, x1 = 0.0, max(xs) * 1.05 or 1.0
    y0, y1 = math.floor(min(ys) * 20) / 20, math.ceil(max(ys) * 20) / 20
    y1 = y1 if y1 > y0 else y0 + 0.05

    def sx(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y):
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{left}" y1="{sy(y0)}" x2="{width - right}" y2="{sy(y0)}" stroke="black"/>',
        f'<line x1="{left}" y1="{sy(y0)}" x2="{left}" y2="{top}" stroke="black"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">'
        "gold labels read (train)</text>",
        f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" '
        'text-anchor="middle">test accuracy of Stage 2</text>',
    ]
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{100 * y:.0f}%</text>')
        x = x0 + (x1 - x0) * i / 5
        out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:.0f}</text>')
    legend_y = top + 10
    for n, (name, value) in enumerate(sorted(references.items())):
        colour = "#555" if n == 0 else ("#999" if n == 1 else "#000")
        dash = ("6,3", "2,3", "8,2,2,2")[n % 3]
        out.append(
            f'<line x1="{left}" y1="{sy(value):.1f}" x2="{width - right}" y2="{sy(value):.1f}" stroke="{colour}" '
            f'stroke-dasharray="{dash}"/>'
        )
        x = width - right + 8
        out.append(
            f'<line x1="{x}" y1="{legend_y - 4}" x2="{x + 22}" y2="{legend_y - 4}" stroke="{colour}" '
            f'stroke-dasharray="{dash}"/>'
        )
        out.append(f'<text x="{x + 28}" y="{legend_y}">{html.escape(name)} {100 * value:.1f}%</text>')
        legend_y += 16
    rules = sorted({p["rule"] for p in points})
    for colour, rule in zip(COLOURS * 3, rules, strict=False):
        line = [p for p in points if p["rule"] == rule]
        path = " ".join(f"{sx(p['gold_labels_read']):.1f},{sy(p['accuracy']):.1f}" for p in line)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        out += [
            f'<circle cx="{sx(p["gold_labels_read"]):.1f}" cy="{sy(p["accuracy"]):.1f}" r="3" fill="{colour}"/>'
            for p in line
        ]
        x = width - right + 8
        out.append(
            f'<line x1="{x}" y1="{legend_y - 4}" x2="{x + 22}" y2="{legend_y - 4}" stroke="{colour}" '
            'stroke-width="2"/>'
        )
        out.append(f'<text x="{x + 28}" y="{legend_y}" fill="{colour}">rule: {html.escape(rule)}</text>')
        legend_y += 16
    out.append("</svg>")
    return "\n".join(out) + "\n"
