"""Share a run through a DVC remote so that a teammate's ``dvc repro --pull`` restores it instead of re-running, and
apply a teammate's pushed experiment without losing the workspace's outputs.

``push_runs`` uploads, in this order: the workspace's cached outputs (``dvc push``); every file a run-cache entry
lists, including the ``cache: false`` outputs (mmkd's metrics and plot data, kept in git) that DVC 3 commits to the
local cache when it saves a run but never pushes; and only then the run-cache entries themselves. A push cut off
part-way therefore never leaves an entry on the remote whose files are missing, and running it again resumes.

``apply_experiment`` is ``dvc exp apply`` made safe: it fetches the experiment's outputs first, so the checkout
never deletes an output it cannot restore, then applies, then pulls whatever is still missing.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

RETRY = "run `mmkd push` again: it uploads only what is missing, so it resumes where this one stopped"


class SharingError(RuntimeError):
    """A push or an apply that did not complete; the message names the count, the first cause and the fix."""


class _FirstErrors(logging.Handler):
    """Keeps DVC's per-file error records (each with a traceback) instead of printing them: their count and the first
    cause. Warnings are passed on as one plain line each."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR:
            if record.levelno >= logging.WARNING:
                log.warning("%s", record.getMessage())
            return
        self.errors += 1
        if self.first is None:
            cause = record.exc_info[1] if record.exc_info else None
            self.first = f"{record.getMessage()}: {type(cause).__name__}: {cause}" if cause else record.getMessage()


@contextmanager
def _dvc_errors():
    """While open, DVC's log records go to one ``_FirstErrors`` (yielded) only, not to DVC's or the root handlers."""
    handler = _FirstErrors()
    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    try:
        yield handler
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate


def _cause(exc: BaseException, errors: _FirstErrors) -> str:
    return errors.first or f"{type(exc).__name__}: {exc}"


def _run_cache_entries(repo) -> list[tuple[Path, dict]]:
    """Every run-cache entry file of ``repo`` with the objects it lists, by destination ODB (None: the remote)."""
    stage_cache = repo.stage_cache
    entries = []
    root = Path(stage_cache.cache_dir)
    for value_file in sorted(root.glob("*/*/*")) if root.is_dir() else []:
        entry = stage_cache._load_cache(value_file.parent.name, value_file.name)  # dvc<4: no public API for this
        if entry:
            entries.append((value_file, stage_cache._create_stage(entry).get_used_objs()))
    return entries


def _in_local_cache(repo, obj) -> bool:
    cache = repo.cache.legacy if obj.name == "md5-dos2unix" else repo.cache.local
    return cache.exists(obj.value)


def _push_entries(repo, files: list[Path], remote: str | None) -> int:
    """Copy run-cache entry files to the remote's ``runs/`` (where ``dvc push --run-cache`` puts them); returns how
    many were new. Raises on the first that fails."""
    from dvc.fs import HTTPFileSystem, generic
    from dvc.stage.cache import RunCacheNotSupported

    odb = repo.cloud.get_remote_odb(remote, "push --run-cache", hash_name="md5-dos2unix")
    if isinstance(odb.fs, HTTPFileSystem):
        raise RunCacheNotSupported(f"run-cache is not supported for http remotes: {odb.path}")
    local = repo.cache.legacy
    new = 0
    for src in files:
        rel = os.path.relpath(src, local.path).split(os.sep)
        dst = odb.fs.join(odb.path, *rel)
        if odb.fs.exists(dst):  # entries are named by the hash of their content
            continue
        generic.copy(local.fs, str(src), odb.fs, dst)
        new += 1
    return new


def push_runs(repo_dir: str | Path = ".", remote: str | None = None, jobs: int | None = None) -> dict[str, int]:
    """Push the workspace's outputs, then the files run-cache entries list, then the entries whose files are all
    uploaded; returns counts. Raises ``SharingError`` (count of failed files, first cause, fix) if any file failed,
    having pushed no entry."""
    from dvc.exceptions import UploadError
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotSupported

    with _dvc_errors() as errors, Repo(str(repo_dir)) as repo:
        failed = 0
        try:
            pushed = repo.push(remote=remote, jobs=jobs)
        except UploadError as exc:
            pushed, failed = 0, exc.amount
        except Exception as exc:  # e.g. the remote unreachable while DVC lists what it holds
            raise SharingError(
                f"the push stopped before uploading: {_cause(exc, errors)}. Fix it, then {RETRY}."
            ) from None
        entries = _run_cache_entries(repo)
        complete = [path for path, used in entries if all(_in_local_cache(repo, o) for v in used.values() for o in v)]
        objects: dict = defaultdict(set)
        for _, used in entries:
            for odb, objs in used.items():
                objects[odb] |= {obj for obj in objs if _in_local_cache(repo, obj)}
        extra = 0
        for odb, objs in objects.items():
            result = repo.cloud.push(objs, jobs=jobs, remote=remote, odb=odb)
            extra += len(result.transferred)
            failed += len(result.failed)
        if failed:
            raise SharingError(
                f"{failed} files failed to upload; first cause: {errors.first or 'not reported by DVC'}. "
                f"No run-cache entry was pushed (a teammate's `dvc repro --pull` cannot use an entry whose files "
                f"are missing). Fix the cause, then {RETRY}."
            )
        try:
            new_entries = _push_entries(repo, complete, remote)
        except RunCacheNotSupported as exc:  # an http remote: data only, as `dvc push --run-cache` does there
            log.warning("%s; pushed the data only", exc)
            new_entries = 0
        except Exception as exc:
            raise SharingError(
                f"every data file is uploaded, but pushing the run-cache entries failed: {_cause(exc, errors)}. "
                f"{RETRY}."
            ) from None
        if len(complete) < len(entries):
            log.warning(
                "%d run-cache entries not pushed: files they list are not in the local cache (removed by `dvc gc`?)",
                len(entries) - len(complete),
            )
        log.info("pushed %d files, %d objects of run-cache entries, %d new entries", pushed, extra, new_entries)
        return {"files": pushed, "entries": len(complete), "new_entries": new_entries, "entry_objects": extra}


def _not_in_local_cache(repo, rev: str) -> list[str]:
    """The cached outputs of revision ``rev`` that the local cache cannot restore (their object, or a file of a
    folder, is absent)."""
    missing = []
    for _ in repo.brancher(revs=[rev], workspace=False):
        for out in repo.index.outs:
            if not (out.use_cache and out.hash_info):
                continue
            objs = (
                {out.hash_info} if not _in_local_cache(repo, out.hash_info) else out.get_used_objs().get(None, set())
            )
            if any(not _in_local_cache(repo, obj) for obj in objs):
                missing.append(str(out))
    return sorted(missing)


def _missing_outputs(repo) -> list[str]:
    """The cached outputs of the workspace's stages that are not on disk."""
    return sorted(str(out) for out in repo.index.outs if out.use_cache and not out.exists)


def apply_experiment(
    name: str, repo_dir: str | Path = ".", remote: str | None = None, jobs: int | None = None
) -> dict:
    """``dvc exp apply name``, with the experiment's outputs fetched from the remote first and anything still missing
    pulled after; returns the files fetched and the outputs restored. Raises ``SharingError`` before touching the
    workspace when the outputs cannot be fetched."""
    from dvc.exceptions import DownloadError
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    with _dvc_errors() as errors, Repo(str(repo_dir)) as repo:
        try:
            rev = resolve_rev(repo.scm, name)
        except RevError:
            raise SharingError(
                f"no experiment or revision named {name!r}; `dvc exp list --all-commits` lists them, and "
                f"`dvc exp pull origin {name}` fetches one a teammate pushed to another Git remote"
            ) from None
        fix = (
            f"the workspace is unchanged. Ask whoever ran it to `dvc exp push origin {name}` (it uploads its outputs) "
            "or fix the remote, then run `mmkd apply` again"
        )
        try:
            fetched = repo.fetch(revs=[rev], workspace=False, remote=remote, jobs=jobs)
        except DownloadError as exc:
            raise SharingError(
                f"{exc.amount} files of experiment {name!r} could not be fetched (first cause: "
                f"{errors.first or 'not reported by DVC'}); {fix}"
            ) from None
        unavailable = _not_in_local_cache(repo, rev)
        if unavailable:  # DVC only warns about objects that are on no remote
            raise SharingError(
                f"outputs of experiment {name!r} are not on the remote: {', '.join(unavailable)}; {fix}"
            )
        missing = []
        try:
            repo.experiments.apply(name)
        except Exception as exc:  # dvc raises CheckoutError when an output is missing; pulled below
            log.info("dvc exp apply %s: %s", name, _cause(exc, errors))
            missing = _missing_outputs(repo)
        restored = []
        if missing:
            try:
                repo.pull(targets=missing, remote=remote, jobs=jobs)
            except Exception as exc:
                raise SharingError(
                    f"applied {name!r}, but {len(missing)} outputs are missing and could not be pulled "
                    f"({_cause(exc, errors)}): {', '.join(missing)}. Fix the remote, then run `dvc pull`"
                ) from None
            restored = missing
        still = _missing_outputs(repo)
        if still:
            raise SharingError(f"applied {name!r}, but these outputs are missing: {', '.join(still)}; run `dvc pull`")
        return {"experiment": name, "rev": rev, "fetched": fetched, "restored": restored}
