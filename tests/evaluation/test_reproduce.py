"""`mmkd reproduce` on a real git repository holding the committed run (dvc.yaml, dvc.lock, metrics/): identical
runs pass; a teacher answer that changed is named at its label stage and fails; a trained student is judged by its
test accuracy within the seed spread."""

import json
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import yaml

from mmkd.cli import main
from mmkd.evaluation.reproduce import SEED_SPREAD, experiment_snapshot, git_snapshot

ROOT = Path(__file__).resolve().parents[2]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The run committed at this checkout's HEAD (its dvc.yaml, dvc.lock and metrics), committed in a new repo."""
    archive = subprocess.run(
        ["git", "archive", "HEAD", "dvc.yaml", "dvc.lock", "metrics"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the committed run")
    return tmp_path


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def set_out_hash(repo: Path, stage: str, out: str, value: str) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (entry,) = [o for o in lock["stages"][stage]["outs"] if o["path"] == out]
    entry["md5"] = value
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def reproduce(repo: Path, capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["reproduce", "--repo", str(repo), *args])
    return code, capsys.readouterr().out.splitlines()


def test_identical_metrics_reproduce(repo, capsys):
    code, lines = reproduce(repo, capsys)
    assert code == 0
    assert lines[-1] == "reproduces the committed run exactly"
    assert all(line.endswith(": identical") for line in lines[:-1]) and "evaluate: identical" in lines


def test_a_flipped_teacher_answer_is_named_at_its_label_stage(repo, capsys):
    """One test answer of teacher_llava flipped from right to wrong: its answers' hash changes (label@teacher_llava),
    and so do its test accuracy and the students trained on it. The label stage, exact, is where it diverges."""
    set_out_hash(repo, "label@teacher_llava", "data/answers/teacher_llava", "0" * 32 + ".dir")
    evaluate = repo / "metrics/evaluate.json"
    teacher = json.loads(evaluate.read_text())["teachers"]["teacher_llava"]
    edit_json(evaluate, lambda m: m["teachers"]["teacher_llava"].update(accuracy=teacher["accuracy"] - 0.0025))
    edit_json(evaluate, lambda m: m["stage2"].update(accuracy=m["stage2"]["accuracy"] + 0.01))  # within the spread
    code, lines = reproduce(repo, capsys)
    assert code == 1
    assert "label@teacher_llava: OUTSIDE tolerance (1 values differ)" in lines
    assert lines[-1].startswith("does not reproduce: first outside tolerance at label@teacher_llava: ")
    assert "data/answers/teacher_llava" in lines[-1] and "; exact: OUTSIDE" in lines[-1]
    assert any(
        line.strip().startswith("metrics/evaluate.json:teachers.teacher_llava.accuracy: ")
        and "(by 0.0025); exact: OUTSIDE" in line
        for line in lines
    )
    assert any(f"(by 0.01); tolerance {SEED_SPREAD:g}: within" in line for line in lines)  # stage2


@pytest.mark.parametrize(("moved", "code"), [(0.02, 0), (0.05, 1)])
def test_a_trained_student_is_judged_by_its_accuracy_within_the_seed_spread(repo, capsys, moved, code):
    """Stage 2 retrained elsewhere: its adapter's bytes differ (listed, not judged); its test accuracy moved by
    ``moved``: within the seed spread passes, beyond it fails at evaluate."""
    set_out_hash(repo, "stage2", "models/stage2", "f" * 32 + ".dir")
    edit_json(repo / "metrics/evaluate.json", lambda m: m["stage2"].update(accuracy=m["stage2"]["accuracy"] + moved))
    result, lines = reproduce(repo, capsys)
    assert result == code, lines
    assert lines[0].startswith("world@") and "stage2: within tolerance (1 values differ)" in lines
    if code:
        assert lines[-1].startswith("does not reproduce: first outside tolerance at evaluate: ")
        assert "stage2.accuracy" in lines[-1]
    else:
        assert lines[-1] == "reproduces the committed run within tolerance"


def test_an_experiment_is_read_from_dvc_exp_show(repo):
    """``--exp NAME`` takes its outs and metrics from `dvc exp show --json`: the committed run, shown as an
    experiment, compares equal to itself."""
    committed, _ = git_snapshot(repo)
    show = [
        {
            "rev": "workspace",
            "data": {},
            "experiments": [
                {
                    "revs": [
                        {
                            "name": "seed-1",
                            "rev": "abc1234",
                            "data": {
                                "outs": {p: {"hash": h} for p, h in committed.outs.items()},
                                "metrics": {p: {"data": m} for p, m in committed.metrics.items()},
                            },
                        }
                    ]
                }
            ],
        }
    ]
    assert experiment_snapshot(show, "seed-1") == committed
    with pytest.raises(KeyError, match="no experiment named 'seed-9'"):
        experiment_snapshot(show, "seed-9")
