"""Does a run reproduce the committed one? ``mmkd reproduce`` compares the workspace's outputs and metrics (or an
experiment's) with git HEAD's, stage by stage in the order of dvc.yaml, and says where they first diverge, by how
much, and the tolerance that applies there.

- Data, teacher answers and everything computed from them alone (the ``world``, ``prepare``, ``bootstrap``,
  ``label`` and ``split`` stages; in ``evaluate``, the teachers, majority_vote and the untrained zero-shot student)
  must be equal to the byte: the pipeline is deterministic, and with pinned numerics (mmkd.numerics) the same on
  any x86-64 machine with AVX2.
- A trained student's bytes may differ where the float rounding differs; what is judged is its test accuracy in
  ``evaluate``, within ``SEED_SPREAD`` of the committed one. Its other metrics are listed, not judged.

The current side is what ``dvc.lock`` and ``metrics/`` hold: run it after ``dvc repro`` (or name an experiment).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

# Three times the largest training-seed sd of Stage 1, Stage 2 and random_budget over seeds 0-4 (1.0, 1.3 and 1.3
# points: metrics/seeds.json, docs/demo.md#over-five-seeds), rounded up: a trained student within 4 points of the
# committed accuracy is within what another training seed gives.
SEED_SPREAD = 0.04
EXACT_STAGES = ("world", "prepare", "prepare_test", "bootstrap", "label", "split")
TRAINED_STAGES = ("stage1", "stage2", "baseline", "supervised")  # judged by their test accuracy in evaluate
UNTRAINED_SYSTEMS = ("zero_shot", "teachers/", "baselines/majority_vote")  # evaluate.json entries that are exact
EVALUATE = "metrics/evaluate.json"


@dataclass(frozen=True)
class Snapshot:
    """One run's outputs: the hash of each out (dvc.lock's ``md5``) and the content of each JSON metrics file."""

    outs: dict[str, str]
    metrics: dict[str, dict]


@dataclass(frozen=True)
class Difference:
    """One value that differs: where (stage, file, key), the two values, and the tolerance that applies (0: exact;
    None: listed, not judged)."""

    stage: str
    path: str
    key: str
    committed: object
    current: object
    tolerance: float | None

    @property
    def size(self) -> float | None:
        """|current - committed| for two numbers, else None."""
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (self.committed, self.current))
        return abs(self.current - self.committed) if numbers else None

    @property
    def outside(self) -> bool:
        if self.tolerance is None:
            return False
        return self.size is None or self.size > self.tolerance + 1e-12

    def line(self) -> str:
        by = "" if self.size is None else f" (by {self.size:.6g})"
        rule = (
            "not judged"
            if self.tolerance is None
            else "exact"
            if self.tolerance == 0
            else f"tolerance {self.tolerance:g}"
        )
        where = f"{self.path}:{self.key}" if self.key else self.path
        verdict = "OUTSIDE" if self.outside else "within"
        return f"  {where}: {self.committed!r} -> {self.current!r}{by}; {rule}: {verdict}"


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Nested dicts and lists as {"a.b.0": leaf}."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out = {}
    for key, v in items:
        out |= flatten(v, f"{prefix}.{key}" if prefix else str(key))
    return out


def lock_outs(lock: dict) -> dict[str, dict[str, str]]:
    """{stage: {out path: hash}} of a ``dvc.lock``, in its order."""
    return {
        stage: {out["path"]: out.get("md5") or out.get("hash") for out in entry.get("outs", [])}
        for stage, entry in (lock.get("stages") or {}).items()
    }


def stage_order(stages: list[str], dvc_yaml: dict) -> list[str]:
    """``stages`` (``name`` or ``name@key``) in the order dvc.yaml defines them: the DAG's order in this project."""
    rank = {name: i for i, name in enumerate(dvc_yaml.get("stages") or {})}
    return sorted(stages, key=lambda s: (rank.get(s.split("@")[0], len(rank)), s))


def evaluate_tolerance(key: str) -> float | None:
    """The tolerance of one key of metrics/evaluate.json (or of one of its ``test_sets.<set>`` copies)."""
    parts = key.split(".")
    if parts[0] == "test_sets":
        parts = parts[2:]
    system = "/".join(parts[:2]) if parts[0] in ("teachers", "baselines") else parts[0]
    if any(system == u or (u.endswith("/") and system.startswith(u)) for u in UNTRAINED_SYSTEMS):
        return 0.0
    if parts[0] == "significance":  # Stage 2 against another system: moves with the trained students
        return None
    return SEED_SPREAD if parts[-1] == "accuracy" else None


def compare(committed: Snapshot, current: Snapshot, committed_lock: dict, dvc_yaml: dict) -> list[Difference]:
    """Every difference between the two runs, stage by stage in DAG order (the stages of ``committed_lock``)."""
    outs = lock_outs(committed_lock)
    diffs = []
    for stage in stage_order(list(outs), dvc_yaml):
        base = stage.split("@")[0]
        for path, committed_hash in outs[stage].items():
            if path in committed.metrics or path in current.metrics:
                diffs += _metric_diffs(stage, path, committed.metrics.get(path), current.metrics.get(path))
            elif path in current.outs and current.outs[path] != committed_hash:
                tolerance = 0.0 if base in EXACT_STAGES else None  # trained: judged by its accuracy in evaluate
                diffs.append(Difference(stage, path, "", committed_hash, current.outs[path], tolerance))
    return diffs


def _metric_diffs(stage: str, path: str, committed: dict | None, current: dict | None) -> list[Difference]:
    if committed is None or current is None:
        return [Difference(stage, path, "", "present" if committed else None, "present" if current else None, 0.0)]
    old, new = flatten(committed), flatten(current)
    diffs = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            tolerance = evaluate_tolerance(key) if path == EVALUATE else 0.0
            diffs.append(Difference(stage, path, key, old.get(key), new.get(key), tolerance))
    return diffs


def report(diffs: list[Difference], stages: list[str]) -> tuple[str, bool]:
    """A text report (one line per stage, then what differs) and whether every difference is within tolerance."""
    by_stage = {s: [d for d in diffs if d.stage == s] for s in stages}
    lines, first = [], None
    for stage, found in by_stage.items():
        outside = [d for d in found if d.outside]
        status = "identical" if not found else ("OUTSIDE tolerance" if outside else "within tolerance")
        lines.append(f"{stage}: {status}" + (f" ({len(found)} values differ)" if found else ""))
        lines += [d.line() for d in sorted(found, key=lambda d: not d.outside)[:8]]  # the judged first
        if outside and first is None:
            first = outside[0]
    if diffs:
        lines.append(f"first differs at {diffs[0].stage}: {diffs[0].line().strip()}")
    if first is None:
        lines.append("reproduces the committed run" + (" within tolerance" if diffs else " exactly"))
    else:
        lines.append(f"does not reproduce: first outside tolerance at {first.stage}: {first.line().strip()}")
    return "\n".join(lines) + "\n", first is None


def git_snapshot(repo: Path, rev: str = "HEAD") -> tuple[Snapshot, dict]:
    """The committed run at ``rev``: its dvc.lock's outs and the metrics files it names, as committed."""
    lock = yaml.safe_load(_git_show(repo, rev, "dvc.lock"))
    outs = {p: h for stage in lock_outs(lock).values() for p, h in stage.items()}
    metrics = {}
    for path in outs:
        if path.endswith(".json") and (text := _git_show(repo, rev, path, missing_ok=True)) is not None:
            metrics[path] = json.loads(text)
    return Snapshot(outs, metrics), lock


def workspace_snapshot(repo: Path, paths: list[str]) -> Snapshot:
    """The workspace's run: its dvc.lock (what the last ``dvc repro`` recorded) and its metrics files."""
    lock_file = repo / "dvc.lock"
    if not lock_file.is_file():
        raise FileNotFoundError(f"{lock_file}: no dvc.lock; run `dvc repro` first")
    outs = {p: h for stage in lock_outs(yaml.safe_load(lock_file.read_text())).values() for p, h in stage.items()}
    metrics = {p: json.loads((repo / p).read_text()) for p in paths if p.endswith(".json") and (repo / p).is_file()}
    return Snapshot(outs, metrics)


def experiment_snapshot(show: list[dict], name: str) -> Snapshot:
    """One experiment's run, by name, from ``dvc exp show --json``."""
    for baseline in show:
        for rev in [baseline] + [r for exp in baseline.get("experiments") or [] for r in exp.get("revs", [])]:
            if name in (rev.get("name"), rev.get("rev")):
                data = rev.get("data") or {}
                outs = {p: o.get("hash") for p, o in (data.get("outs") or {}).items()}
                metrics = {p: m["data"] for p, m in (data.get("metrics") or {}).items() if "data" in m}
                return Snapshot(outs, metrics)
    raise KeyError(f"no experiment named {name!r} in `dvc exp show`; `dvc exp list` names them")


def _git_show(repo: Path, rev: str, path: str, missing_ok: bool = False) -> str | None:
    run = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    if run.returncode != 0:
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path} is not committed at {rev} in {repo}: {run.stderr.strip()}")
    return run.stdout


def check(repo: str | Path = ".", experiment: str | None = None, rev: str = "HEAD") -> tuple[str, bool]:
    """Compare the workspace's run (or ``experiment``'s) with the one committed at ``rev``: (report, reproduces)."""
    repo = Path(repo)
    committed, lock = git_snapshot(repo, rev)
    if experiment is None:
        current = workspace_snapshot(repo, list(committed.outs))
    else:
        out = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
        current = experiment_snapshot(json.loads(out.stdout), experiment)
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    diffs = compare(committed, current, lock, dvc_yaml)
    return report(diffs, stage_order(list(lock_outs(lock)), dvc_yaml))
