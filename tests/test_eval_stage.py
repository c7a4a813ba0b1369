"""The `evaluate` stage's checks of its inputs, run before it loads a model (stages/eval.py)."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from mmkd import paths

ROOT = Path(__file__).resolve().parents[1]


def test_the_stage_stops_before_any_answer_when_a_test_set_is_missing(tmp_path, monkeypatch):
    """data.test_sets names a set that has items but no gold, and one with nothing: `evaluate` names both and the
    fix before it loads a model (it would otherwise answer the whole test split first)."""
    params = {
        "student": {"model": "nowhere"},
        "evaluate": {},
        "calibration": {"max_fpr": None},
        "data": {"dir": "data/world", "test_sets": ["half", "verite"]},
        "teacher_names": ["t"],
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    for path in (paths.test_set_items("half"), paths.test_set_answers("t", "half")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    spec = importlib.util.spec_from_file_location("eval_stage", ROOT / "stages/eval.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(SystemExit) as stop:
        stage.main()
    lines = str(stop.value).splitlines()
    assert lines[0] == f"evaluate: data.test_sets: 'half' has no {paths.test_set_gold('half')}; " + (
        "prepare it (a data.prepare_test.half entry, or world@demo for the demo's ood) and run `dvc repro`, or "
        "remove 'half' from data.test_sets"
    )
    assert [line.split(" has no ")[1].split(";")[0] for line in lines[1:]] == [
        str(paths.test_set_items("verite")),
        str(paths.test_set_gold("verite")),
        str(paths.test_set_answers("t", "verite")),
    ]
