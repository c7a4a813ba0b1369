"""Optional CPU speed-ups for tiny models, such as the demo's. Real students on GPUs leave them off: the paper
profiles never set ``cpu_speedups``, and the defaults change nothing.

Each one gives the same loss, gradients and batches as the plain TRL path (tests compare them); only time differs.
Why they exist and what they save: docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass

LOGPROB_HEADS = ("chunked", "full")  # see mmkd.training.cpu_speedups.logprob_head


@dataclass
class CpuSpeedups:
    """The ``cpu_speedups`` block of ``stage1``, ``stage2`` and a demo ``bootstrap`` group."""

    logprob_head: str = "chunked"
    """Per-token log-probabilities: ``chunked`` is TRL's fused LM head (never builds the logits; what a large
    vocabulary needs), ``full`` builds the logits, faster on a CPU for a small vocabulary (logprob_head.py)."""

    cache_collated: bool = False
    """SFT only: collate each example once with TRL's collator and pad later batches from the kept tensors
    (collate.py). Keeps every example's pixels in memory, so only for small data. DPO always collates on the fly."""

    def __post_init__(self):
        if self.logprob_head not in LOGPROB_HEADS:
            raise ValueError(f"cpu_speedups.logprob_head must be one of {LOGPROB_HEADS}, got {self.logprob_head!r}")
        if not isinstance(self.cache_collated, bool):
            raise ValueError(f"cpu_speedups.cache_collated must be true or false, got {self.cache_collated!r}")
