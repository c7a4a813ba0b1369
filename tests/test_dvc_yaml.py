"""Static checks of dvc.yaml, resolved by DVC against the committed params.yaml (nothing runs).

The house rules (see STYLE.md): gold labels reach only the stages that must read them, every stage lists its own
script as a dependency, and the params a stage declares are params that exist.
"""

from __future__ import annotations

import ast
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml
from dvc.dependency import ParamsDependency
from dvc.repo import Repo

from mmkd import paths
from mmkd.cli import compose

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STAGES = {"stage1", "stage2", "baseline", "supervised"}  # each chooses its adapter's threshold on val
GOLD_READERS = {  # which stages read which split's gold labels; nothing else downstream of the data reads any
    "train": {"split"},  # the selected (conflict) items' gold only
    "val": {*TRAINING_STAGES, "evaluate"},  # thresholds: each adapter's after training, zero-shot's and teachers'
    "test": {"evaluate"},
}
WORLD_READERS = {"bootstrap"}  # pre-trains on the separate bootstrap split, whose gold it needs: reads the world dir
DATA_STAGES = {"world", "prepare"}  # write data.dir: the demo world, or real data (one of them per config)


@pytest.fixture(scope="module")
def stages() -> dict[str, object]:
    """Every stage of dvc.yaml, foreach expanded, by name (``label@teacher_qwen``)."""
    with Repo(str(ROOT), config={"core": {"no_scm": True}}) as repo:  # reads dvc.yaml only; no git needed
        return {stage.addressing: stage for stage in repo.index.stages}


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def file_deps(stage) -> list[PurePosixPath]:
    return [PurePosixPath(dep.def_path) for dep in stage.deps if not isinstance(dep, ParamsDependency)]


def test_each_split_gold_is_read_only_by_its_stages(stages):
    """Test labels are read by `evaluate` alone (so no threshold or model can be chosen on them); val labels by the
    stages that choose thresholds; train labels by `split`."""
    readers: dict[str, set[str]] = {}
    for name, stage in stages.items():
        for p in file_deps(stage):
            if p.suffixes[-2:] == [".gold", ".parquet"]:
                readers.setdefault(p.name.split(".")[0], set()).add(name.split("@")[0])
    assert readers == GOLD_READERS


def test_only_bootstrap_depends_on_the_whole_world(params, tmp_path):
    """A dependency on the data folder (or above it) hides its gold files from the check above. (The default DAG
    uses the shipped demo models; ``bootstrap=demo`` adds the stage that retrains them.)"""
    stages = stages_for(["bootstrap=demo"], tmp_path)
    world = PurePosixPath(params["data"]["dir"])
    readers = {
        name.split("@")[0]
        for name, stage in stages.items()
        if name.split("@")[0] not in DATA_STAGES and any(world == p or p in world.parents for p in file_deps(stage))
    }
    assert readers == WORLD_READERS


def test_extra_test_sets_keep_their_gold_apart_and_only_evaluate_reads_it(stages, params):
    """An extra test set's items and images (data/test_sets) are read by labelling and evaluate; its gold labels
    (data/test_gold) by evaluate alone, and no stage depends on a folder above both."""
    gold, items = PurePosixPath(paths.TEST_GOLD), PurePosixPath(paths.TEST_SETS)
    readers = {
        name.split("@")[0]
        for name, stage in stages.items()
        if any(gold == p or p in gold.parents for p in file_deps(stage))
    }
    assert readers == {"evaluate"}
    labelling = {n for n, s in stages.items() if n.startswith("label@") and items in file_deps(s)}
    assert labelling == {f"label@{t}" for t in params["teacher_names"]}
    assert not any(p in gold.parents and p in items.parents for s in stages.values() for p in file_deps(s))


@pytest.mark.parametrize(
    ("overrides", "writer"),
    [
        ([], "world@demo"),
        (["data=demo_ci", "bootstrap=demo_ci"], "world@demo"),
        (["data=newsclippings", "bootstrap=none"], "prepare@newsclippings"),
    ],
)
def test_exactly_one_stage_writes_the_data(tmp_path, overrides, writer):
    """Whatever the data config, one stage (a `world` or a `prepare` foreach entry) writes data.dir."""
    params = compose(overrides, ROOT / "conf")
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with Repo.init(str(tmp_path), no_scm=True) as repo:
        found = {stage.name: stage for stage in repo.index.stages}
    data_dir = PurePosixPath(params["data"]["dir"])
    writers = [name for name, stage in found.items() if any(PurePosixPath(o.def_path) == data_dir for o in stage.outs)]
    assert writers == [writer]
    assert {name.split("@")[0] for name in found} & DATA_STAGES == {writer.split("@")[0]}


def test_every_stage_lists_its_own_script(stages):
    for name, stage in stages.items():
        scripts = [PurePosixPath(word) for word in shlex.split(stage.cmd) if word.endswith(".py")]
        assert scripts, f"stage {name}: no script in cmd {stage.cmd!r}"
        for script in scripts:
            assert script in file_deps(stage), f"stage {name}: {script} is run but not in deps"


# Files a module loads by path or by entry point at run time, which no import statement shows.
LOADED_AT_RUN_TIME = {
    "src/mmkd/evaluation/metrics.py": ["src/mmkd/evaluation/modules/ooc_accuracy/ooc_accuracy.py"],  # evaluate.load
}


def module_file(name: str) -> Path | None:
    """The file of module ``mmkd.x.y`` under src/, or None for a name that is not a module (a function, a class)."""
    base = ROOT.joinpath("src", *name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def mmkd_imports(path: Path) -> set[Path]:
    """The mmkd module files that ``path`` imports anywhere (inside functions too), with their packages."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    files = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != "mmkd":
            continue
        files |= {f for i in range(2, len(parts) + 1) if (f := module_file(".".join(parts[:i]))) is not None}
    return files


def import_closure(script: Path) -> set[str]:
    """Every file under src/ that running ``script`` can execute: imports, entry-point plugins, files loaded by
    path."""
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("entry-points", {})
    plugins = {
        "src/mmkd/modeling.py": [  # load_model runs the mmkd.processors plugins
            str(module_file(target.split(":")[0]).relative_to(ROOT))
            for target in entry_points.get("mmkd.processors", {}).values()
        ]
    }
    seen: set[Path] = set()
    todo = [script]
    while todo:
        current = todo.pop()
        found = mmkd_imports(current)
        rel = str(current.relative_to(ROOT))
        found |= {ROOT / p for p in plugins.get(rel, []) + LOADED_AT_RUN_TIME.get(rel, [])}
        todo += sorted(found - seen)
        seen |= found
    return {str(PurePosixPath(p.relative_to(ROOT))) for p in seen}


def source_deps(stage) -> set[str]:
    """The stage's deps under src/, directories expanded to the files in them."""
    files = set()
    for dep in file_deps(stage):
        if dep.parts[0] != "src":
            continue
        path = ROOT / dep
        found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        files |= {str(PurePosixPath(p.relative_to(ROOT))) for p in found}
    return files


def stages_for(overrides: list[str], tmp_path: Path) -> dict[str, object]:
    """The stages of dvc.yaml resolved against the params that ``overrides`` compose to."""
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(compose(overrides, ROOT / "conf"), sort_keys=False))
    with Repo.init(str(tmp_path), no_scm=True) as repo:
        return {stage.name: stage for stage in repo.index.stages}


@pytest.mark.parametrize("overrides", [[], ["data=newsclippings", "bootstrap=none", "teachers=vllm"]])
def test_every_stage_depends_on_exactly_the_code_it_runs(overrides, tmp_path):
    """A change to any module a stage runs must re-run it, and a module it never runs must not (STYLE.md)."""
    stages = stages_for(overrides, tmp_path)
    assert ("prepare@newsclippings" in stages) == bool(overrides), sorted(stages)
    for name, stage in stages.items():
        scripts = [ROOT / word for word in shlex.split(stage.cmd) if word.endswith(".py")]
        needed = set().union(*(import_closure(s) for s in scripts))
        declared = source_deps(stage)
        assert not needed - declared, f"stage {name}: runs {sorted(needed - declared)} but does not depend on them"
        assert not declared - needed, f"stage {name}: depends on {sorted(declared - needed)} but never runs them"


@pytest.mark.parametrize("overrides", [[], ["data=newsclippings", "bootstrap=none", "teachers=vllm"]])
def test_labelling_code_is_a_dependency_of_labelling_only(overrides, tmp_path):
    """Editing the server client, the teacher registry or the label stage's logic (src/mmkd/labelling) must re-run
    labelling alone: no training, selection or evaluation stage may depend on any file there."""
    labelling_only = {str(PurePosixPath(p.relative_to(ROOT))) for p in (ROOT / "src/mmkd/labelling").rglob("*.py")}
    assert "src/mmkd/labelling/openai_compat.py" in labelling_only or any("openai" in f for f in labelling_only)
    stages = stages_for(overrides, tmp_path)
    for name, stage in stages.items():
        touched = source_deps(stage) & labelling_only
        assert name.startswith("label@") or not touched, f"stage {name} depends on labelling code {sorted(touched)}"
        if name.startswith("label@"):
            assert touched, f"{name} must depend on the labelling code it runs"


def test_stage_outputs_are_the_paths_the_library_defines(stages, params, tmp_path):
    """dvc.yaml and mmkd.paths spell each output path; they must agree, or DVC would track a folder nobody writes."""
    outs = {name: {PurePosixPath(o.def_path) for o in stage.outs} for name, stage in stages.items()}
    retrain = stages_for(["bootstrap=demo"], tmp_path)["bootstrap@demo"]  # not in the default DAG
    assert {PurePosixPath(o.def_path) for o in retrain.outs} == {
        PurePosixPath(p) for p in paths.bootstrap_dirs("demo")
    }
    want = {
        "split": {paths.SPLIT, paths.BASELINE_SPLITS, paths.metrics_file("split")},
        "stage1": {paths.STAGE1_ADAPTER, paths.DVCLIVE / "stage1"},
        "stage2": set(paths.stage2_dirs()),
        **{f"baseline@{b}": set(paths.stage2_dirs(b)) for b in paths.STAGE2_BASELINES},
        **{f"supervised@{b}": set(paths.baseline_dirs(b)) for b in params["baselines"]["supervised"]},
        "evaluate": {
            paths.PREDICTIONS,
            paths.CONFUSION,
            paths.ROC,
            paths.RELIABILITY,
            paths.metrics_file("evaluate"),
        },
        "world@demo": {
            params["data"]["dir"],
            paths.TEST_SETS / "ood",
            paths.TEST_GOLD / "ood",
            paths.metrics_file("world"),
        },
    }
    for teacher in params["teacher_names"]:
        answers = {paths.answers_file(teacher, split).parent for split in paths.LABELLED_SPLITS}
        want[f"label@{teacher}"] = answers | {paths.metrics_file(f"teachers/{teacher}")}
    for name, expected in want.items():
        assert outs[name] == {PurePosixPath(p) for p in expected}, name
    for baseline in paths.STAGE2_BASELINES:  # each baseline trains on its own split tables, inside split's outs
        assert paths.split_tables(baseline)[1].parent.parent == paths.BASELINE_SPLITS


def test_source_deps_exist(stages):
    for name, stage in stages.items():
        for path in file_deps(stage):
            if path.parts[0] in ("src", "stages"):
                assert (ROOT / path).exists(), f"stage {name}: dependency {path} does not exist"


def test_declared_params_exist(stages, params):
    for name, stage in stages.items():
        declared = [key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in dep.params]
        assert declared, f"stage {name} declares no params"
        for key in declared:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: param {key!r} not in params.yaml"
                node = node[part]


def test_the_committed_params_are_the_composed_conf(params):
    """`dvc repro` reads params.yaml as committed; it must be what conf/ composes to (`mmkd compose` writes it)."""
    assert params == compose([], ROOT / "conf"), "params.yaml is stale: run `mmkd compose` and commit it"


def test_the_default_demo_has_two_teachers_and_a_gold_budget():
    """The default is the paper's setting: two teachers (every conflict is a 1-1 split, so Stage 2 has work to do),
    and gold labels on at most 15 % of the train items."""
    params = compose([], ROOT / "conf")
    assert params == compose(["bootstrap=none", "teachers=demo", "stage1=demo"], ROOT / "conf")  # shipped models
    assert params["teacher_names"] == ["teacher_qwen", "teacher_llava"]
    assert params["split"]["select"] == {"rule": "conflict", "budget": 0.15, "seed": 0}


def test_the_three_teacher_demo_labels_with_the_third_it_bootstraps(tmp_path):
    """`bootstrap=demo_three teachers=demo_three`: a third teacher is trained and labels, each kind of negative is in
    the training data of two of the three teachers, the third starts from teacher_qwen's weights, and its label
    stage depends on the bootstrap stage's output."""
    params = compose(["bootstrap=demo_three", "teachers=demo_three", "stage1=demo_three"], ROOT / "conf")
    models = params["bootstrap"]["demo"]["models"]
    teachers = {name: m for name, m in models.items() if m["task"] == "teacher"}
    assert (
        set(teachers)
        == set(params["teachers"])
        == set(params["teacher_names"])
        == {
            "teacher_qwen",
            "teacher_llava",
            "teacher_third",
        }
    )
    seen_by = {
        kind: sorted(n for n, m in teachers.items() if kind in m["sees"]) for kind in ("colour", "shape", "place")
    }
    assert all(len(names) == 2 for names in seen_by.values()), seen_by
    assert teachers["teacher_third"]["init_from"] == "teacher_qwen"
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with Repo.init(str(tmp_path), no_scm=True) as repo:
        found = {stage.name: stage for stage in repo.index.stages}
    label = found["label@teacher_third"]
    bootstrap_outs = {PurePosixPath(o.def_path) for o in found["bootstrap@demo"].outs}
    weights = PurePosixPath(params["teachers"]["teacher_third"]["weights"])
    assert any(out in weights.parents for out in bootstrap_outs)
    assert weights in file_deps(label)
