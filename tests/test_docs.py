"""The docs as a specification: the README's size and order, a config reference that lists every param, links that
resolve, and the demo's quoted tables equal to the committed metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mmkd.cli import compose
from mmkd.evaluation.report import markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIG_REFERENCE = DOCS / "config.md"

MAX_README_LINES = 250
README_SECTIONS = [
    "Quick start",
    "What next",
    "Deploying the detector",
    "The method in stages and modules",
    "From the demo to real models",
    "Experiments",
    "Sharing through a remote",
    "Configuration reference",
    "Troubleshooting",
]

PAPER = "data=newsclippings bootstrap=none teachers=paper_local student=paper stage1=paper stage2=paper".split()
# The compositions whose every param the reference must list: the default demo, the paper profile, the server
# teachers, and each option of each group on its own (so a new profile's new key is caught too).
PROFILES = [[], PAPER, ["teachers=vllm"]] + [
    [f"{group.name}={option.stem}"]
    for group in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir())
    for option in sorted(group.glob("*.yaml"))
]


def without_code(text: str) -> str:
    """Markdown text with fenced code blocks and inline code spans removed (neither holds headings or links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def headings(text: str, level: int | None = None) -> list[str]:
    """The ATX headings of a Markdown text (outside code blocks), optionally of one level only."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    found = re.findall(r"^(#{1,6})\s+(.+?)\s*#*\s*$", text, flags=re.M)
    return [title for hashes, title in found if level is None or len(hashes) == level]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file offers (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for title in headings(path.read_text()):
        base = slug(title)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def normalise(path: list[str]) -> str:
    """A param's dotted key with per-teacher, per-group, per-model and per-dataset names as placeholders."""
    p = list(path)
    if p[0] == "teachers" and len(p) > 1:
        p[1] = "<name>"
    if p[0] == "bootstrap" and len(p) > 1:
        p[1] = "<group>"
        if len(p) > 3 and p[2] == "models":
            p[3] = "<model>"
    if p[0] == "data" and len(p) > 2 and p[1] in ("world", "prepare", "prepare_test"):
        p[2] = "<name>"
        if p[1] == "world" and len(p) > 4 and p[3] == "sizes":
            p = p[:4]  # a dict of split sizes: documented as one key
    return ".".join(p)


def leaf_keys(params: dict) -> set[str]:
    """The normalised keys of every leaf of a composed config (an empty dict is a leaf: `bootstrap: {}`)."""
    keys = set()

    def walk(value, path):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, [*path, str(k)])
        else:
            keys.add(normalise(path))

    walk(params, [])
    return keys


def test_readme_is_at_most_250_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail to docs/ (at most {MAX_README_LINES})"


def test_readme_sections_come_in_the_users_order():
    assert headings(README.read_text(), level=2) == README_SECTIONS


@pytest.mark.parametrize("overrides", PROFILES, ids=lambda o: " ".join(o) or "default")
def test_config_reference_lists_every_param(overrides):
    reference = CONFIG_REFERENCE.read_text()
    missing = sorted(k for k in leaf_keys(compose(overrides, ROOT / "conf")) if f"`{k}`" not in reference)
    assert not missing, f"docs/config.md does not document {missing} (composed with {overrides})"


def test_normalise_uses_the_documented_placeholders():
    params = {
        "teachers": {"t": {"batch_size": 1}},
        "bootstrap": {"demo": {"jobs": 2, "models": {"m": {"train": {"max_steps": 3}}}}},
        "data": {"world": {"w": {"sizes": {"train": 4}}}, "prepare": {}},
    }
    assert leaf_keys(params) == {
        "teachers.<name>.batch_size",
        "bootstrap.<group>.jobs",
        "bootstrap.<group>.models.<model>.train.max_steps",
        "data.world.<name>.sizes",
        "data.prepare",
    }


def relative_links(path: Path) -> list[str]:
    """The targets of the Markdown links and images in a file that are not URLs."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(path.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def check_link(source: Path, target: str) -> str | None:
    """None when ``target`` (a path relative to ``source``, with an optional #anchor) resolves, else why not."""
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if not dest.exists():
        return f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = [why for t in relative_links(path) if (why := check_link(path, t))]
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_docs_references_in_code_and_config_resolve():
    """`docs/<page>.md#anchor` in comments and docstrings of conf/, src/, stages/ and benchmarks/ points somewhere."""
    sources = [*(ROOT / "conf").rglob("*.yaml"), *(ROOT / "src").rglob("*.py"), *(ROOT / "stages").glob("*.py")]
    sources += [*(ROOT / "benchmarks").glob("*.py")]
    broken = []
    for source in sources:
        for target in re.findall(r"\bdocs/[\w/.-]*\w\.md(?:#[\w-]+)?", source.read_text()):
            if why := check_link(ROOT / "README.md", target):
                broken.append(f"{source.relative_to(ROOT)}: {why}")
    assert not broken, broken


def test_demo_page_quotes_the_committed_run():
    evaluate = json.loads((ROOT / "metrics/evaluate.json").read_text())
    split = json.loads((ROOT / "metrics/split.json").read_text())
    assert markdown_table(evaluate, split).strip() in (DOCS / "demo.md").read_text(), (
        "docs/demo.md's committed-run table differs from the metrics; paste `mmkd report --markdown`"
    )


def test_required_pages_and_anchors_exist():
    """The anchors that conf/ and the README lean on, and an index for the experiment logs."""
    assert {"the-models", "how-the-settings-were-chosen"} <= anchors(DOCS / "demo.md")
    for page in ("performance.md", "config.md", "experiments/README.md"):
        assert (DOCS / page).is_file(), page
    logs = {p.name for p in (DOCS / "experiments").glob("*.md")} - {"README.md"}
    index = (DOCS / "experiments" / "README.md").read_text()
    assert logs and all(f"]({name})" in index for name in logs), f"docs/experiments/README.md must list {logs}"
