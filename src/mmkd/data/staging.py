"""The output folder of ``prepare``: refused if it overlaps an input, built beside the old one, swapped in at the end.

A DVC output is rebuilt whole, but deleting it first is how a direct run with ``data.dir`` equal to (or above) the
raw folder once deleted the raw data, and how a failed run left nothing usable. So the folder is checked against
every input (on real paths) before anything is touched, built in a hidden sibling, and only a finished build
replaces the previous output; a failed one is removed and the previous output stays as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmkd.data import PrepareInputError


def check_apart(out_dir: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output folder that is, contains or lies inside an input (``{setting: path}``), on real paths."""
    out = Path(os.path.realpath(out_dir))
    for setting, path in inputs.items():
        real = Path(os.path.realpath(path))
        if out == real or real.is_relative_to(out) or out.is_relative_to(real):
            how = "is" if out == real else ("contains" if real.is_relative_to(out) else "lies inside")
            raise PrepareInputError(
                f"data.dir {out_dir} ({out}) {how} the input {setting} ({real}); prepare replaces data.dir whole, "
                "so it would delete or change its own input: set data.dir to a folder apart from the raw data "
                "(e.g. data/newsclippings)"
            )
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise PrepareInputError(f"data.dir {out_dir} exists and is not a folder; move it away or change data.dir")


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """Yield a new empty sibling of ``out_dir`` to build in; on success it replaces ``out_dir``, on error it goes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".building", dir=out_dir.parent))
    try:
        yield build
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    os.chmod(build, 0o755)  # mkdtemp makes it private; the output is an ordinary folder
    old = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.old"
    if os.path.lexists(out_dir):
        os.rename(out_dir, old)
    os.rename(build, out_dir)
    if os.path.islink(old):
        old.unlink()
    elif old.exists():
        shutil.rmtree(old)
