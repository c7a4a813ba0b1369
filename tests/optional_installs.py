"""Waiting for an optional test component (vLLM, Label Studio, Chromium) that ``.ci/run`` installs while the tests
run beside it.

``.ci/run`` starts the three installs in the background and runs pytest at once, with ``MMKD_OPTIONAL_STATUS``
naming a folder where each install reports under its component's name (``vllm``, ``label-studio``, ``chromium``):

- ``<name>.pid``: the install was started, in that process;
- ``<name>.ready``: it is installed;
- ``<name>.failed``: it could not be installed; the file's text says why.

The tests that need a component run last (``tests/conftest.py``) and ask ``install_problem(name)`` before they
look for it: while the install runs, it waits (printing nothing). Without ``MMKD_OPTIONAL_STATUS`` (a developer's
run), or without a ``<name>.pid`` in that folder, nothing is waited for: each test finds its component as before.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

STATUS_ENV = "MMKD_OPTIONAL_STATUS"
# Seconds. The installs take about 6.5 min on a brand-new machine; .ci/run gives pip 20 min before it gives up, so
# a slow mirror ends in the install's own reason, not in this timeout.
WAIT_TIMEOUT = 25 * 60
POLL_S = 2.0


def reported(folder: Path, name: str) -> tuple[bool, str | None]:
    """(whether the install of ``name`` has reported, the reason it failed or None when it is ready)."""
    if (folder / f"{name}.ready").is_file():
        return True, None
    failed = folder / f"{name}.failed"
    if failed.is_file():
        why = failed.read_text(errors="replace").strip() or "no reason given"
        return True, f".ci/run could not install {name}: {why} (its log is in .ci/run's output)"
    return False, None


def install_running(folder: Path, name: str) -> bool:
    """Whether the process named in ``<name>.pid`` is still alive."""
    try:
        pid = int((folder / f"{name}.pid").read_text().strip())
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, ValueError):  # no file, not a number, or no such process
        return False
    return True


def install_problem(name: str, *, timeout: float = WAIT_TIMEOUT, poll: float = POLL_S) -> str | None:
    """Why the component ``name`` cannot be used, or None when it can be looked for as usual.

    Under ``.ci/run`` (``MMKD_OPTIONAL_STATUS`` set, with a ``<name>.pid`` there), waits until the install reports,
    or its process ends, or ``timeout`` seconds pass; else returns None at once."""
    given = os.environ.get(STATUS_ENV)
    if not given or not (Path(given) / f"{name}.pid").is_file():
        return None
    folder = Path(given)
    deadline = time.monotonic() + timeout
    while True:
        done, problem = reported(folder, name)
        if done:
            return problem
        if not install_running(folder, name):
            done, problem = reported(folder, name)  # it may have reported just before it ended
            if done:
                return problem
            return f".ci/run's install of {name} ended without reporting (see .ci/run's output; {STATUS_ENV}={folder})"
        if time.monotonic() >= deadline:
            return (
                f".ci/run's install of {name} was still running after {timeout:g} s (see .ci/run's output for its"
                f" log; {STATUS_ENV}={folder})"
            )
        time.sleep(poll)


def skip_unless_installed(name: str) -> None:
    """Skip the calling test, with the reason, when ``install_problem(name)`` names one."""
    problem = install_problem(name)
    if problem:
        pytest.skip(problem)
