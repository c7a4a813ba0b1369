"""A person's view of one mmkd task in Label Studio: headless Chromium (Debian's package), logged in as the
person, opens the task's labelling page; the image (the item's own pixels), the caption and both teachers'
rationales are on it. The person clicks a choice and Submit, and mmkd reads the answer the interface wrote. The
screenshot is kept under ``test-artifacts/label_studio/`` at the repository root.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages ended by
NUL on file descriptors 3 and 4), so nothing beyond the standard library is needed. Without Chromium
(``MMKD_CHROMIUM`` or ``chromium`` on the PATH; ``apt-get install chromium``) or Label Studio, the test skips; under
``.ci/run``, which installs both beside the tests, it first waits for them (tests/optional_installs.py).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from label_studio_server import IMAGE_SIZE, REPO, TEACHERS, colour, rationale
from optional_installs import skip_unless_installed

from mmkd.annotation.label_studio import DEFAULT_CHOICES, judgements_from_export

pytestmark = [pytest.mark.label_studio, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
FALSIFIED = next(name for name, label in DEFAULT_CHOICES.items() if label == "falsified")
PAGE_TIMEOUT = 90  # seconds for the labelling page to show the task; 5-15 s measured
# Offline: no update checks, sync, field trials or QUIC; a new empty profile each time.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]
# What the labelling view shows (not the task table beside it, which lists the same texts): its text, its image
# (drawn from a blob: URL of the task's data URL): the image's size and the colour of its middle pixel, and whether
# it is ready for an answer (loaded, with Submit enabled).
PROBE = """(() => {
  const view = document.querySelector('.lsf-main-view__annotation');
  const img = view && [...view.querySelectorAll('.lsf-image img')].find(i => i.complete && i.naturalWidth);
  let pixel = null;
  if (img) {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    pixel = [...context.getImageData(img.naturalWidth >> 1, img.naturalHeight >> 1, 1, 1).data.slice(0, 3)];
  }
  const submit = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit');
  const ready = !document.querySelector('.lsf-label-view_loading') && Boolean(submit) && !submit.disabled;
  return {text: view ? view.innerText : '', image: img ? [img.naturalWidth, img.naturalHeight] : null, pixel, ready};
})()"""
# Where to click: the middle of the deepest element of the labelling view whose text starts with the given text (a
# choice), or of the Submit button.
CENTRE = """((text) => {
  const view = document.querySelector('.lsf-main-view__annotation');
  const hits = text === 'Submit'
    ? [...document.querySelectorAll('button')].filter(b => b.innerText.trim() === 'Submit')
    : [...view.querySelectorAll('*')].filter(e => e.innerText && e.innerText.trim().startsWith(text));
  const box = hits.length ? hits[hits.length - 1].getBoundingClientRect() : null;
  return box && [box.x + box.width / 2, box.y + box.height / 2];
})"""


class DevTools:
    """Chromium under the DevTools protocol, on a pipe: ``call`` sends one command and returns its result."""

    def __init__(self, chromium: str, profile: Path, log: Path):
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        # Above fd 4, so that bash's redirections onto 3 and 4 cannot overwrite one another.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        command = ["bash", "-c", f'exec "$0" "$@" 3<&{ends[0]} 4>&{ends[1]}', chromium, *FLAGS]
        command += [f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(command, pass_fds=ends, stdout=out, stderr=out, start_new_session=True)
        for fd in ends:
            os.close(fd)
        self._sent, self._buffer = 0, b""

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        """Send one command (to a page when ``session`` is given) and wait for its answer; events are dropped."""
        self._sent += 1
        message = {"id": self._sent, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._sent:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def click(self, tab: str, text: str) -> None:
        """Press and release the left mouse button on what ``text`` names (see CENTRE), as a person does."""
        expression = f"{CENTRE}({json.dumps(text)})"
        where = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, tab)["result"]
        assert where.get("value"), f"nothing to click named {text!r} on the page"
        x, y = where["value"]
        for kind in ("mousePressed", "mouseReleased"):
            press = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            self.call("Input.dispatchMouseEvent", press, tab)

    def close(self) -> None:
        """Stop the browser and all its processes."""
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        os.close(self._out)
        os.close(self._in)


@contextlib.contextmanager
def chromium(work_dir: Path) -> Iterator[DevTools]:
    """A headless Chromium with a new, empty profile (once ``.ci/run``'s install of it, if running, is done); skips,
    with the reason, when there is none."""
    skip_unless_installed("chromium")
    binary = os.environ.get("MMKD_CHROMIUM") or shutil.which("chromium")
    if not binary:
        pytest.skip("no Chromium: set MMKD_CHROMIUM, or apt-get install chromium (.ci/run does)")
    browser = DevTools(binary, work_dir / "chromium-profile", work_dir / "chromium.log")
    try:
        yield browser
    finally:
        browser.close()


def test_the_task_page_shows_the_item_and_both_teachers_and_the_answer_clicked_there_is_read_by_mmkd(
    label_studio, queue_repo, tmp_path
):
    queue_dir = queue_repo / "annotation" / "queue"
    cy = label_studio.person("cy@example.org")
    project = cy.create_project("mmkd task page", (queue_dir / "label_config.xml").read_text())
    cy.import_tasks(project, queue_dir / "tasks.json")
    item = "t0"  # the top of the queue
    task = cy.task_ids(project)[item]
    page = f"{label_studio.url}/projects/{project}/data?task={task}"
    shot = ARTIFACTS / "label_studio" / "task_page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshot of {page}: {shot}")

    with chromium(tmp_path) as browser:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        tab = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for name, value in cy.session.cookies.items():  # the person's login, as their browser holds it
            browser.call("Network.setCookie", {"name": name, "value": value, "url": label_studio.url + "/"}, tab)
        browser.call("Page.navigate", {"url": page}, tab)
        wanted = ["caption of t0", *(rationale(t, item) for t in TEACHERS), *DEFAULT_CHOICES]
        look = {"expression": PROBE, "returnByValue": True}
        shown = browser.call("Runtime.evaluate", look, tab)["result"]["value"]
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not (shown["ready"] and shown["image"] and all(w in shown["text"] for w in wanted)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
            shown = browser.call("Runtime.evaluate", look, tab)["result"]["value"]
        shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, tab)["data"]))
        if shown["ready"]:
            browser.click(tab, FALSIFIED)
            browser.click(tab, "Submit")
            deadline = time.monotonic() + PAGE_TIMEOUT
            while not cy.call("GET", f"/api/tasks/{task}/annotations/").json() and time.monotonic() < deadline:
                time.sleep(0.5)

    missing = [w for w in wanted if w not in shown["text"]]
    assert not missing, f"not in the labelling view after {PAGE_TIMEOUT} s: {missing}; it shows: {shown['text']!r}"
    assert shown["image"] == list(IMAGE_SIZE), f"the labelling image did not load (see {shot})"
    assert shown["ready"], f"the task cannot be submitted (see {shot})"
    assert shown["pixel"] == list(colour(item)), "the labelling image is not the item's"
    # What the labelling interface itself wrote (not a hand-made result) is what mmkd reads.
    judgements, problems, skipped = judgements_from_export(cy.export(project), DEFAULT_CHOICES)
    assert (problems, skipped) == ([], [])
    assert [(j["id"], j["label"], j["annotator"]) for j in judgements] == [
        (item, "falsified", f"label-studio-user-{cy.id}")
    ]
