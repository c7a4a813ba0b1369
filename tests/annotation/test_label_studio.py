"""mmkd's queue through a real Label Studio and back: the project is made from mmkd's label config, mmkd's tasks
are imported, two people answer (disagreeing on one item, one skipping another) and the project is exported, all
through the REST API with the session cookie a browser holds; then ``mmkd annotate import`` reads the export.

Opt-out: without Label Studio's venv (``MMKD_LABEL_STUDIO``, see label_studio_server.py) the tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml
from label_studio_server import LabelStudioUnavailable, find_venv, run_mmkd

from mmkd.annotation.labels import read_label_rows, resolve

pytestmark = [pytest.mark.label_studio, pytest.mark.slow]


def queued(repo: Path) -> list[dict]:
    return [json.loads(line) for line in (repo / "annotation" / "queue" / "queue.jsonl").read_text().splitlines()]


def outside_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_under_ci_a_failed_install_is_the_reason_given(tmp_path, monkeypatch):
    """The session fixture skips with what find_venv raises: under .ci/run, the failed install's own reason."""
    (tmp_path / "label-studio.pid").write_text(str(os.getpid()))
    (tmp_path / "label-studio.failed").write_text("pip failed")
    monkeypatch.setenv("MMKD_OPTIONAL_STATUS", str(tmp_path))
    with pytest.raises(LabelStudioUnavailable, match="could not install label-studio: pip failed"):
        find_venv()


def test_label_studio_listens_on_loopback_only(label_studio):
    assert label_studio.url.startswith("http://127.0.0.1:")
    port = int(label_studio.url.rsplit(":", 1)[1])
    outside = outside_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback to try")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((outside, port), timeout=5):
        pass


def test_people_label_the_queue_in_label_studio_and_the_import_takes_exactly_their_answers(label_studio, queue_repo):
    queue_dir = queue_repo / "annotation" / "queue"
    rows = queued(queue_repo)
    test_item = rows[-1]["id"]
    assert [(r["id"], r["purpose"]) for r in rows] == [
        ("t0", "selection"),
        ("t1", "selection"),
        ("t2", "selection"),
        (test_item, "evaluation"),
    ]
    params = yaml.safe_load((queue_repo / "params.yaml").read_text())
    # The choice people click for each of mmkd's labels, as the label config names it.
    choice = {label: name for name, label in params["annotation"]["label_studio_choices"]}  # [[name, label], ...]
    ann, bob = label_studio.person("ann@example.org"), label_studio.person("bob@example.org")
    project = ann.create_project("mmkd conflicts", (queue_dir / "label_config.xml").read_text())
    assert ann.import_tasks(project, queue_dir / "tasks.json") == 4
    tasks = ann.task_ids(project)
    assert set(tasks) == {r["id"] for r in rows}

    answers = {  # (ann's choice, bob's choice); None: skipped (Label Studio's Skip button)
        "t0": (choice["falsified"], choice["falsified"]),
        "t1": (choice["falsified"], choice["pristine"]),  # they disagree
        "t2": (choice["pristine"], None),  # bob skips it
    }
    for item, (by_ann, by_bob) in answers.items():
        ann.submit(project, tasks[item], by_ann)
        bob.submit(project, tasks[item], by_bob)
    ann.submit(project, tasks[test_item], choice["pristine"])
    export = ann.export(project)
    (queue_repo / "export.json").write_text(json.dumps(export))
    assert {t["data"]["mmkd_id"]: len(t["annotations"]) for t in export} == {"t0": 2, "t1": 2, "t2": 2, test_item: 1}

    done = run_mmkd(queue_repo, "annotate", "import", "export.json")
    name = {ann.id: f"label-studio-user-{ann.id}", bob.id: f"label-studio-user-{bob.id}"}
    assert f"item 't2': skipped or cancelled by {name[bob.id]}; not imported" in done.stdout
    assert "annotators tie on ['t1']: not used until one more judgement" in done.stdout

    labels = queue_repo / "annotation" / "labels"
    train = read_label_rows(labels / "train.jsonl")
    assert sorted((r["id"], r["label"], r["annotator"]) for r in train) == [
        ("t0", "falsified", name[ann.id]),
        ("t0", "falsified", name[bob.id]),
        ("t1", "falsified", name[ann.id]),
        ("t1", "pristine", name[bob.id]),
        ("t2", "pristine", name[ann.id]),
    ]
    assert {r["origin"] for r in train} == {"ls"} and all(r["time"] for r in train)
    resolution = resolve(train)
    assert resolution.gold.to_dicts() == [
        {"id": "t0", "gold_label": "falsified"},
        {"id": "t2", "gold_label": "pristine"},
    ]
    assert resolution.disputed == ["t1"]
    assert [(r["id"], r["label"], r["annotator"]) for r in read_label_rows(labels / "test.jsonl")] == [
        (test_item, "pristine", name[ann.id])
    ]
    assert not (labels / "val.jsonl").exists()

    # Exporting again queues only what people have not settled: the disputed item, for adjudication.
    run_mmkd(queue_repo, "annotate", "export")
    assert [(r["id"], r["purpose"]) for r in queued(queue_repo)] == [("t1", "adjudication")]
