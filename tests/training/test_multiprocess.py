"""Training under ``accelerate launch`` (stages/launch.py, the ``launch`` params): the launcher's commands, the shipped
accelerate configs, and a real two-process run on CPU (gloo) against the plain one-process run.

The two-process run (DDP, ``conf/launch/accelerate/ddp.yaml``) trains Stage 1 and Stage 2 on a tiny model with 4 rows
per process per step; the plain run with 8 rows in one process, so both take the same global batch. DDP averages the
two ranks' gradients, and TRL normalises the SFT loss by the completion tokens of both ranks together (transformers'
``average_tokens_across_devices``), so each step's update is the one-process update up to float32 rounding: the
order of the reduction, and each half-batch padded to its own longest row. Over 3 + 2 + 2 AdamW steps at lr 1e-2
that leaves differences of a few 1e-6 on LoRA weights of size ~0.1 (measured: 4e-7 after Stage 1, 5e-6 after Stage
2); ``WEIGHT_ATOL`` allows 10x that. Data that was not sharded (each rank on the same rows) misses by ~4e-2. LoRA
dropout is 0, since each rank draws its own dropout masks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from dvc_env import Background
from expected_files import ADAPTER_FILES
from safetensors.torch import load_file

from mmkd.cli import compose
from mmkd.training.config import from_params
from mmkd.training.launch import LaunchSettings, launch_command
from mmkd.training.trainers import epoch_top_up

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "stages" / "launch.py"
DRIVER = Path(__file__).with_name("multiprocess_driver.py")
CONFIGS = ROOT / "conf" / "launch" / "accelerate"
GLOBAL_BATCH = 8
WEIGHT_ATOL = 5e-5
LOSS_RTOL = 1e-5


def write_params(cwd: Path, launch: dict) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "params.yaml").write_text(yaml.safe_dump({"launch": launch}))


# --- the launcher ----------------------------------------------------------------------------------------------------


def test_a_plain_launch_is_the_script_itself(tmp_path):
    """The default: no accelerate, and the launcher's process *becomes* ``python script args`` (same pid, same argv),
    so a plain run is byte for byte what running the stage script by hand was."""
    assert launch_command(LaunchSettings(), "stages/stage1.py", ["--baseline", "gold_only"]) == [
        sys.executable,
        "stages/stage1.py",
        "--baseline",
        "gold_only",
    ]
    script = tmp_path / "echo.py"
    script.write_text("import json, os, sys\nprint(json.dumps({'pid': os.getpid(), 'argv': sys.argv}))\n")
    write_params(tmp_path, {"num_processes": 1, "config_file": None})
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), str(script), "--baseline", "gold_only"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out) == {"pid": proc.pid, "argv": [str(script), "--baseline", "gold_only"]}


@pytest.mark.parametrize(
    ("name", "distributed_type", "extra"),
    [
        ("ddp", "MULTI_GPU", {}),
        ("zero2", "DEEPSPEED", {"zero_stage": 2}),
        ("zero3", "DEEPSPEED", {"zero_stage": 3}),
        ("fsdp", "FSDP", {"fsdp_version": 2}),
    ],
)
def test_each_shipped_config_launches_through_accelerate(name, distributed_type, extra, monkeypatch):
    """Each config is one accelerate reads, of the kind its name says; none sets what the stage's own settings say
    (mixed precision, accumulation, clipping), so they cannot disagree."""
    config_file = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(config_file))
    assert config.distributed_type == distributed_type
    assert config.mixed_precision == "no"
    plugin = config.deepspeed_config or config.fsdp_config or {}
    assert extra.items() <= plugin.items()
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(plugin)
    monkeypatch.chdir(ROOT)
    settings = LaunchSettings(num_processes=4, config_file=str(config_file.relative_to(ROOT)))
    assert launch_command(settings, "stages/stage2.py", ["--baseline", "random_budget"]) == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        f"conf/launch/accelerate/{name}.yaml",
        "--num_processes",
        "4",
        "stages/stage2.py",
        "--baseline",
        "random_budget",
    ]


def test_the_launch_profiles_compose_and_name_existing_configs():
    assert compose([], ROOT / "conf")["launch"] == {"num_processes": 1, "config_file": None}
    paper = from_params(LaunchSettings, compose(["launch=paper_zero3"], ROOT / "conf")["launch"])
    assert (paper.num_processes, paper.config_file) == (8, "conf/launch/accelerate/zero3.yaml")
    assert (ROOT / paper.config_file).is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LaunchSettings(num_processes=0), "launch.num_processes must be an integer >= 1"),
        (lambda: LaunchSettings(num_processes=2), "launch.num_processes=2 needs a launch.config_file"),
        (lambda: from_params(LaunchSettings, {"procs": 2}, "launch"), r"launch: unknown setting\(s\) \['procs'\]"),
        (
            lambda: launch_command(LaunchSettings(num_processes=2, config_file="no/such.yaml"), "s.py", []),
            "launch.config_file: no file 'no/such.yaml'",
        ),
    ],
)
def test_bad_launch_settings_are_refused_with_a_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_epoch_top_up_counts_the_rows_accelerate_hands_out_twice():
    assert epoch_top_up(24, 4, 2) == 0  # 3 steps of 2 x 4: every row once
    assert epoch_top_up(20, 4, 2) == 4  # 5 batches of 4 -> 3 steps of 2 x 4: 4 rows from the start again
    assert epoch_top_up(7, 4, 1) == 0  # one process: the last batch is just shorter


# --- two processes against one ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_models, sft_rows, stage2_data, world_dir, tmp_path_factory) -> dict[str, Path]:
    """The driver through stages/launch.py: ``one`` (plain, 8 rows a step) and ``two`` (DDP over 2 CPU processes,
    4 each). Returns each run's working directory."""
    root = tmp_path_factory.mktemp("multiprocess")
    sft_rows.write_parquet(root / "sft.parquet")
    stage2_data[1].write_parquet(root / "pairs.parquet")
    # The port of a fresh copy of ddp.yaml: other runs of this test on the same machine may hold accelerate's 29500.
    ddp = yaml.safe_load((CONFIGS / "ddp.yaml").read_text()) | {"main_process_port": free_port()}
    (root / "ddp.yaml").write_text(yaml.safe_dump(ddp))
    launches = {
        "one": ({"num_processes": 1, "config_file": None}, GLOBAL_BATCH),
        "two": ({"num_processes": 2, "config_file": str(root / "ddp.yaml")}, GLOBAL_BATCH // 2),
    }
    started = {}
    for name, (launch, batch_size) in launches.items():
        cwd = root / name
        write_params(cwd, launch)
        args = [
            *("--base", str(tiny_models["llava"]), "--sft-rows", str(root / "sft.parquet")),
            *("--pairs", str(root / "pairs.parquet"), "--val-items", str(world_dir / "test.parquet")),
            *("--val-gold", str(world_dir / "test.gold.parquet"), "--batch-size", str(batch_size)),
            *("--out", "out", "--trace", str(root / name / "trace"), "--sandbox", str(root / name / "sandbox")),
        ]
        # both at once: independent runs, and each leaves a core idle much of the time (startup, tiny steps)
        env = {**os.environ, "TQDM_DISABLE": "1"}
        started[name] = Background(
            cwd, env, sys.executable, str(LAUNCHER), str(DRIVER), *args, log=root / f"{name}.log"
        )
    for name, run in started.items():
        result = run.result(timeout=600)
        assert result.returncode == 0, f"{name}: {result.stdout[-4000:]}"
    return {name: root / name for name in started}


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def losses(run: Path, phase: str) -> list[float]:
    lines = (run / "out" / "dvclive" / phase / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    return [float(line.split("\t")[-1]) for line in lines[1:]]


@pytest.mark.multiprocess
def test_two_processes_write_the_outputs_once_from_rank_0(runs):
    """The same files as the plain run, each written once: rank 1 wrote nothing (its working directory, where its
    outputs would have gone, stays empty), one loss line per step, one val threshold in each calibrated adapter."""
    one, two = runs["one"], runs["two"]
    assert files(two / "out") == files(one / "out")
    for stage in ("stage1", "stage2"):
        assert {p.name for p in (two / "out" / stage).iterdir()} == ADAPTER_FILES
    assert files(two / "sandbox") == set()
    assert {p.name for p in (two / "trace").iterdir()} == {"rank0.jsonl", "rank1.jsonl"}  # both ranks did train
    assert len(losses(two, "stage1")) == 3 and len(losses(two, "stage2/dpo")) == 2
    threshold = json.loads((two / "out" / "stage1" / "mmkd_adapter.json").read_text())["threshold"]
    assert threshold["val_n"] == 16  # calibrated once, by rank 0, after the adapter was saved
    assert not (one / "sandbox").exists()


@pytest.mark.multiprocess
def test_two_processes_see_each_row_once_per_epoch_and_split_each_global_batch(runs):
    """Stage 1 (24 rows, 3 steps of 8): each step's 8 rows are the plain run's, split 4 + 4 between the ranks, with no
    row twice in the epoch (accelerate's sampler, with the cache_collated speed-up on)."""

    def steps(path: Path) -> list[list[int]]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    plain = steps(runs["one"] / "trace" / "rank0.jsonl")
    rank0, rank1 = (steps(runs["two"] / "trace" / f"rank{r}.jsonl") for r in (0, 1))
    assert len(plain) == len(rank0) == len(rank1) == 3
    for whole, a, b in zip(plain, rank0, rank1, strict=True):
        assert len(a) == len(b) == GLOBAL_BATCH // 2
        assert sorted(a + b) == sorted(whole)
    seen = [row for batch in rank0 + rank1 for row in batch]
    assert sorted(seen) == list(range(pl.read_parquet(runs["one"].parent / "sft.parquet").height))


@pytest.mark.multiprocess
def test_two_processes_train_the_adapter_one_process_trains(runs):
    """Same global batch, same adapter: every saved weight within WEIGHT_ATOL (see the module docstring), the logged
    losses within LOSS_RTOL; the logged args differ only in the batch per process and the multi-process settings."""
    for stage in ("stage1", "stage2"):
        one, two = (load_file(runs[r] / "out" / stage / "adapter_model.safetensors") for r in ("one", "two"))
        assert one.keys() == two.keys()
        diff = max((one[k] - two[k]).abs().max().item() for k in one)
        assert diff < WEIGHT_ATOL, f"{stage}: max abs difference {diff:.2e}"
        assert all(torch.count_nonzero(v) for k, v in two.items() if "lora_B" in k)  # trained, not left at zero
    for phase in ("stage1", "stage2/sft", "stage2/dpo"):
        torch.testing.assert_close(losses(runs["two"], phase), losses(runs["one"], phase), rtol=LOSS_RTOL, atol=0)
    one, two = (yaml.safe_load((runs[r] / "out" / "dvclive" / "stage1" / "params.yaml").read_text()) for r in runs)
    assert {k for k in one | two if one.get(k) != two.get(k)} == {
        "sft",  # mmkd's settings, whose batch_size is per process
        "per_device_train_batch_size",
        "ddp_find_unused_parameters",  # set only for multi-process runs (mmkd.training.trainers._args)
        "use_cpu",
    }
    assert one["use_cpu"] is False
