"""A real Label Studio for the annotation tests, used over HTTP as a person's browser uses it, and the tiny
repository whose queue people label there.

Found in its own venv: ``MMKD_LABEL_STUDIO`` (the venv folder, its ``bin/`` or its python; ``.ci/run`` installs
it, beside the tests, which wait for it: tests/optional_installs.py), else ``~/.cache/mmkd/label-studio-1.23.2``.
Started on 127.0.0.1 (it binds 0.0.0.0 unless told), offline (no version check, analytics or Sentry), in a temporary
data folder with SQLite.

Authentication: Label Studio 1.23 turns legacy API tokens off, so each person signs up through the web form and
keeps the session cookie; API calls carry it with the CSRF token in ``X-CSRFToken``, as the web app does.

Migrating a new SQLite database takes from 40 s to minutes on 2 cores, so it is done once per venv, into
``<venv>/mmkd-empty-db/``, and copied for each run. ``python tests/annotation/label_studio_server.py`` makes it
ahead (``.ci/run`` does, after the install).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from PIL import Image

from mmkd.cli import compose
from mmkd.schema import answers_frame, items_frame

REPO = Path(__file__).resolve().parents[2]
VERSION = "1.23.2"
DEFAULT_VENV = Path.home() / ".cache" / "mmkd" / f"label-studio-{VERSION}"
ENV_VAR = "MMKD_LABEL_STUDIO"
MIGRATE_TIMEOUT = 900  # seconds; 40 s on an idle 2-core machine, 3 min with the cores shared
START_TIMEOUT = 180  # seconds, from the migrated database; 5-20 s measured
SERVING = re.compile(r"Starting development server at (http://\S+?)/?$", re.MULTILINE)


class LabelStudioUnavailable(RuntimeError):
    """Label Studio is not installed, or did not start: the tests that need it skip with this reason."""


def find_venv(wait: bool = True) -> Path:
    """The venv Label Studio is installed in (``MMKD_LABEL_STUDIO``, else the default); raises when absent.

    With ``wait``, under ``.ci/run`` it first waits for the install running beside the tests, and raises with the
    reason when that failed; the install itself, which runs this file, does not wait for itself."""
    if wait:
        from optional_installs import install_problem  # tests/ is on the path under pytest, not for the __main__

        problem = install_problem("label-studio")
        if problem:
            raise LabelStudioUnavailable(problem)
    given = os.environ.get(ENV_VAR)
    path = Path(given) if given else DEFAULT_VENV
    venv = path.parent.parent if path.is_file() else path.parent if path.name == "bin" else path
    if not (venv / "bin" / "label-studio").is_file():
        raise LabelStudioUnavailable(
            f"no Label Studio at {venv} ({'from ' + ENV_VAR if given else 'the default; set ' + ENV_VAR}); "
            f"install it: python -m venv {venv} && {venv}/bin/pip install label-studio=={VERSION} (.ci/run does)"
        )
    return venv


def offline_env(data_dir: Path) -> dict[str, str]:
    """The environment that keeps Label Studio off the network and inside ``data_dir``."""
    return os.environ | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LATEST_VERSION_CHECK": "false",  # else it asks pypi.org at every start
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "DISABLE_SIGNUP_WITHOUT_LINK": "false",
    }


def empty_database(venv: Path) -> Path:
    """A migrated database with no user or project, made once per venv (any ``label-studio`` command migrates)."""
    cached = venv / "mmkd-empty-db" / "label_studio.sqlite3"
    if cached.is_file():
        return cached
    work = Path(tempfile.mkdtemp(prefix="migrate-", dir=venv))
    try:
        command = [str(venv / "bin" / "label-studio"), "version", "--data-dir", str(work)]
        done = subprocess.run(
            command, env=offline_env(work), capture_output=True, text=True, timeout=MIGRATE_TIMEOUT, check=False
        )
        if done.returncode != 0 or not (work / "label_studio.sqlite3").is_file():
            raise LabelStudioUnavailable(f"`{' '.join(command)}` failed: {(done.stdout + done.stderr)[-2000:]}")
        cached.parent.mkdir(exist_ok=True)
        os.replace(work / "label_studio.sqlite3", cached)  # atomic: a half-migrated copy is never used
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cached


TEACHERS = ("teacher_a", "teacher_b")
# Every train item is a conflict (teacher_a says falsified, teacher_b pristine), the gap shrinking from t0 to t2,
# so the queue is t0, t1, t2, then the evaluation sample of test (one of s0, s1); val has no sample.
ITEMS = {"train": ["t0", "t1", "t2"], "val": ["v0"], "test": ["s0", "s1"]}
SCORES = {"teacher_a": [0.9, 0.8, 0.7], "teacher_b": [0.1, 0.2, 0.3]}
IMAGE_SIZE = (96, 64)


def colour(item: str) -> tuple[int, int, int]:
    """Each item's image is one flat colour, so a page can be checked for the right picture."""
    n = sum(map(ord, item))
    return (n * 37 % 256, n * 91 % 256, n * 53 % 256)


def rationale(teacher: str, item: str) -> str:
    """The rationale a teacher gave for an item (unique, so a page can be searched for it)."""
    return f"{teacher} explains item {item}"


def run_mmkd(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the mmkd command line in ``repo``, as a person would; its output is in the assertion if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mmkd.cli", *args], cwd=repo, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"mmkd {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def make_queue_repo(root: Path) -> Path:
    """A repository with items, both teachers' answers, params composed from conf/ (teachers shown to people),
    and the queue ``mmkd annotate export`` wrote into ``annotation/queue/``."""
    posts = root / "data" / "posts"
    (posts / "images").mkdir(parents=True)
    for split, ids in ITEMS.items():
        for i in ids:
            Image.new("RGB", IMAGE_SIZE, colour(i)).save(posts / "images" / f"{i}.png")
        rows = [{"id": i, "image_path": f"images/{i}.png", "caption": f"caption of {i}"} for i in ids]
        items_frame(rows).write_parquet(posts / f"{split}.parquet")
        for teacher in TEACHERS:
            answers = [
                {
                    "id": i,
                    "source": teacher,
                    "label": "falsified" if teacher == "teacher_a" else "pristine",
                    "rationale": rationale(teacher, i),
                    "raw_text": "",
                    "status": "ok",
                    "prompt_version": "v1",
                    "score": SCORES[teacher][n % 3],
                }
                for n, i in enumerate(ids)
            ]
            out = root / "data" / "answers" / teacher / f"{split}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            answers_frame(answers).write_parquet(out)
    params = compose([], REPO / "conf")
    params["data"]["dir"] = "data/posts"
    params["teacher_names"] = list(TEACHERS)
    params["split"]["select"] = {"rule": "conflict", "budget": None, "seed": 0}
    params["annotation"] |= {"show_teachers": True, "budget": None, "eval_sample": {"val": 0, "test": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_mmkd(root, "annotate", "export")
    return root


@dataclass
class LabelStudio:
    """A running Label Studio: its URL, its log, and how long it took to answer."""

    url: str
    log: Path
    startup_s: float

    def person(self, email: str, password: str = "labelling-is-work-42") -> Person:
        """Sign ``email`` up through the web form (or log in, if already signed up), as a browser does."""
        session = requests.Session()
        for form in ("/user/signup/", "/user/login/"):
            session.get(self.url + form, timeout=60).raise_for_status()
            session.post(
                self.url + form,
                data={"csrfmiddlewaretoken": session.cookies["csrftoken"], "email": email, "password": password},
                headers={"Referer": self.url + form},
                timeout=60,
            )
            me = session.get(self.url + "/api/current-user/whoami", timeout=60)
            if me.ok:
                session.headers.update({"X-CSRFToken": session.cookies["csrftoken"], "Referer": self.url + "/"})
                return Person(self.url, session, me.json()["id"], email)
        raise AssertionError(f"{email} could neither sign up nor log in to {self.url}; see {self.log}")


@dataclass
class Person:
    """One logged-in person: the REST calls the web app makes for them."""

    url: str
    session: requests.Session
    id: int
    email: str

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        """One API call; a refusal is an assertion that shows Label Studio's answer."""
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        assert response.ok, f"{method} {path} as {self.email}: {response.status_code} {response.text[:1000]}"
        return response

    def create_project(self, title: str, label_config: str) -> int:
        """A project with this labelling interface; its id."""
        return self.call("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()["id"]

    def import_tasks(self, project: int, tasks_file: Path) -> int:
        """Upload a tasks file, as the import dialog does; how many tasks it made."""
        files = {"file": (tasks_file.name, tasks_file.read_bytes(), "application/json")}
        return self.call("POST", f"/api/projects/{project}/import", files=files).json()["task_count"]

    def task_ids(self, project: int) -> dict[str, int]:
        """mmkd's item id -> Label Studio's task id."""
        tasks = self.call("GET", "/api/tasks", params={"project": project, "page_size": 1000}).json()["tasks"]
        return {t["data"]["mmkd_id"]: t["id"] for t in tasks}

    def submit(self, project: int, task: int, choice: str | None) -> dict:
        """Answer a task with one choice, or skip it (``None``: the Skip button, a cancelled annotation)."""
        result = [] if choice is None else [choice_result(choice)]
        body = {"result": result, "was_cancelled": choice is None, "lead_time": 4.2, "project": project}
        return self.call("POST", f"/api/tasks/{task}/annotations/", params={"project": project}, json=body).json()

    def export(self, project: int) -> list:
        """The project's JSON export, every task with its annotations (the Export button's JSON)."""
        params = {"exportType": "JSON", "download_all_tasks": "true"}
        return json.loads(self.call("GET", f"/api/projects/{project}/export", params=params).content)


def choice_result(choice: str) -> dict:
    """One region of the answer, as the labelling interface writes it for mmkd's Choices tag."""
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}


@contextlib.contextmanager
def serve(venv: Path, work_dir: Path) -> Iterator[LabelStudio]:
    """Run Label Studio on 127.0.0.1 with its data in ``work_dir`` until the block ends (its process group)."""
    # tests/ is on the path under pytest; the __main__ below starts no server
    from fault_server import free_port, stop_group

    data_dir = work_dir / "label-studio-data"
    data_dir.mkdir(parents=True)
    shutil.copy(empty_database(venv), data_dir / "label_studio.sqlite3")
    log = work_dir / "label-studio.log"
    # Port 0 is not accepted; it moves off a taken port by itself, so the URL is read from its log.
    command = [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    command += ["--port", str(free_port()), "--data-dir", str(data_dir)]
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, env=offline_env(data_dir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = wait_until_serving(proc, log)
        yield LabelStudio(url, log, time.perf_counter() - started)
    finally:
        stop_group(proc, timeout=20)


def wait_until_serving(proc: subprocess.Popen, log: Path) -> str:
    """The server's URL once ``/health`` answers; raises, with the log's tail, if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabelStudioUnavailable(f"label-studio exited ({proc.returncode}): {log.read_text()[-2000:]}")
        found = SERVING.search(log.read_text())
        if found:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(found.group(1) + "/health", timeout=5).ok:
                    return found.group(1)
        time.sleep(0.5)
    raise LabelStudioUnavailable(f"label-studio did not answer in {START_TIMEOUT} s: {log.read_text()[-2000:]}")


if __name__ == "__main__":  # make the migrated empty database ahead, so that the tests start in seconds
    try:
        print(f"Label Studio's empty database: {empty_database(find_venv(wait=False))}")
    except LabelStudioUnavailable as exc:
        sys.exit(f"label_studio_server: {exc}")
