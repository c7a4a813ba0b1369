"""Fixtures of the Label Studio tests (label_studio_server.py): one real Label Studio for the session, and a tiny
repository whose queue ``mmkd annotate export`` wrote, as a team's would be."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from label_studio_server import LabelStudio, LabelStudioUnavailable, find_venv, make_queue_repo, serve


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[LabelStudio]:
    """One Label Studio for the session; skips, with the reason, when it is not installed or does not start."""
    try:
        with serve(find_venv(), tmp_path_factory.mktemp("label-studio")) as server:
            print(f"\nLabel Studio {server.url} answered {server.startup_s:.1f} s after start; log {server.log}")
            yield server
    except LabelStudioUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def queue_repo(tmp_path: Path) -> Path:
    """Items, both teachers' answers, params from conf/ (teachers shown) and the exported queue."""
    return make_queue_repo(tmp_path)
