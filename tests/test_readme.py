"""The README's claims that can drift: its metrics table and its quick-start commands."""

import json
from pathlib import Path

from mmkd.evaluation.report import compact_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_metrics_table_is_the_committed_run():
    evaluate = json.loads((ROOT / "metrics/evaluate.json").read_text())
    split = json.loads((ROOT / "metrics/split.json").read_text())
    table = compact_table(evaluate, split).strip()  # what `mmkd report --compact` prints, labelling cost included
    assert table in README, "README's demo table differs from metrics/evaluate.json; paste `mmkd report --compact`"


def test_quick_start_is_two_commands_matching_ci():
    block = README.split("## Quick start", 1)[1].split("```bash", 3)
    install, tests = block[1].split("```")[0].strip(), block[2].split("```")[0].strip()
    assert install.endswith("dvc repro") and "pip install -e" in install
    assert tests.endswith("python -m pytest -q")
    assert "python -m pytest -q" in (ROOT / ".ci/run").read_text()
