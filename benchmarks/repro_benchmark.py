"""Benchmark the pipeline: a cold `dvc repro`, then a no-op one, in a fresh copy of this repo. Prints a table.
The no-op repro runs only the labelling stages (always_changed: they answer from their cache and outputs).

    python benchmarks/repro_benchmark.py                                   # the default (quick-start) config
    python benchmarks/repro_benchmark.py data=demo_ci bootstrap=demo_ci    # Hydra overrides, e.g. CI size

Peak memory is the largest total resident set of the processes the run started, sampled every 0.2 s (the demo's
bootstrap stage trains models side by side), or the largest single one if that is more.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
GIT_ID = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"} | {
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}
RUNNING = re.compile(r"Running stage '([^']+)'")
TARGETS = {"cold repro": (300.0, 6.0), "no-op repro": (10.0, None)}  # seconds, GiB (issue 28: a cold run in 5 min)


def always_changed(dvc_yaml: Path) -> set[str]:
    """The stages (foreach groups by their name) that dvc.yaml marks ``always_changed``."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name for name, stage in stages.items() if stage.get("do", stage).get("always_changed")}


def copy_repo(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    for p in ("dvc.lock", "metrics"):  # a cold run starts with nothing computed
        target = dest / p
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str, dict[str, float]]:
    """Run ``cmd``; return wall seconds, peak RSS (GiB) of its process tree, its output, and seconds per DVC stage
    (from one ``Running stage`` line to the next, or to the end)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree_peak = [0]
    done = threading.Event()
    sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, done, tree_peak), daemon=True)
    sampler.start()
    lines, marks = [], []  # (stage, time it started)
    for line in proc.stdout:
        lines.append(line)
        if m := RUNNING.search(line):
            marks.append((m.group(1), time.perf_counter()))
    proc.wait()
    end = time.perf_counter()
    done.set()
    sampler.join()
    output = "".join(lines)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-6000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    stage_s = {name: (marks[i + 1][1] if i + 1 < len(marks) else end) - t for i, (name, t) in enumerate(marks)}
    single_gib = (peak_kib if peak_kib > before else before) / 2**20
    return end - start, max(single_gib, tree_peak[0] / 2**30), output, stage_s


def _sample_tree_rss(pid: int, done: threading.Event, peak: list[int]) -> None:
    """Keep in ``peak[0]`` the largest sum of resident bytes of ``pid`` and its descendants seen so far."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not done.wait(0.2):
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_info().rss
        peak[0] = max(peak[0], total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the config")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repo and print its path")
    args = parser.parse_args()
    bindir = str(Path(sys.executable).parent)
    env = os.environ | {
        "PATH": bindir + os.pathsep + os.environ["PATH"],
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    tmp = Path(tempfile.mkdtemp(prefix="mmkd-bench-"))
    # The copy's own code, not the editable install's: edits made in this checkout while the run goes on must not
    # reach it (PYTHONPATH comes before the install's .pth entry on sys.path)
    env["PYTHONPATH"] = str(tmp / "src")
    try:
        copy_repo(tmp)
        subprocess.run([sys.executable, "-m", "mmkd.cli", "compose", *args.overrides], cwd=tmp, env=env, check=True)
        subprocess.run(["git", "init", "-q"], cwd=tmp, check=True)
        subprocess.run(["git", "add", "-A"], cwd=tmp, check=True)
        subprocess.run(["git", "commit", "-qm", "benchmark"], cwd=tmp, env=env | GIT_ID, check=True)
        cold_s, cold_gib, _, stage_s = run([sys.executable, "-m", "dvc", "repro"], tmp, env)
        noop_s, _, _, noop_stages = run([sys.executable, "-m", "dvc", "repro"], tmp, env)
        # Labelling is always_changed (dvc.yaml): it runs on every repro and answers from what it has.
        rerun = sorted(n for n in noop_stages if n.split("@")[0] not in always_changed(tmp / "dvc.yaml"))
        if rerun:
            print(f"WARNING: the second repro ran {rerun}; only always_changed stages should run")
        print(f"config: {' '.join(args.overrides) or '(default)'}   machine: {os.cpu_count()} cores")
        print(f"{'run':<14}{'wall s':>10}{'peak GiB':>10}{'target s':>10}{'target GiB':>12}")
        for name, secs, gib in (("cold repro", cold_s, cold_gib), ("no-op repro", noop_s, None)):
            ts, tg = TARGETS[name]
            peak, target_gib = f"{gib:.2f}" if gib else "-", f"{tg:.0f}" if tg else "-"
            print(f"{name:<14}{secs:>10.1f}{peak:>10}{ts:>10.0f}{target_gib:>12}")
        print(f"\nstages run cold: {len(stage_s)}")
        print(f"{'stage':<26}{'wall s':>10}")
        for name, secs in stage_s.items():
            print(f"{name:<26}{secs:>10.1f}")
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
