"""The demo's pre-trained models come with the repository (pretrained/demo, git-tracked), as a real user's checkpoints
are downloaded: the default DAG reads them and never retrains them, and they are the bytes dvc.lock records."""

import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml
from dvc.dependency import ParamsDependency
from dvc.repo import Repo
from dvc_data.hashfile.build import build
from dvc_data.hashfile.db import HashFileDB
from dvc_objects.fs.local import LocalFileSystem
from dvc_objects.fs.memory import MemoryFileSystem
from expected_files import DEMO_MODEL_FILES

from mmkd.cli import compose

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = PurePosixPath("pretrained/demo")
MODELS = ("teacher_qwen", "teacher_llava", "teacher_third", "student_base")


def dvc_md5(path: Path) -> str:
    """The hash DVC records for a file or folder (``md5``, ``<md5>.dir`` for a folder), computed by DVC's own code."""
    _, _, obj = build(HashFileDB(MemoryFileSystem(), "/staging"), str(path), LocalFileSystem(), "md5")
    return obj.hash_info.value


def locked_deps(lock: dict) -> dict[str, str]:
    """{dep path: md5} over every stage of a dvc.lock."""
    return {d["path"]: d["md5"] for entry in lock["stages"].values() for d in entry.get("deps", []) if "md5" in d}


def test_the_shipped_models_are_in_git_with_the_files_a_model_needs():
    tracked = subprocess.run(
        ["git", "ls-files", str(SHIPPED)], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for model in MODELS:
        assert {PurePosixPath(p).name for p in tracked if PurePosixPath(p).parent == SHIPPED / model} == (
            DEMO_MODEL_FILES
        ), f"{SHIPPED / model}: not all of it is committed (git add it)"


def test_the_shipped_models_are_the_bytes_the_default_dvc_lock_records():
    """Every shipped model the default run reads (the two teachers' weights, the student base) has, on disk, the
    hash the committed dvc.lock recorded for it: a clone computes the committed results from these very bytes."""
    deps = locked_deps(yaml.safe_load((ROOT / "dvc.lock").read_text()))
    shipped = {p: md5 for p, md5 in deps.items() if SHIPPED in PurePosixPath(p).parents}
    assert {str(SHIPPED / m) for m in ("teacher_qwen", "teacher_llava", "student_base")} <= set(shipped), shipped
    for path, md5 in sorted(shipped.items()):
        assert dvc_md5(ROOT / path) == md5, f"{path} differs from dvc.lock: re-run `dvc repro` or restore it"


def stages_of(overrides: list[str], tmp_path: Path) -> dict:
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(compose(overrides, ROOT / "conf"), sort_keys=False))
    with Repo.init(str(tmp_path), no_scm=True) as repo:
        return {stage.name: stage for stage in repo.index.stages}


def file_deps(stage) -> set[PurePosixPath]:
    return {PurePosixPath(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)}


def test_the_default_dag_reads_the_shipped_models_and_never_retrains_them(tmp_path):
    stages = stages_of([], tmp_path)
    assert not [name for name in stages if name.startswith("bootstrap")]
    assert SHIPPED / "teacher_qwen" in file_deps(stages["label@teacher_qwen"])
    assert SHIPPED / "student_base" in file_deps(stages["stage1"])
    assert not any(SHIPPED in PurePosixPath(o.def_path).parents for s in stages.values() for o in s.outs)


@pytest.mark.parametrize("bootstrap", ["demo", "demo_ci", "demo_three"])
def test_a_bootstrap_config_retrains_them_and_every_demo_model_path_follows(bootstrap, tmp_path):
    """`bootstrap=demo*` trains the models into models/demo, and the teachers and the student base read them there
    (one interpolation, `demo_models`), so their stages depend on the bootstrap stage's output."""
    params = compose([f"bootstrap={bootstrap}", "teachers=demo_three"], ROOT / "conf")
    assert params["demo_models"] == "models/demo"
    assert params["student"]["model"] == "models/demo/student_base"
    assert {t["model"] for t in params["teachers"].values()} == {f"models/demo/{t}" for t in params["teachers"]}
    stages = stages_of([f"bootstrap={bootstrap}"], tmp_path)
    assert PurePosixPath("models/demo") in {PurePosixPath(o.def_path) for o in stages["bootstrap@demo"].outs}
    assert PurePosixPath("models/demo/student_base") in file_deps(stages["stage1"])
