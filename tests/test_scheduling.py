"""The suite's run order (tests/scheduling.py): what `-n 2` hands out first, what waits for the optional installs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scheduling import OPTIONAL_MARKERS, PIPELINES_FIRST, run_order

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FakeItem:
    """What run_order reads of a pytest item: its node id and its markers."""

    nodeid: str
    markers: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.markers else None


ITEMS = [
    FakeItem("tests/annotation/test_label_studio.py::test_people", {"label_studio"}),
    FakeItem("tests/annotation/test_annotation_pipeline.py::test_stops"),
    FakeItem("tests/annotation/test_annotation_pipeline.py::test_queue"),
    FakeItem("tests/data/test_verite_pipeline.py::test_composes"),
    FakeItem("tests/inference/test_vllm.py::test_answers[llava]", {"vllm"}),
    FakeItem("tests/test_conflict.py::test_budget"),
    FakeItem("tests/test_pipeline_e2e.py::test_first_repro"),
    FakeItem("tests/test_pipeline_e2e.py::test_second_repro"),
    FakeItem("tests/inference/test_vllm.py::test_answers[qwen2_vl]", {"vllm"}),
]


def ids(items) -> list[str]:
    return [item.nodeid for item in items]


def test_in_one_process_only_the_optional_tests_move_to_the_end_vllm_first():
    assert ids(run_order(ITEMS)) == [
        "tests/annotation/test_annotation_pipeline.py::test_stops",
        "tests/annotation/test_annotation_pipeline.py::test_queue",
        "tests/data/test_verite_pipeline.py::test_composes",
        "tests/test_conflict.py::test_budget",
        "tests/test_pipeline_e2e.py::test_first_repro",
        "tests/test_pipeline_e2e.py::test_second_repro",
        "tests/inference/test_vllm.py::test_answers[llava]",
        "tests/inference/test_vllm.py::test_answers[qwen2_vl]",
        "tests/annotation/test_label_studio.py::test_people",
    ]


def test_under_xdist_the_pipeline_modules_come_first_in_file_order_within_each():
    assert ids(run_order(ITEMS, distributed=True)) == [
        "tests/test_pipeline_e2e.py::test_first_repro",
        "tests/test_pipeline_e2e.py::test_second_repro",
        "tests/data/test_verite_pipeline.py::test_composes",
        "tests/annotation/test_annotation_pipeline.py::test_stops",
        "tests/annotation/test_annotation_pipeline.py::test_queue",
        "tests/test_conflict.py::test_budget",
        "tests/inference/test_vllm.py::test_answers[llava]",
        "tests/inference/test_vllm.py::test_answers[qwen2_vl]",
        "tests/annotation/test_label_studio.py::test_people",
    ]


def test_the_named_modules_and_markers_exist():
    """A renamed pipeline module would silently lose its place at the front; a renamed marker, its tests' wait."""
    assert [path for path in PIPELINES_FIRST if not (ROOT / path).is_file()] == []
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert [m for m in OPTIONAL_MARKERS if f'"{m}: ' not in pyproject] == []
    assert "--dist loadfile --no-loadscope-reorder" in pyproject  # else xdist reorders modules by their test count
