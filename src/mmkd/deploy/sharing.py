"""Share a run through a DVC remote so that a teammate's ``dvc repro --pull`` restores it instead of re-running.

``dvc push --run-cache`` uploads the run-cache entries and the cached outputs of the workspace, but not the files
that those entries list as ``cache: false`` outputs (mmkd's metrics and plot data, kept in git): DVC 3 commits them
to the local cache when it saves a run, and its index-based push never collects them. A teammate's restore then
finds an entry whose files are missing and runs the stage again. ``push_runs`` pushes those files too.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

log = logging.getLogger(__name__)


def push_runs(repo_dir: str | Path = ".", remote: str | None = None, jobs: int | None = None) -> dict[str, int]:
    """``dvc push --run-cache``, then every object a run-cache entry names that is in the local cache; returns
    counts of entries, objects and files pushed."""
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        pushed = repo.push(remote=remote, jobs=jobs, run_cache=True)
        stage_cache = repo.stage_cache
        objects: dict = defaultdict(set)
        entries = 0
        for key_dir in Path(stage_cache.cache_dir).glob("*/*") if os.path.isdir(stage_cache.cache_dir) else []:
            for value_file in key_dir.iterdir():
                entry = stage_cache._load_cache(key_dir.name, value_file.name)  # dvc<4: no public API for this
                if not entry:
                    continue
                entries += 1
                for odb, objs in stage_cache._create_stage(entry).get_used_objs().items():
                    objects[odb] |= {obj for obj in objs if repo.cache.local.exists(obj.value)}
        extra = 0
        for odb, objs in objects.items():
            result = repo.cloud.push(objs, jobs=jobs, remote=remote, odb=odb)
            extra += len(result.transferred)
        log.info("pushed %d files, %d run-cache entries, %d objects of run-cache entries", pushed, entries, extra)
        return {"files": pushed, "entries": entries, "entry_objects": extra}
