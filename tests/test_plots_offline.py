"""`mmkd plots-offline` makes the real `dvc plots show` write a page with no network dependency."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_env import describe, offline_env


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=repo, capture_output=True, text=True, env=offline_env())
    assert result.returncode == 0, describe(result)
    return result


@pytest.fixture
def plots_repo(tmp_path: Path) -> Path:
    """A git + DVC repo with one loss curve declared as a top-level plot, as dvclive's are in dvc.yaml."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _run(repo, sys.executable, "-m", "dvc", "init", "-q")
    curve = repo / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step\tloss\n" + "".join(f"{i}\t{2.0 / (i + 1):.4f}\n" for i in range(10)))
    (repo / "dvc.yaml").write_text("plots:\n  - dvclive/plots/metrics:\n      x: step\n")
    return repo


def _show(repo: Path, out: str) -> str:
    _run(repo, sys.executable, "-m", "dvc", "plots", "show", "-o", out)
    return (repo / out / "index.html").read_text(encoding="utf-8")


def _external_refs(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']+""", page)


def test_dvc_default_page_needs_a_cdn(plots_repo: Path):
    """The problem being solved, checked on the installed DVC: its own page loads vega from the network."""
    assert _external_refs(_show(plots_repo, "default_plots"))


def test_plots_offline_page_has_no_network_dependency(plots_repo: Path):
    result = _run(plots_repo, sys.executable, "-m", "mmkd.cli", "plots-offline")
    assert "plots.html_template" in result.stdout
    local_config = (plots_repo / ".dvc" / "config.local").read_text()
    assert "html_template = tmp/mmkd_offline_plots.html" in local_config
    assert not (plots_repo / ".dvc" / "config").read_text().count("html_template")  # per clone, not committed

    page = _show(plots_repo, "offline_plots")
    assert _external_refs(page) == []
    assert "window.vegaEmbed" in page  # the libraries are inlined ...
    assert "vegaEmbed('#" in page  # ... and DVC's plot div calls them
    spec = re.search(r"var spec = (\{.*?\});\s*vegaEmbed", page, re.S)
    assert spec and "loss" in json.dumps(json.loads(spec.group(1)))  # the curve's data is in the page


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_plots_offline_scripts_are_classic_scripts_that_parse(plots_repo: Path):
    """Each inline script compiles as a classic (non-module) script, as the browser will run it."""
    _run(plots_repo, sys.executable, "-m", "mmkd.cli", "plots-offline")
    page = _show(plots_repo, "offline_plots")
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, re.S)
    assert len(scripts) >= 2  # the bundle and one plot
    check = "const vm = require('vm'); const s = require('fs').readFileSync(0, 'utf8'); new vm.Script(s);"
    for script in scripts:
        result = subprocess.run(["node", "-e", check], input=script, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]


def test_plots_offline_outside_a_dvc_repo_says_so(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "mmkd.cli", "plots-offline", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        env=offline_env(),
    )
    assert result.returncode != 0
    assert "is not a DVC repository" in result.stderr
