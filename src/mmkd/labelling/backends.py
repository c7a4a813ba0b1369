"""Teacher backends: ``make_backend`` turns one teacher's params into a backend; add new kinds to ``BACKENDS``.

A teacher's params mix labelling settings (``LabelSettings``: backend, prompt version, weights, cache, error
budget) with the settings of its backend (``LocalConfig``, ``OpenAICompatConfig``); unknown keys are refused with
the teacher's name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from mmkd.inference.base import BackendUsage, InferenceBackend, InferenceReply, InferenceRequest
from mmkd.inference.local import LocalBackend, LocalConfig
from mmkd.labelling.openai_compat import OpenAICompatBackend
from mmkd.labelling.server.config import OpenAICompatConfig

BACKENDS = {"local": (LocalConfig, LocalBackend), "openai": (OpenAICompatConfig, OpenAICompatBackend)}


@dataclass
class LabelSettings:
    """The keys of a teacher's params that are about labelling, not about its backend.

    weights: the path DVC tracks as this teacher's weights (``label@<teacher>`` depends on it). Local teachers: the
        model directory. Server teachers have no local weights: point it at the backend module
        (``src/mmkd/labelling/openai_compat.py``), and name the served weights in ``revision`` instead.
    cache_dir: where answers persist across runs (see mmkd.answer_cache); null: no cache. The environment variable
        MMKD_ANSWER_CACHE, when set, overrides it (e.g. a different disk on each machine).
    max_errors: how many failed items a run may leave before the stage fails (it writes its outputs first, so a
        re-run retries only the failed items, the others coming from the cache).
    """

    prompt_version: str
    backend: str = "local"
    weights: str | None = None
    cache_dir: str | None = None
    max_errors: int = 0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {sorted(BACKENDS)}")
        if self.max_errors < 0:
            raise ValueError(f"max_errors must be >= 0, got {self.max_errors}")


LABELLING_KEYS = tuple(f.name for f in fields(LabelSettings))


def label_settings(name: str, params: dict) -> LabelSettings:
    """The labelling settings of teacher ``name`` (its backend settings are checked by ``make_backend``)."""
    try:
        return LabelSettings(**{k: v for k, v in params.items() if k in LABELLING_KEYS})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"teacher {name!r}: {exc}") from exc


def make_backend(name: str, params: dict) -> InferenceBackend:
    """Build the backend named by ``params['backend']`` from the rest of ``params``."""
    kind = label_settings(name, params).backend
    config_cls, backend_cls = BACKENDS[kind]
    settings = {k: v for k, v in params.items() if k not in LABELLING_KEYS}
    try:
        config = config_cls(**settings)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"teacher {name!r}: bad settings for backend {kind!r}: {exc}") from exc
    return backend_cls(config, name=name)


__all__ = [
    "BACKENDS",
    "LabelSettings",
    "InferenceBackend",
    "InferenceReply",
    "InferenceRequest",
    "BackendUsage",
    "label_settings",
    "make_backend",
]
