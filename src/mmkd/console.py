"""What a run prints: one line of logging setup, library warnings a user cannot act on silenced at the source,
and one progress bar (or, beside other jobs, one log line every tenth of the way) per training phase.

``MMKD_VERBOSE=1`` (e.g. ``MMKD_VERBOSE=1 dvc repro``) brings the detail back: library warnings, transformers'
info messages and the per-step loss dicts. Errors are always shown.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "MMKD_VERBOSE"

# Libraries whose deprecation notices are about their own internals (or TRL's use of transformers), not anything
# mmkd's user could change; they repeat once per process, and bootstrap starts several.
QUIET_MODULES = r"(transformers|trl|peft|datasets|accelerate|torch|dvclive|huggingface_hub)(\.|$)"


class UserError(Exception):
    """An error its message lets the user fix (a bad table, a missing label): a stage prints the message and exits
    non-zero, without a traceback (``setup_logging`` installs that)."""


def _brief_user_errors(kind, value, traceback) -> None:
    if isinstance(value, UserError) and not verbose():
        print(f"{os.path.basename(sys.argv[0])}: {value}", file=sys.stderr)
        return  # the interpreter then exits with status 1
    sys.__excepthook__(kind, value, traceback)


def verbose() -> bool:
    """Whether ``MMKD_VERBOSE`` asks for the full output (any value but empty, 0, false or no)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def setup_logging() -> None:
    """INFO-level logging with timestamps, once per process; unless verbose, quiet library warnings and logs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.excepthook = _brief_user_errors  # a UserError reaching the top is a message, not a traceback
    if verbose():
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_MODULES)
    for name in ("transformers", "trl", "peft", "datasets", "accelerate", "httpx", "dvclive"):
        logging.getLogger(name).setLevel(logging.ERROR)  # their warnings are about internals; errors still show
    # transformers and datasets keep their own handlers and levels, and draw a bar per weight load / dataset cast;
    # both are imported only by the stages that run a model, so each is quietened only where it is installed.
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
