"""Summaries over DVC experiments: mean ± sd of each system's test accuracy over a set of runs (e.g. training
seeds), each paired comparison of ``metrics/evaluate.json`` per run and pooled, and the label-efficiency curve
(test accuracy of the final student against the gold labels it read).

A comparison's claim (``verdict``) is stated only where it ``holds on every seed`` (the difference has the same
sign in every run, over at least two runs) or is ``significant pooled`` (McNemar's exact test on the discordant
items summed over the runs, p < ``ALPHA``, in the direction of the mean difference); otherwise it is ``not shown``.
Pooling sums counts on the same test items, so the runs are not independent samples of items: the pooled test
says whether the seeds together show a difference on *these* items, not on new ones.

Both read ``dvc exp show --json``: a list of baseline revisions, each with ``data`` (``params`` and ``metrics``,
by file) and ``experiments`` (each with ``revs`` and, while queued or running, an ``executor`` state). The runs are
the commits (their committed metrics) and their finished experiments; the ``workspace`` entry is left out unless
named (after ``dvc exp run`` it repeats the last experiment), and so is an experiment that is queued, running or
failed (it shows the metrics its workspace started from) or has no ``metrics/evaluate.json``. Runs with identical
params are the same run (the pipeline is deterministic): each is counted once.
"""

from __future__ import annotations

import html
import json
import math
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mmkd.evaluation.significance import mcnemar_p

EVALUATE, SPLIT = "metrics/evaluate.json", "metrics/split.json"
REFERENCES = ("best_teacher", "baselines/majority_vote", "baselines/full_supervision")  # the curve's flat lines
CURVE_COLUMNS = ("rule", "gold_labels_read", "labelled_fraction", "accuracy", "accuracy_sd", "runs")
ALPHA = 0.05  # the pooled test's level for a claim


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
        revs = [baseline] + [
            rev
            for exp in baseline.get("experiments") or []
            if ((exp.get("executor") or {}).get("state") or "success") == "success"
            for rev in exp.get("revs", [])
        ]  # a queued, running or failed experiment shows the metrics its workspace started from: not its own
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
    # this interpreter's dvc: `mmkd` run from a venv that is not activated has no `dvc` on PATH
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
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


def comparisons(runs: list[Run]) -> list[dict]:
    """Each paired comparison in the runs' ``significance`` (e.g. ``stage2_vs_stage1``), over the runs that have it:
    per run the difference, its McNemar p and discordant counts; the mean ± sd of the differences; the pooled
    McNemar test on the summed discordant counts; and the verdict (module docstring). A comparison named with its
    opponent, ``stage2_vs_best_teacher (teacher_qwen)``, is grouped by the part before the space, the opponent kept
    per run."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        for key, test in (run.evaluate.get("significance") or {}).items():
            name, _, against = key.partition(" (")
            by_name[name].append(
                {
                    "run": run.name,
                    "seed": run.params.get("seed"),
                    "against": against.rstrip(")") or None,
                    "accuracy_diff": test["accuracy_diff"],
                    "mcnemar_p": test["mcnemar_p"],
                    "only_system_right": test["only_system_right"],
                    "only_other_right": test["only_other_right"],
                }
            )
    rows = []
    for name in sorted(by_name):
        per_run = sorted(by_name[name], key=lambda r: (r["seed"] is None, r["seed"] or 0))  # by seed, None last
        diffs = [r["accuracy_diff"] for r in per_run]
        mean, sd = mean_sd(diffs)
        only_system = sum(r["only_system_right"] for r in per_run)
        only_other = sum(r["only_other_right"] for r in per_run)
        pooled_p = mcnemar_p(only_system, only_other)
        every = len(per_run) > 1 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs))
        pooled = pooled_p < ALPHA and (only_system - only_other) * mean > 0
        rows.append(
            {
                "comparison": name,
                "runs": len(per_run),
                "accuracy_diff_mean": mean,
                "accuracy_diff_sd": sd,
                "per_run": per_run,
                "pooled_only_system_right": only_system,
                "pooled_only_other_right": only_other,
                "pooled_mcnemar_p": pooled_p,
                "holds_on_every_seed": every,
                "significant_pooled": pooled,
                "verdict": ("higher" if mean > 0 else "lower") if every or pooled else "not shown",
            }
        )
    return rows


def comparisons_markdown(rows: list[dict]) -> str:
    """The comparisons as a Markdown table: differences in accuracy points, each run's with its McNemar p."""
    lines = [
        "| comparison | difference, mean ± sd (points) | per seed: difference (p) | every seed | pooled: only "
        "system right / only other right, p | verdict |",
        "|---|---:|---|:---:|---:|---|",
    ]
    for row in rows:
        sd = f" ± {100 * row['accuracy_diff_sd']:.1f}" if row["accuracy_diff_sd"] is not None else ""
        per_run = ", ".join(
            ("" if r["seed"] is None else f"s{r['seed']} ") + f"{100 * r['accuracy_diff']:+.1f} ({_p(r['mcnemar_p'])})"
            for r in row["per_run"]
        )
        lines.append(
            f"| {row['comparison']} | {100 * row['accuracy_diff_mean']:+.1f}{sd} | {per_run} | "
            f"{'yes' if row['holds_on_every_seed'] else 'no'} | {row['pooled_only_system_right']} / "
            f"{row['pooled_only_other_right']}, {_p(row['pooled_mcnemar_p'])} | {row['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return f"p {p:.2g}" if p >= 1e-3 else "p < 0.001"


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
    one line per rule with an error bar of ± 1 sd over the seeds at each point that has several, and a dashed
    line per reference."""
    if not points:
        raise ValueError("no runs with Stage-2 metrics and a gold-label count: run the sweep first")
    left, right, top, bottom = 60, 210, 20, 45
    xs = [p["gold_labels_read"] for p in points]
    ys = [p["accuracy"] + k * (p["accuracy_sd"] or 0) for p in points for k in (-1, 1)] + list(references.values())
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
        for p in line:
            if p["accuracy_sd"]:  # an error bar: ± 1 sd, with caps
                x, low, high = (
                    sx(p["gold_labels_read"]),
                    sy(p["accuracy"] - p["accuracy_sd"]),
                    sy(p["accuracy"] + p["accuracy_sd"]),
                )
                out.append(
                    f'<path class="error-bar" d="M{x:.1f},{low:.1f}V{high:.1f}M{x - 4:.1f},{low:.1f}H{x + 4:.1f}'
                    f'M{x - 4:.1f},{high:.1f}H{x + 4:.1f}" stroke="{colour}" fill="none"/>'
                )
        x = width - right + 8
        out.append(
            f'<line x1="{x}" y1="{legend_y - 4}" x2="{x + 22}" y2="{legend_y - 4}" stroke="{colour}" '
            'stroke-width="2"/>'
        )
        out.append(f'<text x="{x + 28}" y="{legend_y}" fill="{colour}">rule: {html.escape(rule)}</text>')
        legend_y += 16
    out.append("</svg>")
    return "\n".join(out) + "\n"
