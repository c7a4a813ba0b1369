"""Pinned CPU numerics (mmkd.numerics): every stage that can load torch pins its kernels' instruction set and thread
counts before torch loads, and the run log names the instruction set torch used."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from test_dvc_yaml import import_closure

from mmkd.numerics import ISA_ENV, NumericsSettings, pin_env, stage_name

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted((ROOT / "stages").glob("*.py"))
NUMERIC_LIBRARIES = {"torch", "transformers", "peft", "trl", "accelerate"}  # each loads torch
PINNED = {"isa": "avx2", "threads": 2}
HAS_AVX2 = "avx2" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False


def imported_roots(path: Path) -> set[str]:
    """The top-level packages ``path`` imports anywhere (inside functions too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


# Modules that import such a library without loading torch for the stages that import them: console.py imports
# transformers.logging alone; stage_io.py imports torch inside seed_everything, which a stage calls by name.
LOADS_NO_TORCH = {"src/mmkd/console.py", "src/mmkd/stage_io.py"}


def loads_torch(script: Path) -> bool:
    """Whether running ``script`` can import torch: it imports a library that loads it, or seeds torch, or a module
    of its import closure imports such a library (at the top or inside a function)."""
    files = [ROOT / f for f in import_closure(script) if f not in LOADS_NO_TORCH]
    seeds = "seed_everything" in {n.id for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Name)}
    return seeds or any(imported_roots(f) & NUMERIC_LIBRARIES for f in [script, *files])


def is_pin(node: ast.stmt) -> bool:
    """``if __name__ == "__main__": pin_stage_numerics()``."""
    return (
        isinstance(node, ast.If)
        and ast.unparse(node.test) == "__name__ == '__main__'"
        and any("pin_stage_numerics(" in ast.unparse(n) for n in node.body)
    )


def test_every_stage_that_can_load_torch_pins_before_its_first_import():
    """The pin is the first thing a stage does: only its own import may come before it. A stage that forgets (or
    pins after an import that may load torch) fails here."""
    torch_stages = {s.stem for s in STAGES if loads_torch(s)}
    assert {"bootstrap", "label", "stage1", "stage2", "eval"} <= torch_stages  # the check itself sees torch
    for script in STAGES:
        body = ast.parse(script.read_text()).body
        pins = [i for i, node in enumerate(body) if is_pin(node)]
        if script.stem not in torch_stages and not pins:
            continue  # e.g. world, split: nothing they run loads torch
        assert pins, f"{script.name} can load torch but never calls pin_stage_numerics (mmkd.numerics)"
        before = [ast.unparse(n) for n in body[: pins[0]] if isinstance(n, ast.Import | ast.ImportFrom)]
        assert before == ["from mmkd.numerics import pin_stage_numerics"], f"{script.name} imports before the pin"


PINNING = [s for s in STAGES if any(is_pin(node) for node in ast.parse(s.read_text()).body)]

# Records the environment at the moment torch starts to load, then stops it there: what the stage's imports
# would hand torch, without paying for the import.
RECORDER = textwrap.dedent(
    """
    import ast, json, os, sys
    script, record = sys.argv[1], sys.argv[2]
    ENV = {env!r}
    class Stop:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                with open(record, "w") as f:
                    json.dump({{"at_torch_import": {{k: os.environ.get(k) for k in ENV}}}}, f)
                raise ImportError("stopped at torch")
    sys.meta_path.insert(0, Stop())
    sys.argv = [script]
    tree = ast.parse(open(script).read())
    tree.body = tree.body[:-1]  # all but the closing `if __name__ == "__main__": main()`
    try:
        exec(compile(tree, script, "exec"), {{"__name__": "__main__", "__file__": script}})
    except ImportError:
        sys.exit(0)
    with open(record, "w") as f:
        json.dump({{"after_imports": {{k: os.environ.get(k) for k in ENV}}}}, f)
    """
)


@pytest.fixture
def pinned_repo(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"numerics": PINNED}))
    return tmp_path


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in {*ISA_ENV["avx2"], "OMP_NUM_THREADS", "MKL_NUM_THREADS"}}


@pytest.mark.parametrize("script", PINNING, ids=lambda s: s.stem)
def test_a_stage_hands_torch_the_pinned_environment(script, pinned_repo):
    """Run each pinning stage's imports as `python stages/X.py` would, in a repo whose params pin avx2 and 2
    threads: when torch starts to load (or, for a stage that loads it later, after its imports) the variables are
    set."""
    expected = pin_env(NumericsSettings(**PINNED))
    record = pinned_repo / "record.json"
    code = RECORDER.format(env=sorted(expected))
    subprocess.run(
        [sys.executable, "-c", code, str(script), str(record)], cwd=pinned_repo, env=clean_env(), check=True
    )
    ((when, env),) = json.loads(record.read_text()).items()
    assert env == expected, (script.name, when)


@pytest.mark.skipif(not HAS_AVX2, reason="the pin's instruction set needs an x86-64 CPU with AVX2")
def test_a_pinned_stage_runs_avx2_kernels_and_logs_them(pinned_repo):
    """The real thing: stages/stage2.py's imports (torch, transformers, trl) under the pin, on whatever this CPU
    offers; torch reports AVX2 kernels and two threads, and the run log (logs/numerics/stage2.json) says so."""
    code = textwrap.dedent(
        """
        import ast, sys
        script = sys.argv[1]
        sys.argv = [script]
        tree = ast.parse(open(script).read())
        tree.body = tree.body[:-1]
        exec(compile(tree, script, "exec"), {"__name__": "__main__", "__file__": script})
        import torch
        print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "stages/stage2.py")],
        cwd=pinned_repo,
        env=clean_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    assert run.stdout.split() == ["AVX2", "2"]
    profile = json.loads((pinned_repo / "logs/numerics/stage2.json").read_text())
    assert profile["cpu_capability"] == "AVX2" and profile["threads"] == 2
    assert profile["pinned"] == PINNED and profile["env"]["MKL_CBWR"] == "AVX2"
    assert profile["cpu"] and re.fullmatch(r"\d+\.\d+.*", profile["torch"]) and profile["mkl"] and profile["onednn"]
    # numpy's own SIMD kernels too: on an AVX-512 host it would dispatch to X86_V4 / AVX512_* targets unpinned
    assert isinstance(profile["numpy_simd"], list), profile
    assert [t for t in profile["numpy_simd"] if "512" in t or t == "X86_V4"] == [], profile["numpy_simd"]
    assert profile["env"]["OPENBLAS_CORETYPE"] == "Haswell"


def test_unpinned_numerics_set_nothing_and_a_bad_isa_is_a_message():
    assert pin_env(NumericsSettings(isa=None, threads=None)) == {}
    assert pin_env(NumericsSettings(**PINNED), machine="arm64") == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    with pytest.raises(ValueError, match="numerics.isa: 'avx3' is not one of"):
        NumericsSettings(isa="avx3")


def test_each_stage_of_dvc_yaml_gets_its_own_run_log_name():
    assert stage_name(["stages/label.py", "teacher_qwen"]) == "label@teacher_qwen"
    assert stage_name(["stages/stage1.py", "--baseline", "gold_only"]) == "stage1@baseline@gold_only"
    assert stage_name(["stages/eval.py"]) == "eval"
