"""A stage's user-facing errors are one line on stderr and a non-zero exit, not a traceback (mmkd.console)."""

import subprocess
import sys
import textwrap


def run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env or None
    )


def test_a_user_error_is_its_message_and_exit_status_1():
    result = run(
        """
        from mmkd.console import setup_logging
        from mmkd.schema import SchemaError
        setup_logging()
        raise SchemaError("data/x/train.gold.parquet: 3 of the 4 selected item(s) have no gold label; label them")
        """
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("3 of the 4 selected item(s) have no gold label; label them")


def test_any_other_error_keeps_its_traceback():
    result = run(
        """
        from mmkd.console import setup_logging
        setup_logging()
        raise KeyError("a bug")
        """
    )
    assert result.returncode == 1 and "Traceback" in result.stderr and "KeyError" in result.stderr
