"""How long does the test suite take, and which tests take it? Runs pytest on a tier and prints its wall time, the
test counts and the slowest tests as a table. A guard against drift, not a timed test: read the numbers beside
``benchmarks/step_probe.py`` (shared hosts change speed from hour to hour) and docs/developing.md's table.

    python benchmarks/suite_benchmark.py                   # the whole suite on 2 workers (-n 2), 15 slowest
    python benchmarks/suite_benchmark.py --workers 0       # in one process
    python benchmarks/suite_benchmark.py --tier fast       # pytest -m "not slow"
    python benchmarks/suite_benchmark.py --top 10 -- tests/demo   # pytest arguments after --
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIERS = {"all": [], "fast": ["-m", "not slow"], "slow": ["-m", "slow"]}
DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S.*)$")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def slowest(output: str) -> list[tuple[float, str, str]]:
    """(seconds, phase, test id) of each line of pytest's ``--durations`` report, as pytest printed them."""
    return [(float(m[1]), m[2], m[3]) for line in output.splitlines() if (m := DURATION.match(line))]


def counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line: passed, failed, skipped, deselected, ..."""
    summary = [line for line in output.splitlines() if " in " in line and COUNTS.search(line)]
    return {kind: int(n) for n, kind in COUNTS.findall(summary[-1])} if summary else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=sorted(TIERS), default="all", help="all, fast (not slow) or slow")
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest tests to list")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (-n); 0: one process")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --), e.g. a folder")
    args = parser.parse_args()
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--durations={args.top}",
        "-n",
        str(args.workers),
    ]
    command += TIERS[args.tier] + args.pytest_args
    print(f"$ python {shlex.join(command[1:])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    output = result.stdout + result.stderr
    found = counts(output)
    print(
        f"\ntier {args.tier}: {wall:.0f} s wall, exit {result.returncode}, "
        + ", ".join(f"{n} {k}" for k, n in found.items())
    )
    print(f"\n| {'seconds':>7} | phase    | test |")
    print(f"| {'-' * 7}:| -------- | ---- |")
    for seconds, phase, test in slowest(output):
        print(f"| {seconds:>7.1f} | {phase:<8} | {test} |")
    if result.returncode not in (0, 5):
        print("\npytest failed; its summary:\n" + "\n".join(output.splitlines()[-30:]))
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
