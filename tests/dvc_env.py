"""Environment and error messages for tests that run real `dvc` / `git` / `mmkd` subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
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
    # with the folders the checkout tracks that are deps of the DAG: the labels files, the (empty) test-set roots
    for folder in (
        "stages",
        "src",
        "conf",
        "annotation/labels",
        "data/test_sets",
        "data/test_gold",
        "models/baselines",
    ):
        shutil.copytree(root / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok(repo, "git", "init", "-q")
    dvc_ok(repo, "init", "-q")
    return repo


class Background:
    """A command started now in its own process group, its output in ``log``; ``result()`` waits for it. Tests start
    a slow pipeline this way to run it beside other work (the CI machine has 2 cores; one pipeline uses one well)."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, log: Path):
        self.cwd, self.args, self.log = cwd, list(args), log
        with log.open("w") as out:  # a file, not a pipe: nobody reads while it runs
            self.process = subprocess.Popen(
                self.args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def result(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Wait for the command (at most ``timeout`` seconds, then end it and raise TimeoutExpired); its exit status,
        and its output as stdout (stderr went there too)."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(self.args, code, stdout=self.log.read_text(), stderr="")

    def stop(self) -> None:
        """End the command and everything it started, if it still runs (a session that ends early)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait()
