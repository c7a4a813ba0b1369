"""Sharing through a DVC remote when things go wrong, on real git + DVC repos in temp dirs with a local remote:
`mmkd push` against a remote that refuses part of the objects, and `mmkd apply` of a teammate's pushed experiment."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from dvc_env import describe, offline_env
from dvc_env import dvc_ok as dvc
from dvc_env import run_ok as run

# A trivial stage with a cached output and a `cache: false` metric, like mmkd's stages: run-cache entries list both.
DVC_YAML = """\
stages:
  make:
    cmd: python -c "import yaml; x = yaml.safe_load(open('params.yaml'))['x'];
      open('out.txt', 'w').write(open('data/a.txt').read() * x); open('metric.json', 'w').write(str(x))"
    deps: [data]
    params: [x]
    outs: [out.txt]
    metrics:
      - metric.json:
          cache: false
"""


def mmkd(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmkd.cli", *args], cwd=repo, capture_output=True, text=True, env=offline_env()
    )


def make_repo(repo: Path, remote: Path) -> Path:
    """A committed git + DVC repo: a tracked folder of 12 small files, one reproduced stage, ``remote`` as default."""
    repo.mkdir()
    run(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    (repo / "data").mkdir()
    for i in range(12):
        (repo / "data" / f"{chr(97 + i)}.txt").write_text(f"file {i}\n")
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    dvc(repo, "add", "-q", "data")
    dvc(repo, "remote", "add", "-q", "-d", "storage", str(remote))  # absolute: `dvc exp push` misreads relative
    dvc(repo, "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "a run")
    return repo


def objects(cache: Path) -> set[str]:
    """The md5 names (``ab/cdef...``) of the objects under a DVC cache or local remote."""
    return {f"{p.parent.name}/{p.name}" for p in (cache / "files/md5").glob("*/*")}


def test_push_that_fails_part_way_names_count_cause_and_fix_pushes_no_entry_then_resumes(tmp_path):
    """A push cut off part-way leaves no run-cache entry on the remote; once the remote takes the files again, the
    same command completes, and a teammate gets the stage from the run cache."""
    remote = tmp_path / "remote"
    repo = make_repo(tmp_path / "repo", remote)
    local = objects(repo / ".dvc/cache")
    blocked = {name.split("/")[0] for name in sorted(local)[::2]}
    # A dangling link where an object folder belongs: DVC finds none of its objects and their uploads fail, as on a
    # remote that refuses them part-way (a read-only folder would not do: tests may run as root)
    (remote / "files/md5").mkdir(parents=True)
    for prefix in blocked:
        (remote / "files/md5" / prefix).symlink_to(tmp_path / "nowhere")
    expected_failures = sum(name.split("/")[0] in blocked for name in local)

    failed = mmkd(repo, "push")
    assert failed.returncode != 0, describe(failed)
    message = failed.stderr.strip()
    assert message.startswith(f"mmkd push: {expected_failures} files failed to upload; first cause: "), message
    assert "run `mmkd push` again" in message and "Traceback" not in failed.stderr + failed.stdout, message
    assert len(failed.stderr.splitlines()) <= 3, failed.stderr
    assert not (remote / "runs").exists(), "a run-cache entry went up before its files"
    assert objects(remote) == {name for name in local if name.split("/")[0] not in blocked}

    for prefix in blocked:
        (remote / "files/md5" / prefix).unlink()
    resumed = mmkd(repo, "push")
    assert resumed.returncode == 0, describe(resumed)
    assert objects(remote) == local
    entries = list((remote / "runs").glob("*/*/*"))
    assert len(entries) == 1, entries
    metric = hashlib.md5(b"1").hexdigest()
    assert f"{metric[:2]}/{metric[2:]}" in objects(remote), "the `cache: false` metric an entry lists"

    # with dvc.lock not matching (here: removed), a teammate's `dvc repro --pull` takes the stage from the run cache
    clone = tmp_path / "teammate"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    (clone / "dvc.lock").unlink()
    restored = dvc(clone, "repro", "--pull")
    assert "Stage 'make' is cached - skipping run" in restored.stdout, describe(restored)
    assert (clone / "out.txt").read_text() == "file 0\n"
    assert (clone / "metric.json").read_text() == "1"


def teammate_experiment(tmp_path: Path, no_cache: bool = False) -> Path:
    """The origin repo after a teammate's clone ran experiment ``three`` (x=3) and `dvc exp push`ed it to origin."""
    origin = make_repo(tmp_path / "origin", tmp_path / "remote")
    dvc(origin, "push", "-q")
    mate = tmp_path / "mate"
    run(tmp_path, "git", "clone", "-q", str(origin), str(mate))
    dvc(mate, "pull", "-q")
    dvc(mate, "exp", "run", "-q", "-n", "three", "-S", "x=3")
    dvc(mate, "exp", "push", *(["--no-cache"] if no_cache else []), "origin", "three")
    return origin


def test_apply_of_a_teammates_pushed_experiment_leaves_every_output_present(tmp_path):
    origin = teammate_experiment(tmp_path)
    applied = mmkd(origin, "apply", "three")
    assert applied.returncode == 0, describe(applied)
    assert applied.stdout.startswith("applied three (1 files fetched first"), applied.stdout
    assert (origin / "params.yaml").read_text().strip() == "x: 3"
    assert (origin / "out.txt").read_text() == "file 0\n" * 3
    assert (origin / "metric.json").read_text() == "3"
    assert len(list((origin / "data").iterdir())) == 12
    assert "modified" not in dvc(origin, "status").stdout


def test_apply_refuses_before_touching_the_workspace_when_the_outputs_were_not_pushed(tmp_path):
    origin = teammate_experiment(tmp_path, no_cache=True)
    refused = mmkd(origin, "apply", "three")
    assert refused.returncode != 0, describe(refused)
    assert "the workspace is unchanged" in refused.stderr and "dvc exp push origin three" in refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert (origin / "params.yaml").read_text().strip() == "x: 1"
    assert (origin / "out.txt").read_text() == "file 0\n"
