"""Waiting for .ci/run's optional installs (tests/optional_installs.py): a test that needs vLLM, Label Studio or
Chromium waits while the install runs beside the tests, then runs, or skips with the install's reason; outside CI
it waits for nothing."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from optional_installs import STATUS_ENV, install_problem, skip_unless_installed


@pytest.fixture
def status(tmp_path: Path, monkeypatch) -> Path:
    """A status folder, as .ci/run makes, with the install of ``demo`` running (this process stands in for it)."""
    monkeypatch.setenv(STATUS_ENV, str(tmp_path))
    (tmp_path / "demo.pid").write_text(str(os.getpid()))
    return tmp_path


def report_later(path: Path, text: str, delay: float) -> threading.Thread:
    """Write ``path`` after ``delay`` seconds, from a thread (an install finishing while a test waits)."""

    def write():
        time.sleep(delay)
        path.write_text(text)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_test_waits_for_the_install_and_then_runs(status):
    started = time.monotonic()
    writer = report_later(status / "demo.ready", "", delay=0.6)
    assert install_problem("demo", timeout=30, poll=0.05) is None
    assert time.monotonic() - started >= 0.6  # it waited for the report
    writer.join()


def test_a_failed_install_is_the_skip_reason(status):
    writer = report_later(status / "demo.failed", "pip failed: no matching distribution", delay=0.3)
    with pytest.raises(pytest.skip.Exception, match="could not install demo: pip failed: no matching distribution"):
        skip_unless_installed("demo")  # its default timeout and poll: the report comes within one poll
    writer.join()


def test_an_install_that_ended_without_reporting_is_not_waited_for(status):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (status / "demo.pid").write_text(ended.stdout)  # a process that has exited (and was reaped)
    started = time.monotonic()
    problem = install_problem("demo", timeout=30, poll=0.05)
    assert problem is not None and "ended without reporting" in problem
    assert time.monotonic() - started < 5


def test_a_slow_install_is_waited_for_until_the_timeout(status):
    problem = install_problem("demo", timeout=0.3, poll=0.05)
    assert problem is not None and "still running after 0.3 s" in problem and str(status) in problem


def test_outside_ci_nothing_is_waited_for(status, monkeypatch):
    assert install_problem("other", timeout=30) is None  # CI did not start this one: looked for as before
    monkeypatch.delenv(STATUS_ENV)
    started = time.monotonic()
    assert install_problem("demo", timeout=30) is None  # a developer's run: as before
    assert time.monotonic() - started < 1
