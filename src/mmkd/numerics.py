"""Pinned CPU numerics: the same bytes from the same run on any x86-64 machine with AVX2.

torch, MKL and oneDNN each pick their kernels' instruction set when they load, from what the CPU offers, and the
thread count decides how reductions are split; either changes the float rounding of every training step, and the
demo's tiny models, trained at a high learning rate, amplify it. A stage that loads torch therefore calls
``pin_cpu_numerics`` first, before any import that loads torch, with the ``numerics`` params
(docs/performance.md#pinned-cpu-numerics). When the process ends it records its numeric profile (CPU model, the
instruction set torch used, torch/MKL/oneDNN versions, threads) in ``logs/numerics/<stage>.json``, git-ignored: it
says what ran, it is not a result. No torch here: this module runs before torch is imported.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from mmkd.paths import run_log_file
from mmkd.stage_io import read_params

log = logging.getLogger(__name__)

# numpy's own SIMD kernels (exp, log, tanh, sums, ...) are chosen at import from what the CPU offers, and give other
# last bits on an AVX-512 host than on an AVX2 one (measured: np.exp/log/tanh of 100k values). These are the
# dispatch targets above AVX2, by numpy >= 2.3's names (X86_V4, AVX512_*) and by older ones; numpy ignores names it
# does not know, and cannot disable its baseline (SSE4.2 for numpy 2.x), so ``default`` caps it at the baseline.
NUMPY_ABOVE_AVX2 = (
    "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL"
)
NUMPY_ABOVE_BASELINE = "X86_V3 AVX AVX2 F16C FMA3 " + NUMPY_ABOVE_AVX2

# What each ``numerics.isa`` sets: ATen's CPU capability, MKL's conditional numerical reproducibility (its code
# path, whatever the CPU), oneDNN's instruction-set cap, numpy's SIMD dispatch and the OpenBLAS kernels numpy's
# linear algebra uses (OpenBLAS otherwise picks them by CPU model). ``default`` is ATen's scalar kernels: slower,
# for hosts without AVX2. ``avx512`` lets numpy pick its own (it cannot be told to use a target).
ISA_ENV = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": NUMPY_ABOVE_AVX2,
        "OPENBLAS_CORETYPE": "Haswell",
    },
    "avx512": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_CBWR": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "OPENBLAS_CORETYPE": "SkylakeX",
    },
    "default": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "COMPATIBLE",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "NPY_DISABLE_CPU_FEATURES": NUMPY_ABOVE_BASELINE,
        "OPENBLAS_CORETYPE": "Nehalem",
    },
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # read by OpenMP and MKL when they load; torch's follow them
PROFILE_ENV = (*ISA_ENV["avx2"], *THREAD_ENV)  # the variables a profile records
X86 = ("x86_64", "amd64", "i686", "x86")


@dataclass(frozen=True)
class NumericsSettings:
    """The ``numerics`` params (conf/numerics): what a stage fixes before torch loads."""

    isa: str | None = "avx2"  # the kernels' instruction set (a key of ISA_ENV); null: each library picks its own
    threads: int | None = 2  # OpenMP/MKL threads and torch's; null: each library's default (the machine's cores)

    def __post_init__(self):
        if self.isa is not None and self.isa not in ISA_ENV:
            raise ValueError(f"numerics.isa: {self.isa!r} is not one of {sorted(ISA_ENV)} (or null: not pinned)")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"numerics.threads: {self.threads!r} is not a count >= 1 (or null: not pinned)")


def pin_env(settings: NumericsSettings, machine: str | None = None) -> dict[str, str]:
    """The environment variables that pin ``settings`` on a CPU of architecture ``machine`` (default: this one).
    The instruction-set names are x86's: elsewhere (e.g. Apple silicon) only the threads are pinned."""
    env, machine = {}, machine or platform.machine()
    if settings.isa is not None:
        if machine.lower() in X86:
            env |= ISA_ENV[settings.isa]
        else:
            log.warning("numerics.isa=%s: not an x86 CPU (%s); only the threads are pinned", settings.isa, machine)
    if settings.threads is not None:
        env |= dict.fromkeys(THREAD_ENV, str(settings.threads))
    return env


def pin_cpu_numerics(params: dict | None, stage: str | None = None) -> NumericsSettings:
    """Pin the kernels' instruction set and the thread counts as the ``numerics`` params say (None or empty: nothing
    pinned), and record the numeric profile in the run log when the process ends. Call it before anything imports
    torch: the libraries read these variables when they load, and a later call raises."""
    try:
        settings = NumericsSettings(**(params or {"isa": None, "threads": None}))
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"numerics in params.yaml: {exc}") from None
    if loaded := [m for m in ("torch", "numpy") if m in sys.modules]:
        raise RuntimeError(
            f"pin_cpu_numerics: {' and '.join(loaded)} already imported; call it before any import that loads them"
        )
    os.environ.update(pin_env(settings))  # torch's intra-op threads follow OMP_NUM_THREADS
    name = stage or stage_name(sys.argv)
    atexit.register(write_profile, run_log_file(f"numerics/{name}"), settings)
    return settings


def pin_stage_numerics(params_file: str | Path = "params.yaml") -> NumericsSettings:
    """``pin_cpu_numerics`` with the ``numerics`` params of a stage's ``params_file`` (absent: nothing pinned, and the
    stage reports the missing file itself). Stage scripts call it first thing, before importing what loads torch."""
    params = read_params(params_file) if Path(params_file).is_file() else {}
    return pin_cpu_numerics(params.get("numerics"))


def stage_name(argv: list[str]) -> str:
    """``stages/label.py teacher_qwen`` -> ``label@teacher_qwen``; ``stages/stage1.py --baseline x`` ->
    ``stage1@baseline@x``: one run-log name per stage of dvc.yaml."""
    parts = [Path(argv[0]).stem] + [re.sub(r"[^\w.-]+", "_", a.lstrip("-")) for a in argv[1:]]
    return "@".join(p for p in parts if p)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numeric_profile(settings: NumericsSettings | None = None) -> dict:
    """What this process computes with: the CPU, the pinned variables and, once torch is loaded, the instruction set
    its kernels use, the versions of torch, MKL and oneDNN, and its thread counts."""
    profile = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "pinned": None if settings is None else {"isa": settings.isa, "threads": settings.threads},
        "env": {k: os.environ.get(k) for k in PROFILE_ENV},
        "numpy_simd": numpy_simd(),
    }
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "backends"):
        return profile | {"torch": None}  # this run loaded no torch (e.g. a server teacher)
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    onednn = re.search(r"MKL-DNN v([^\s]+)", config)
    return profile | {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": mkl.group(1) if mkl else None,
        "onednn": onednn.group(1) if onednn else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }


def numpy_simd() -> list[str] | None:
    """The SIMD targets numpy dispatches to in this process (its ``show_runtime``'s "found"), None before it loads."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return sorted(target for target in __cpu_dispatch__ if __cpu_features__.get(target))


def write_profile(path: Path, settings: NumericsSettings | None = None) -> None:
    """Write ``numeric_profile`` to ``path`` (a run log: git-ignored, rewritten by each run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(numeric_profile(settings), indent=2, sort_keys=True) + "\n")
