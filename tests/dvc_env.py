"""Environment and error messages for tests that run real `dvc` / `git` / `mmkd` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
