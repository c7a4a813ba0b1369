"""Summaries over experiments (``mmkd summarize``) and the label-efficiency curve (``mmkd label-curve``), from
records in the format of ``dvc exp show --json`` (DVC 3.x)."""

import json
import math

import pytest

from mmkd.cli import main
from mmkd.evaluation.experiments import (
    comparisons,
    comparisons_markdown,
    curve_svg,
    label_efficiency,
    runs_from_show,
    summarize,
)


def evaluate(stage2: float, teachers=(0.70, 0.78), majority=0.72, full=None) -> dict:
    out = {
        "stage1": {"accuracy": stage2 - 0.01},
        "stage2": {"accuracy": stage2},
        "teachers": {f"t{i}": {"accuracy": a} for i, a in enumerate(teachers)},
        "baselines": {"majority_vote": {"accuracy": majority}},
        "significance": {"stage2_vs_stage1": compared(0.01, 2, 1, 1.0)},
    }
    if full is not None:
        out["baselines"]["full_supervision"] = {"accuracy": full}
    return out


def rev(name, params, metrics: dict | None, read=None, n=600):
    files = {"metrics/evaluate.json": {"data": metrics} if metrics else {"error": {"type": "FileNotFoundError"}}}
    if read is not None:
        files["metrics/split.json"] = {"data": {"gold_labels_read": read, "labelled_fraction": read / n}}
    return {"rev": name, "name": name, "data": {"params": {"params.yaml": {"data": params}}, "metrics": files}}


def show(*experiments, workspace=None, commit=None) -> list[dict]:
    """``dvc exp show --json``: the workspace, then the commit with its experiments."""
    head = commit or rev("main", {"seed": 0, "split": {"select": {"rule": "conflict", "budget": None}}}, None)
    return [
        workspace or rev("workspace", {"seed": 99}, evaluate(0.99)),
        head | {"experiments": [{"revs": [e], "name": e["name"]} for e in experiments]},
    ]


def params(seed, rule="conflict", budget=None):
    return {"seed": seed, "split": {"select": {"rule": rule, "budget": budget, "seed": 0}}}


def test_summary_is_mean_and_sd_per_system_over_the_runs():
    records = show(
        rev("s0", params(0), evaluate(0.80), read=90),
        rev("s1", params(1), evaluate(0.84), read=90),
        rev("s2", params(2), evaluate(0.82), read=90),
        rev("queued", params(3), None),  # no metrics yet: left out
        rev("same-as-s0", params(0), evaluate(0.80), read=90),  # identical params: the same run, counted once
    )
    rows = {r["system"]: r for r in summarize(runs_from_show(records))}
    assert rows["stage2"]["accuracy_mean"] == pytest.approx(0.82) and rows["stage2"]["runs"] == 3
    assert rows["stage2"]["accuracy_sd"] == pytest.approx(0.02)  # sample sd of 0.80, 0.84, 0.82
    assert rows["best_teacher"]["accuracy_mean"] == pytest.approx(0.78)
    assert rows["baselines/majority_vote"]["accuracy_sd"] == pytest.approx(0.0)
    assert rows["gold labels read"]["labelled_fraction"] == pytest.approx(0.15)
    assert "workspace" not in {r.name for r in runs_from_show(records)}  # it repeats the last experiment
    only = summarize(runs_from_show(records, ["s1"]))
    assert {r["system"]: r for r in only}["stage2"]["accuracy_sd"] is None  # one run: no sd


def test_the_label_efficiency_curve_averages_seeds_per_rule_and_budget():
    records = show(
        rev("c-s0", params(0, "conflict"), evaluate(0.80, full=0.9), read=90),
        rev("c-s1", params(1, "conflict"), evaluate(0.82, full=0.9), read=90),
        rev("r30-s0", params(0, "random", 30), evaluate(0.74, full=0.9), read=30),
        rev("r90-s0", params(0, "random", 90), evaluate(0.77, full=0.9), read=90),
        rev("a-s0", params(0, "all"), evaluate(0.88, full=0.9), read=600),
        # same rule, budget and seed with more baselines: the same Stage 2, not a second point of the average
        rev("c-s0-full", params(0, "conflict") | {"baselines": "full"}, evaluate(0.80, full=0.9), read=90),
    )
    points, references = label_efficiency(runs_from_show(records))
    got = {(p["rule"], p["gold_labels_read"]): (round(p["accuracy"], 6), p["runs"]) for p in points}
    assert got == {
        ("all", 600): (0.88, 1),
        ("conflict", 90): (0.81, 2),
        ("random", 30): (0.74, 1),
        ("random", 90): (0.77, 1),
    }
    assert references == pytest.approx(
        {"best_teacher": 0.78, "baselines/majority_vote": 0.72, "baselines/full_supervision": 0.9}
    )
    svg = curve_svg(points, references)
    assert (
        svg.startswith("<svg") and svg.count("<polyline") == 3 and svg.count("stroke-dasharray") == 6
    )  # a line and its legend sample each
    assert "rule: conflict" in svg and "best_teacher 78.0%" in svg


def test_the_commands_write_the_table_the_csv_and_the_figure(tmp_path, capsys):
    records = show(
        rev("c-s0", params(0), evaluate(0.80), read=90),
        rev("r-s0", params(0, "random", 90), evaluate(0.76), read=90),
    )
    (tmp_path / "show.json").write_text(json.dumps(records))
    assert main(["summarize", "--show-json", str(tmp_path / "show.json")]) == 0
    table = capsys.readouterr().out
    assert "| stage2 | 78.0 ± 2.8 | 2 |" in table  # mean of 80 and 76, sd 2.83
    csv, svg = tmp_path / "curve.csv", tmp_path / "curve.svg"
    args = ["label-curve", "--show-json", str(tmp_path / "show.json"), "--csv", str(csv), "--svg", str(svg)]
    assert main(args) == 0
    lines = csv.read_text().splitlines()
    assert lines[0] == "rule,gold_labels_read,labelled_fraction,accuracy,accuracy_sd,runs"
    assert lines[1:] == ["conflict,90,0.15,0.8,,1", "random,90,0.15,0.76,,1"]
    assert svg.read_text().count("<circle") == 2
    assert not math.isnan(json.loads(capsys.readouterr().out)["references"]["best_teacher"])


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "show.json").write_text(json.dumps(show(rev("queued", params(0), None))))
    with pytest.raises(SystemExit, match="no experiment with metrics/evaluate.json"):
        main(["summarize", "--show-json", str(tmp_path / "show.json")])


def compared(diff: float, only_system: int, only_other: int, p: float) -> dict:
    """One entry of ``metrics/evaluate.json``'s ``significance``."""
    return {"accuracy_diff": diff, "mcnemar_p": p, "only_system_right": only_system, "only_other_right": only_other}


def with_tests(stage2: float, tests: dict) -> dict:
    return evaluate(stage2) | {"significance": tests}


def test_comparisons_are_reported_per_seed_and_pooled_with_a_verdict():
    records = show(
        rev("s0", params(0), with_tests(0.80, {
            "stage2_vs_stage1": compared(0.02, 8, 0, 0.0078125),
            "stage2_vs_best_teacher (t1)": compared(0.01, 5, 1, 0.21875),
            "stage2_vs_random_budget": compared(0.03, 12, 0, 0.00048828125),
        }), read=90),
        rev("s1", params(1), with_tests(0.81, {
            "stage2_vs_stage1": compared(0.01, 3, 1, 0.625),
            "stage2_vs_best_teacher (t1)": compared(-0.005, 2, 4, 0.6875),
            "stage2_vs_random_budget": compared(-0.0025, 1, 2, 1.0),
        }), read=90),
        rev("s2", params(2), with_tests(0.82, {
            "stage2_vs_stage1": compared(0.005, 2, 0, 0.5),
            "stage2_vs_best_teacher (t0)": compared(0.0, 0, 0, 1.0),
            "stage2_vs_random_budget": compared(0.02, 8, 0, 0.0078125),
        }), read=90),
    )  # fmt: skip
    rows = {r["comparison"]: r for r in comparisons(runs_from_show(records))}
    assert set(rows) == {"stage2_vs_stage1", "stage2_vs_best_teacher", "stage2_vs_random_budget"}

    every = rows["stage2_vs_stage1"]  # higher on every seed, and pooled
    assert every["accuracy_diff_mean"] == pytest.approx(0.035 / 3)
    assert every["accuracy_diff_sd"] == pytest.approx(math.sqrt(0.00011666666 / 2))  # squared deviations' sum / 2
    # pooled discordant items: 13 only Stage 2 right, 1 only Stage 1 right; p = 2 (1 + 14) / 2^14
    assert (every["pooled_only_system_right"], every["pooled_only_other_right"]) == (13, 1)
    assert every["pooled_mcnemar_p"] == pytest.approx(30 / 16384)
    assert every["holds_on_every_seed"] and every["significant_pooled"] and every["verdict"] == "higher"
    assert [r["seed"] for r in every["per_run"]] == [0, 1, 2]

    neither = rows["stage2_vs_best_teacher"]  # one seed each way: 7 / 5 pooled, p = 2 * 1586 / 4096
    assert neither["pooled_mcnemar_p"] == pytest.approx(3172 / 4096)
    assert not neither["holds_on_every_seed"] and not neither["significant_pooled"]
    assert neither["verdict"] == "not shown"
    assert [r["against"] for r in neither["per_run"]] == ["t1", "t1", "t0"]  # the best teacher of each run

    pooled = rows["stage2_vs_random_budget"]  # lower on one seed, but 21 / 2 pooled: p = 2 (1 + 23 + 253) / 2^23
    assert pooled["pooled_mcnemar_p"] == pytest.approx(554 / 2**23)
    assert not pooled["holds_on_every_seed"] and pooled["significant_pooled"] and pooled["verdict"] == "higher"

    table = comparisons_markdown(list(rows.values()))
    assert "| stage2_vs_stage1 | +1.2 ± 0.8 | s0 +2.0 (p 0.0078), s1 +1.0 (p 0.62), s2 +0.5 (p 0.5) | yes |" in table
    assert "| 7 / 5, p 0.77 | not shown |" in table


def test_one_run_never_holds_on_every_seed():
    records = show(rev("s0", params(0), with_tests(0.80, {"stage2_vs_stage1": compared(0.02, 3, 0, 0.25)})))
    (row,) = comparisons(runs_from_show(records))
    assert row["accuracy_diff_sd"] is None and not row["holds_on_every_seed"] and row["verdict"] == "not shown"


def test_summarize_writes_the_summary_as_a_metrics_file(tmp_path, capsys):
    records = show(
        rev("s0", params(0), with_tests(0.80, {"stage2_vs_stage1": compared(0.02, 8, 0, 0.0078125)}), read=90),
        rev("s1", params(1), with_tests(0.84, {"stage2_vs_stage1": compared(0.01, 3, 1, 0.625)}), read=90),
    )
    (tmp_path / "show.json").write_text(json.dumps(records))
    out = tmp_path / "metrics" / "seeds.json"
    assert main(["summarize", "--show-json", str(tmp_path / "show.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| stage2 | 82.0 ± 2.8 | 2 |" in printed and "| stage2_vs_stage1 | +1.5 ± 0.7 |" in printed
    written = json.loads(out.read_text())
    assert written["runs"] == [{"name": "s0", "seed": 0}, {"name": "s1", "seed": 1}]
    (comparison,) = written["comparisons"]
    assert comparison["pooled_mcnemar_p"] == pytest.approx(2 * 13 / 2**12)  # 11 / 1: 2 (1 + 12) / 2^12
    assert comparison["verdict"] == "higher"  # both seeds higher, and pooled
    assert main(["summarize", "--from", str(out)]) == 0  # the committed file prints the same tables
    assert capsys.readouterr().out == printed


def test_the_curve_draws_an_error_bar_where_a_point_has_several_seeds():
    records = show(
        rev("c-s0", params(0, "conflict"), evaluate(0.80), read=90),
        rev("c-s1", params(1, "conflict"), evaluate(0.84), read=90),
        rev("r-s0", params(0, "random", 90), evaluate(0.76), read=90),
    )
    points, references = label_efficiency(runs_from_show(records))
    svg = curve_svg(points, references)
    assert svg.count('class="error-bar"') == 1  # the conflict point (two seeds); random has one
    # the bar spans mean ± sd: 0.82 ± 0.0283, inside the drawn range
    assert [p["accuracy_sd"] for p in points] == [pytest.approx(0.04 / math.sqrt(2)), None]


def test_a_running_or_failed_experiment_is_left_out():
    """While an experiment runs, `dvc exp show` lists it with the metrics its workspace started from (the commit's):
    counted, they would pass for another seed's result."""
    records = show(rev("s1", params(1), evaluate(0.84), read=90), rev("s2", params(2), evaluate(0.80), read=90))
    experiments = records[1]["experiments"]
    experiments[1]["executor"] = {"state": "running", "name": "dvc-task"}
    experiments.append({"revs": [rev("s3", params(3), evaluate(0.80))], "name": "s3", "executor": {"state": "failed"}})
    experiments.append(
        {"revs": [rev("s4", params(4), evaluate(0.70))], "name": "s4", "executor": {"state": "success"}}
    )
    assert [r.name for r in runs_from_show(records)] == ["s1", "s4"]
