"""Resolving the paths written in raw records (``image_path``, ``inv_path``) and the configured inputs safely.

A path is first checked on its text (absolute paths and ``..`` are refused), then resolved with every symbolic link
followed, and the *real* path must stay inside the real root, or inside one of the ``link_roots`` (DVC's cache,
whose files a raw folder tracked with ``cache.type: symlink`` links to); a link inside the root that points outside
it is refused like ``../../etc/passwd``. Only regular files (and, where a folder is asked for, folders) pass: a
FIFO, a device or a folder where a file should be is reported as what it is, and is never opened (opening a FIFO
would block forever). Each way a path can be wrong has its own reason, so the report says what to fix.

Messages name paths as configured (the root as set in params, joined with the path inside it), never by their real
path: the report is a stage output, and the same raw folder in two clones must give the same bytes. A link's target
is named relative to the repository when it lies inside it (``mmkd.items.shown_path``), else as the link spells it
(``_target``).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from mmkd.data import Problem
from mmkd.items import shown_path

PATH_OUTSIDE_ROOT = "path_outside_root"
EMPTY_IMAGE_PATH = "empty_image_path"
BAD_PATH = "bad_path"
SYMLINK_LOOP = "symlink_loop"
MISSING_IMAGE = "missing_image"
NOT_A_REGULAR_FILE = "not_a_regular_file"
UNREADABLE_IMAGE = "unreadable_image"

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISREG, "a regular file"),
)


def kind_of(mode: int) -> str:
    """What a file is, in words (``a FIFO (named pipe)``), from its ``st_mode``."""
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


@dataclass(frozen=True)
class Resolved:
    """A raw path that passed every check: its normalised text, its real path, what ``stat`` found there, and how
    messages name it."""

    relative: str  # normalised, "/"-separated, relative to the root (``./bbc//1.jpg`` -> ``bbc/1.jpg``)
    real: Path  # for opening only: never written into an output (it holds where the clone is)
    stat: os.stat_result
    shown: str  # the configured root joined with ``relative``: what messages and reports name


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _target(link: Path) -> str:
    """Where a symbolic link points, for messages: relative to the repository when it lies inside it (the link may
    spell the clone's absolute path), else as the link spells it."""
    text = os.readlink(link)
    target = shown_path(os.path.normpath(os.path.join(os.path.dirname(link), text)))
    return text if os.path.isabs(target) else target


@dataclass(frozen=True)
class Root:
    """A folder that raw paths are relative to: as configured (for messages) and real, plus the real link roots."""

    name: str  # in messages: "image root", "evidence folder", "raw folder"
    path: Path
    real: Path
    link_roots: tuple[Path, ...] = ()

    @classmethod
    def of(cls, name: str, path: str | Path, link_roots: tuple[Path, ...] = ()) -> Root:
        """The root at ``path`` (which must exist); ``link_roots`` that do not exist are ignored."""
        return cls(name, Path(path), _real(path), tuple(_real(p) for p in link_roots if os.path.isdir(p)))

    def contains(self, real: Path) -> bool:
        """Whether a real path lies inside the real root or one of the link roots."""
        return any(real == root or real.is_relative_to(root) for root in (self.real, *self.link_roots))

    def resolve(self, relative: str, *, folder: bool = False) -> Resolved | Problem:
        """Check ``relative`` (as written in a raw record) and resolve it inside the root; a Problem says why not.

        Asks for a regular file, or for a folder when ``folder``. ``Problem.path`` is the configured root joined
        with the normalised path (or the text as written when it has none)."""
        text = relative.replace("\\", "/")  # Windows separators in a record: the same file
        if not text.strip():
            return Problem(EMPTY_IMAGE_PATH, f"the path is empty ({relative!r})", "give the record its path", relative)
        if "\x00" in text:
            return Problem(BAD_PATH, f"path {relative!r} holds a NUL byte", "fix the path in the record", relative)
        try:
            os.fsencode(text)
        except UnicodeEncodeError:
            return Problem(BAD_PATH, f"path {relative!r} is not a valid file name", "fix the path in the record")
        parts = PurePosixPath(os.path.normpath(text)).parts
        if text.startswith("/") or (len(text) > 1 and text[1] == ":") or parts[0] == "..":
            return Problem(
                PATH_OUTSIDE_ROOT,
                f"path {relative!r} is not inside the {self.name}",
                f"paths must be relative to the {self.name} and stay inside it; fix the record",
                relative,
            )
        if parts == (".",):
            return Problem(EMPTY_IMAGE_PATH, f"path {relative!r} names the {self.name} itself", "fix the record")
        normalised = "/".join(parts)
        candidate = self.real / normalised
        shown = str(self.path / normalised)
        try:
            real = Path(os.path.realpath(candidate, strict=True))
        except OSError as exc:
            return self._unresolvable(candidate, normalised, shown, exc)
        if not self.contains(real):
            return Problem(
                PATH_OUTSIDE_ROOT,
                f"{shown} {self._link_out(normalised)}, outside the {self.name} {self.path}",
                f"keep the data inside the {self.name}: replace the link by the file, or add its target folder to "
                "data.prepare.<name>.link_roots if it is a DVC cache",
                shown,
            )
        found = os.stat(real)
        if not (stat.S_ISDIR if folder else stat.S_ISREG)(found.st_mode):
            want = "a folder" if folder else "a regular file"
            return Problem(
                NOT_A_REGULAR_FILE,
                f"{shown} is {kind_of(found.st_mode)}, not {want}",
                f"put {want} at that path, or fix the record",
                shown,
            )
        return Resolved(normalised, real, found, shown)

    def _link_out(self, normalised: str) -> str:
        """``is a symbolic link to X`` or ``lies below L, a symbolic link to X``: the first link on the path that
        leads out of the root; X relative to the repository when it lies inside it, else as the link spells it."""
        parts = normalised.split("/")
        for i in range(len(parts)):
            link = self.real.joinpath(*parts[: i + 1])
            if link.is_symlink() and not self.contains(_real(link)):
                if i == len(parts) - 1:
                    return f"is a symbolic link to {_target(link)}"
                return f"lies below {self.path.joinpath(*parts[: i + 1])}, a symbolic link to {_target(link)}"
        return "leads out through symbolic links"

    def _unresolvable(self, candidate: Path, normalised: str, shown: str, exc: OSError) -> Problem:
        if exc.errno == errno.ELOOP:
            return Problem(
                SYMLINK_LOOP,
                f"{shown}: its symbolic links form a loop",
                "replace the looping link by the file it should name",
                shown,
            )
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            detail = f"{shown} does not exist"
            parts = normalised.split("/")
            for i in range(len(parts)):
                link = self.real.joinpath(*parts[: i + 1])
                if link.is_symlink() and not link.exists():
                    shown_link = self.path.joinpath(*parts[: i + 1])
                    detail += f": {shown_link} is a symbolic link to {_target(link)}, which is missing"
                    break
            return Problem(MISSING_IMAGE, detail, f"restore the file, or check the {self.name} setting", shown)
        if exc.errno == errno.ENAMETOOLONG:
            return Problem(BAD_PATH, f"{shown}: the path is too long ({exc.strerror})", "fix the path in the record")
        return Problem(UNREADABLE_IMAGE, f"{shown} cannot be read ({exc.strerror})", "check its permissions", shown)


def open_regular(resolved: Resolved) -> BinaryIO:
    """Open a resolved regular file for reading without following links or blocking, and check it is still it."""
    fd = os.open(resolved.real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or (found.st_dev, found.st_ino) != (resolved.stat.st_dev, resolved.stat.st_ino):
        os.close(fd)
        raise OSError(errno.ESTALE, f"{resolved.shown} changed while it was being checked")
    return os.fdopen(fd, "rb")
