"""The README's claims that can drift: its results tables and its quick-start commands."""

import json
from pathlib import Path

from mmkd.cli import main
from mmkd.evaluation.report import compact_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEMO = (ROOT / "docs/demo.md").read_text()


def test_readme_results_are_the_committed_seeds_summary(capsys):
    """The README's first tables: the five-seed summary (metrics/seeds.json) as `mmkd summarize` prints it."""
    assert main(["summarize", "--from", str(ROOT / "metrics/seeds.json")]) == 0
    tables = capsys.readouterr().out.strip().split("\n\n")
    assert len(tables) == 2  # the systems, then the comparisons
    for table in tables:
        assert table.strip() in README, (
            "README's results differ from metrics/seeds.json; paste its tables (mmkd "
            "summarize --from metrics/seeds.json)"
        )
    assert README.index(tables[0].strip()) < README.index("## What next")  # the first results a reader meets


def test_demo_doc_holds_the_committed_runs_table():
    evaluate = json.loads((ROOT / "metrics/evaluate.json").read_text())
    split = json.loads((ROOT / "metrics/split.json").read_text())
    table = compact_table(evaluate, split).strip()  # what `mmkd report --compact` prints, labelling cost included
    assert table in DEMO, (
        "docs/demo.md's seed-0 table differs from metrics/evaluate.json; paste `mmkd report --compact`"
    )


def test_quick_start_is_two_commands_matching_ci():
    block = README.split("## Quick start", 1)[1].split("```bash", 3)
    install, tests = block[1].split("```")[0].strip(), block[2].split("```")[0].strip()
    assert install.endswith("dvc repro") and "pip install -e" in install
    assert tests.endswith("python -m pytest -q -n 2")
    assert '"$VENV_PY" -m pytest -q -n 2 ' in (ROOT / ".ci/run").read_text()
