"""Teacher backends. ``make_teacher`` turns one teacher's params into a backend; add new kinds to ``BACKENDS``."""

from __future__ import annotations

from mmkd.teachers.base import TeacherBackend, TeacherReply, TeacherRequest
from mmkd.teachers.local import LocalConfig, LocalTeacher

BACKENDS = {"local": (LocalConfig, LocalTeacher)}

# Keys of a teacher's params that are about labelling, not about the backend.
LABELLING_KEYS = ("backend", "prompt_version")


def make_teacher(name: str, params: dict) -> TeacherBackend:
    """Build the backend named by ``params['backend']`` from the rest of ``params``."""
    kind = params.get("backend", "local")
    if kind not in BACKENDS:
        raise ValueError(f"teacher {name!r}: unknown backend {kind!r}; use one of {sorted(BACKENDS)}")
    config_cls, backend_cls = BACKENDS[kind]
    settings = {k: v for k, v in params.items() if k not in LABELLING_KEYS}
    try:
        config = config_cls(**settings)
    except TypeError as exc:
        raise ValueError(f"teacher {name!r}: bad settings for backend {kind!r}: {exc}") from exc
    return backend_cls(config, name=name)


__all__ = ["BACKENDS", "TeacherBackend", "TeacherReply", "TeacherRequest", "make_teacher"]
