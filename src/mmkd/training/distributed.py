"""Where a training run is one of several processes (``accelerate launch``, stages/launch.py): the rank helpers.

Every rank runs the same code on its shard of the rows (accelerate's sampler); only rank 0 (``is_main_process``)
writes the adapter and the dvclive logs. A plain ``python`` run is one process, rank 0, and every helper here is then
a no-op or the obvious answer.
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    """Processes in this training run: ``WORLD_SIZE`` as ``accelerate launch`` sets it; 1 in a plain python run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch, or a plain run: the one process that writes the adapter, logs and metrics."""
    return int(os.environ.get("RANK", "0")) == 0


def use_local_gpu() -> None:
    """In a multi-process launch, make ``cuda`` this rank's GPU before the model is loaded (the model is loaded before
    the trainer exists, which would otherwise put every rank's copy on GPU 0)."""
    if world_size() > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def gathered_trainable(model) -> dict[str, torch.Tensor] | None:
    """Full copies of the trainable parameters where a multi-process launch shards them (DeepSpeed ZeRO-3, FSDP2), for
    rank 0 to save; None where every rank holds them whole (a plain run, DDP, ZeRO-2). A collective: every rank calls
    it, in the same order."""
    if world_size() == 1:
        return None
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if any(hasattr(p, "ds_id") for p in trainable.values()):  # ZeRO-3: each rank holds a slice of each parameter
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(trainable.values())):
            return {name: p.detach().cpu().clone() for name, p in trainable.items()}
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in trainable.values()):  # FSDP2 shards each parameter as a DTensor
        full = {name: p.full_tensor() if isinstance(p, DTensor) else p for name, p in trainable.items()}
        return {name: p.detach().cpu() for name, p in full.items()}
    return None


def finish_distributed() -> None:
    """After the last training phase of a multi-process run: forget the ZeRO-3 config transformers keeps in a global,
    so that a model rank 0 loads afterwards (the val calibration) is loaded whole, not partitioned over ranks that
    have moved on."""
    if world_size() == 1:
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def wait_for_all() -> None:
    """A barrier across the ranks of a multi-process run (nothing in a plain one)."""
    if world_size() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
