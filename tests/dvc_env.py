"""Environment and error messages for tests that run real `dvc` / `git` / `mmkd` subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def describe(result: subprocess.CompletedProcess, limit: int = 6000) -> str:
    """The command, its exit status and the tails of its stdout and stderr, for an assertion message."""
    return (
        f"`{' '.join(map(str, result.args))}` exited {result.returncode}\n"
        f"--- stdout (tail) ---\n{result.stdout[-limit:]}\n--- stderr (tail) ---\n{result.stderr[-limit:]}"
    )


def offline_env() -> dict[str, str]:
    """Offline, no analytics, the venv first on PATH (stage cmds run `python`), and a git identity for commits."""
    env = dict(os.environ)
    env.update(
        DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GIT_AUTHOR_NAME="mmkd e2e",
        GIT_AUTHOR_EMAIL="e2e@mmkd.invalid",
        GIT_COMMITTER_NAME="mmkd e2e",
        GIT_COMMITTER_EMAIL="e2e@mmkd.invalid",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env


def run_ok(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a command in ``repo`` in the offline environment; fail the test with its output if it fails."""
    result = subprocess.run(list(args), cwd=repo, capture_output=True, text=True, env=offline_env())
    assert result.returncode == 0, describe(result)
    return result


def dvc_ok(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``repo`` through this interpreter, as ``run_ok``."""
    return run_ok(repo, sys.executable, "-m", "dvc", *args)


def pipeline_repo(root: Path, repo: Path, params: dict) -> Path:
    """``repo`` made a git + DVC repo (no commit) holding dvc.yaml, stages/, src/ and conf/ of the checkout at
    ``root``, with ``params`` (composed by the test) as params.yaml."""
    shutil.copy2(root / "dvc.yaml", repo / "dvc.yaml")
    for folder in ("stages", "src", "conf"):
        shutil.copytree(root / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok(repo, "git", "init", "-q")
    dvc_ok(repo, "init", "-q")
    return repo
