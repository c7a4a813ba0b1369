"""The GPU step benchmark's CPU path (``--tiny``): the same code as on a GPU (paper profiles, ``run_stage1`` and
``run_stage2``, step meter and FLOP counter) on a tiny LLaVA-NeXT, one timed step per phase. The real-size numbers
need a GPU; this checks that the script runs end to end and that its table is consistent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict[str, dict[str, str]]:
    spec = importlib.util.spec_from_file_location("gpu_step_benchmark", ROOT / "benchmarks" / "gpu_step_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    args = [
        "--tiny",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--batch-size",
        "2",
        "--tmp-dir",
        str(tmp_path_factory.mktemp("b")),
    ]
    with pytest.MonkeyPatch.context() as mp:
        printed: list[str] = []
        mp.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        assert bench.main(args) == 0
    lines = "\n".join(printed).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| phase"))
    names = [c.strip() for c in lines[header].strip("|").split("|")]
    body = [line for line in lines[header + 2 :] if line.startswith("|")]
    rows = [dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in body]
    return {row["phase"]: row for row in rows} | {"_text": {"all": "\n".join(lines)}}


def test_one_row_per_phase_with_positive_numbers(table):
    phases = ["Stage 1 SFT", "Stage 2 SFT", "Stage 2 DPO"]
    assert [k for k in table if not k.startswith("_")] == phases
    for name in phases:
        row = table[name]
        assert int(row["samples/step"]) == 2  # --batch-size 2, grad_accum 1
        seconds, per_second = float(row["s/step"]), float(row["samples/s"])
        assert seconds > 0 and per_second == pytest.approx(2 / seconds, rel=0.01)
        assert float(row["TFLOP/step"]) > 0
        # No GPU here: no MFU (no peak FLOP/s to divide by) and no GPU memory, rather than made-up numbers.
        assert row["MFU"] == "n/a" and row["peak GPU memory (GiB)"] == "n/a"


def test_flop_and_token_counts_are_consistent(table):
    s1, s2, dpo = table["Stage 1 SFT"], table["Stage 2 SFT"], table["Stage 2 DPO"]
    # Both SFT phases train the same architecture and LoRA size on the same batches.
    assert s1["TFLOP/step"] == s2["TFLOP/step"] and s1["LM tokens/step"] == s2["LM tokens/step"]
    # A DPO pair is two sequences, each through the policy and the reference: about 4x an SFT item's tokens.
    assert 3.5 < int(dpo["LM tokens/step"]) / int(s1["LM tokens/step"]) < 4.5
    # ...but the reference pass has no backward, so fewer than 4x the FLOPs.
    assert 2.0 < float(dpo["TFLOP/step"]) / float(s1["TFLOP/step"]) < 4.0
    text = table["_text"]["all"]
    assert "LLaVA-NeXT, tiny config" in text and "gradient_checkpointing: True" in text
