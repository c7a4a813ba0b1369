"""Labelling throughput of a server teacher at several concurrencies, beside the ideal (concurrency ÷ latency).

The server is the fake Chat Completions server of ``tests/fault_server.py`` (no model: a canned answer after a
fixed latency), run in its own process so that the client's CPU time is measured alone. The client is the real
labelling path: items read from a demo world, images loaded and checked, base64 data URLs, the ``openai`` SDK,
answers parsed and (unless ``--no-cache``) committed one by one to a SQLite answer cache.

    python benchmarks/label_throughput_benchmark.py [--latency 0.2] [--concurrency 1 16 64] [--rounds 30]

Prints a Markdown table. The targets are >= 80 % of ideal at concurrency 16 and >= 85 % at 64. CPU time per
request is the client process's CPU time (user + system) over the items sent; on a shared machine it is noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmkd.demo.world import make_world
from mmkd.inference.answer_cache import AnswerCache
from mmkd.inference.answering import LabelTally, label_items
from mmkd.labelling.backends import make_backend
from mmkd.schema import items_frame, read_items

FAULT_SERVER = Path(__file__).resolve().parents[1] / "tests" / "fault_server.py"  # a test double, run as a script


def items_for(world: Path, n: int, run: str):
    """``n`` items over the world's images, with captions unique to this run (so nothing comes from the cache)."""
    base = read_items(world / "train.parquet").to_dicts()
    rows = [
        dict(base[i % len(base)], id=f"{run}-{i}", caption=f"{base[i % len(base)]['caption']} ({run} {i})")
        for i in range(n)
    ]
    return items_frame(rows)


def measure(base_url: str, world: Path, cache_dir: Path | None, concurrency: int, n: int, run: str) -> dict:
    teacher = make_backend(
        "bench",
        {
            "backend": "openai",
            "model": "fake",
            "base_url": base_url,
            "prompt_version": "v1",
            "max_concurrency": concurrency,
            "timeout": 30,
        },
    )
    items = items_for(world, n, run)
    cache = AnswerCache(cache_dir / "bench.sqlite") if cache_dir else None
    tally = LabelTally()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    answers = label_items(teacher, items, source="bench", prompt_version="v1", cache=cache, tally=tally)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if cache:
        cache.close()
    ok = int((answers["status"] == "ok").sum())
    if ok != n or tally.sent != n:
        raise SystemExit(f"benchmark: expected {n} fresh answers, got {ok} ok of {tally.sent} sent")
    return {"wall": wall, "cpu": cpu, "n": n}


@contextlib.contextmanager
def fake_server(port: int, latency: float):
    """The fake server in its own process; yields its URL and a function giving its CPU seconds so far (Linux)."""
    server = subprocess.Popen(
        [sys.executable, str(FAULT_SERVER), "--port", str(port), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    try:
        yield server.stdout.readline().strip(), cpu_seconds
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="the server's fixed latency, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--rounds", type=int, default=30, help="items per run = concurrency x rounds (min 20): the steady state"
    )
    parser.add_argument("--port", type=int, default=18731)
    parser.add_argument("--no-cache", action="store_true", help="do not write answers to an answer cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        make_world(world, seed=0, sizes={"train": 64})
        cache_dir = None if args.no_cache else Path(tmp) / "cache"
        rows = []
        for c in args.concurrency:
            with fake_server(args.port, args.latency) as (base_url, server_cpu):
                measure(base_url, world, cache_dir, min(c, 4), 8, f"warmup{c}")  # imports, first connections
                n = max(20, c * args.rounds)
                before = server_cpu()
                r = measure(base_url, world, cache_dir, c, n, f"c{c}")
                server_s = server_cpu() - before
            rate, ideal = r["n"] / r["wall"], c / args.latency
            cpu_ms, server_ms = 1000 * r["cpu"] / r["n"], 1000 * server_s / r["n"]
            rows.append((c, r["n"], r["wall"], rate, ideal, 100 * rate / ideal, cpu_ms, server_ms))

    print(
        f"\nfake server latency {args.latency * 1000:.0f} ms; client: label_items + openai SDK"
        f"{'' if args.no_cache else ' + SQLite answer cache'}\n"
    )
    print(
        "| concurrency | items | wall s | items/s | ideal items/s | % of ideal | client CPU ms/request "
        "| fake server CPU ms/request |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, n, wall, rate, ideal, pct, cpu_ms, server_ms in rows:
        print(f"| {c} | {n} | {wall:.2f} | {rate:.1f} | {ideal:.1f} | {pct:.0f} % | {cpu_ms:.2f} | {server_ms:.2f} |")


if __name__ == "__main__":
    main()
