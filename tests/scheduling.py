"""The order the suite runs in (tests/conftest.py applies it): the tests that need an optional install last, and
under pytest-xdist the pipeline modules first. Apart from conftest so that tests/test_scheduling.py can test it."""

from __future__ import annotations

import os

import pytest

# Tests that need an optional component (a server or browser in a venv or package of its own). They run last, so
# that under .ci/run, which installs the components beside the tests, the install has the whole run to finish
# (tests/optional_installs.py); vLLM's first, its module the longest (two server starts).
OPTIONAL_MARKERS = ("vllm", "label_studio")


# Under pytest-xdist (`-n 2`, the README's command; `--dist loadfile` in pyproject.toml sends each module to one
# worker), these modules go first, in this order: each is a serial chain of `dvc` runs (tens of seconds to minutes),
# and started first it runs beside the many short tests the other worker takes. The end-to-end module starts its two
# cold pipelines as it begins (test_pipeline_e2e's ``pipeline``), so its worker waits while they use the cores.
PIPELINES_FIRST = (
    "tests/test_pipeline_e2e.py",
    "tests/data/test_verite_pipeline.py",
    "tests/annotation/test_annotation_pipeline.py",
)


def xdist_worker() -> str | None:
    """This process's pytest-xdist worker id (``gw0``, ...), or None when the session runs in one process."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def run_order(items: list[pytest.Item], *, distributed: bool = False) -> list[pytest.Item]:
    """``items`` with those marked by one of OPTIONAL_MARKERS moved to the end, in that order (the longest module
    first, so that under xdist the other worker takes the shorter ones beside it), and, when ``distributed`` (every
    xdist worker orders the same collection the same way), the PIPELINES_FIRST modules moved to the front in that
    order. Each part keeps its order, so the tests of one module, tests/test_pipeline_e2e.py's included, still run in
    file order among themselves."""

    def key(item: pytest.Item) -> tuple[int, int]:
        optional = next((1 + i for i, m in enumerate(OPTIONAL_MARKERS) if item.get_closest_marker(m)), 0)
        module = item.nodeid.split("::", 1)[0]
        first = PIPELINES_FIRST.index(module) if distributed and module in PIPELINES_FIRST else len(PIPELINES_FIRST)
        return optional, first

    return sorted(items, key=key)  # stable
