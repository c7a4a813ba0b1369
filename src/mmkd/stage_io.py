"""What every stage script shares: reading ``params.yaml``, seeding, writing JSON metrics (logging: mmkd.console)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml


def read_params(path: str | Path = "params.yaml") -> dict:
    """The committed, composed params (``dvc repro`` reads this file as it is)."""
    with open(path) as f:
        return yaml.safe_load(f)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (trainers seed themselves again from their own args)."""
    import numpy as np  # here, not at the top: stages that train nothing (label, split) start without torch
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: str | Path, data: dict) -> None:
    """Write metrics as stable, sorted, indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
