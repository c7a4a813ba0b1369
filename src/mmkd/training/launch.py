"""How a training stage starts: the ``launch`` params, read by stages/launch.py.

``num_processes: 1`` with no ``config_file`` (the default, ``conf/launch/single.yaml``) is a plain ``python``
process, exactly as if the stage script were run by hand. Anything else is ``accelerate launch`` with the config
file (``conf/launch/accelerate/``: DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP) and one process per GPU: TRL's trainers then
shard the rows over the processes and average the gradients (docs/paper_scale.md#several-gpus-accelerate-launch).
Mixed precision is not a launch setting: it is each phase's ``bf16`` (transformers lets it override the config's).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LaunchSettings:
    """The ``launch`` params: how ``stage1``, ``stage2`` and the trained baselines start."""

    num_processes: int = 1
    """Training processes, one per GPU; passed to ``accelerate launch --num_processes`` (it overrides the config
    file's). The effective batch is ``batch_size * grad_accum * num_processes``."""
    config_file: str | None = None
    """An accelerate config file, e.g. ``conf/launch/accelerate/zero3.yaml`` (relative to the repository); null with
    ``num_processes: 1``: a plain ``python`` process, no accelerate launcher."""

    def __post_init__(self):
        if isinstance(self.num_processes, bool) or not isinstance(self.num_processes, int) or self.num_processes < 1:
            raise ValueError(f"launch.num_processes must be an integer >= 1, got {self.num_processes!r}")
        if self.num_processes > 1 and self.config_file is None:
            # Without one, accelerate would read this machine's own default config, or start a single process.
            raise ValueError(
                f"launch.num_processes={self.num_processes} needs a launch.config_file, e.g. "
                "conf/launch/accelerate/ddp.yaml (docs/paper_scale.md#several-gpus-accelerate-launch)"
            )

    @property
    def plain(self) -> bool:
        """One process without a config: the stage runs as ``python <script>`` in this process's environment."""
        return self.num_processes == 1 and self.config_file is None


def launch_command(settings: LaunchSettings, script: str, args: list[str], python: str = sys.executable) -> list[str]:
    """The command that runs ``script args`` as ``settings`` say: ``python script args``, or ``accelerate launch``
    (through ``python -m``, so that it is this environment's accelerate whatever ``PATH`` holds)."""
    if settings.plain:
        return [python, script, *args]
    if not Path(settings.config_file).is_file():
        raise ValueError(
            f"launch.config_file: no file {settings.config_file!r} (relative to {Path.cwd()}); the shipped configs "
            "are conf/launch/accelerate/ddp.yaml, zero2.yaml, zero3.yaml and fsdp.yaml"
        )
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(settings.config_file),
        "--num_processes",
        str(settings.num_processes),
        script,
        *args,
    ]
