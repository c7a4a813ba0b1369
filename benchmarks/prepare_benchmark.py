"""Time and peak memory of the NewsCLIPpings `prepare` at real scale, on a synthetic raw folder.

The folder has the real merged_balanced sizes (71,072 / 7,024 / 7,264 annotations, pristine/falsified twins), a
VisualNews data.json of 1,000,000 records (the real one has ~1.26M), one image file per image the annotations use
(hard links to a small pool of real-size JPEGs, so the disk cost is small but every file is opened and decoded),
and optionally CCN evidence for every train/val/test item. Each run is a fresh process, so its peak RSS is its own.

    python benchmarks/prepare_benchmark.py                  # three runs, prints a table
    python benchmarks/prepare_benchmark.py --records 200000 --keep /tmp/nc   # smaller data.json, keep the folder
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": 71_072, "val": 7_024, "test": 7_264}  # NewsCLIPpings merged_balanced
SUBSET = "merged_balanced"
WORDS = (
    "officials president city police court minister election protest storm flood fire market team match crowd "
    "school hospital workers bridge river capital government leaders summit vote rally border village"
).split()


def caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(12, 30)))).capitalize() + "."


def write_raw(raw: Path, n_records: int, pool: int, evidence: bool, seed: int = 0) -> dict:
    """Write the synthetic raw folder; return what it holds."""
    rng = np.random.default_rng(seed)
    n_pairs = {split: n // 2 for split, n in SPLITS.items()}
    n_images = sum(n_pairs.values())
    if n_records < n_images:
        raise SystemExit(f"--records must be at least {n_images:,} (one record per image used)")
    image_ids = rng.permutation(n_records)[:n_images]  # spread over data.json
    other_ids = (image_ids + rng.integers(1, n_records, size=n_images)) % n_records  # a falsified twin's caption

    origin = raw / "visual_news/origin"
    origin.mkdir(parents=True)
    image_set = {int(i): k for k, i in enumerate(image_ids)}
    with open(origin / "data.json", "w") as f:  # streamed out, like the reader streams it in
        f.write("[")
        for i in range(n_records):
            k = image_set.get(i)
            path = f"./bbc/images/{(k if k is not None else i) // 1000:04d}/{i}.jpg"
            record = {
                "id": i,
                "caption": caption(rng),
                "topic": "world",
                "source": "bbc",
                "image_path": path,
                "article_path": f"./bbc/articles/{i}.txt",
            }
            f.write(("," if i else "") + json.dumps(record))
        f.write("]")

    pool_dir = raw / "pool"
    pool_dir.mkdir()
    for p in range(pool):  # real-size news photos: 640x427 JPEG, ~80-100 KB of noise-textured content
        pixels = rng.integers(0, 255, size=(427 // 8, 640 // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((640, 427), Image.BILINEAR).save(pool_dir / f"{p}.jpg", quality=90)
    for k, i in enumerate(image_ids):
        dst = origin / f"bbc/images/{k // 1000:04d}/{i}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(pool_dir / f"{k % pool}.jpg", dst)

    annotations = raw / "news_clippings/data" / SUBSET
    annotations.mkdir(parents=True)
    start = 0
    for split, pairs in n_pairs.items():
        rows = []
        for k in range(start, start + pairs):
            image, other = int(image_ids[k]), int(other_ids[k])
            rows.append({"id": image, "image_id": image, "similarity_score": 1.0, "falsified": False})
            rows.append({"id": other, "image_id": image, "similarity_score": 0.8, "falsified": True})
        (annotations / f"{split}.json").write_text(json.dumps({"annotations": rows}))
        if evidence:
            write_evidence(raw / "queries_dataset" / SUBSET, split, len(rows), rng)
        start += pairs
    return {"records": n_records, "images": n_images, "pool": pool}


def write_evidence(root: Path, split: str, n: int, rng: np.random.Generator) -> None:
    """CCN layout: dataset_items_<split>.json and one inverse_annotation.json per item."""
    items = {}
    for i in range(n):
        inv = f"inverse_search/{split}/{i}"
        items[str(i)] = {"inv_path": inv, "direct_path": f"direct_search/{split}/{i - i % 2}"}
        folder = root / inv
        folder.mkdir(parents=True)
        pages = [
            {
                "page_link": f"https://news.example/{j}",
                "image_link": "x",
                "title": caption(rng),
                "caption": {"f": caption(rng)},
            }
            for j in range(int(rng.integers(0, 6)))
        ]
        annotation = {"entities": list(rng.choice(WORDS, size=8)), "best_guess_lbl": [caption(rng)[:30]]}
        annotation |= {"all_fully_matched_captions": pages, "all_partially_matched_captions": []}
        (folder / "inverse_annotation.json").write_text(json.dumps(annotation))
    (root / f"dataset_items_{split}.json").write_text(json.dumps(items))


RUN = """
import json, logging, sys, time
from mmkd.data.newsclippings import NewsClippingsSettings, prepare_newsclippings
logging.basicConfig(level=logging.WARNING)
settings = NewsClippingsSettings(**json.loads(sys.argv[1]))
start = time.perf_counter()
summary = prepare_newsclippings(settings, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start, "summary": summary}))
"""


def run_prepare(settings: dict, out: Path) -> dict:
    """Run prepare in a fresh process; return its wall time, peak RSS and summary."""
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [sys.executable, "-c", RUN, json.dumps(settings), str(out)]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (peak RSS)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"prepare failed:\n{stderr.read()[-3000:]}")
        result = json.loads(stdout.read().strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="VisualNews data.json records")
    parser.add_argument("--pool", type=int, default=64, help="distinct image files behind the hard links")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the raw folder here and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    raw = work / "raw"
    if not (raw / "visual_news/origin/data.json").is_file():
        start = time.perf_counter()
        info = write_raw(raw, args.records, args.pool, evidence=True)
        print(f"built {raw} in {time.perf_counter() - start:.0f} s: {info}", file=sys.stderr)
    size_mb = (raw / "visual_news/origin/data.json").stat().st_size / 2**20
    base = {"raw": str(raw), "subset": SUBSET}
    runs = [
        ("train only, first 10,000, no evidence", base | {"splits": ["train"], "limit": 10_000}),
        ("train only (71,072), no evidence", base | {"splits": ["train"]}),
        ("train+val+test (85,360), CCN evidence", base | {"evidence": f"queries_dataset/{SUBSET}"}),
    ]
    rows = []
    try:
        for name, settings in runs:
            result = run_prepare(settings, work / "out")
            splits = result["summary"]["splits"].values()
            n = sum(s["annotations"] for s in splits)
            items = sum(s["items"] for s in splits)
            rows.append((name, n, items, result["seconds"], n / result["seconds"], result["peak_rss_mib"]))
    finally:
        if args.keep is None:
            shutil.rmtree(work)
    print(f"data.json: {args.records:,} records, {size_mb:.0f} MiB; images: hard links to {args.pool} 640x427 JPEGs")
    print("| run | annotations | items | seconds | annotations/s | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, items, seconds, rate, rss in rows:
        print(f"| {name} | {n:,} | {items:,} | {seconds:.1f} | {rate:,.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
