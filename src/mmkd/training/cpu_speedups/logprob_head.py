"""How a training run turns hidden states into per-token log-probabilities: the ``logprob_head`` setting.

TRL 1.x trainers (SFT and DPO alike) patch the model's forward with a *fused LM head* that calls
``trl.kernels.ChunkedLogProbFunction``: it projects the hidden states through the output layer tile by tile and
never builds the (tokens x vocabulary) logits. For a 7B model's 32k vocabulary on a GPU that saves gigabytes, so it
stays the default (``chunked``). On a CPU, without Triton, the kernel's tiles run as plain torch ops, and for a small
vocabulary they cost several times what building the logits does (``python benchmarks/logprob_head_benchmark.py``;
the figures: docs/performance.md#cpu-speed-ups-for-tiny-models).

``full`` swaps :class:`FullLogitsLogProb` in for the duration of a run (:func:`logprob_head`): the same inputs and
the same five per-token outputs (log-probability of the label, entropy, log of the summed squared probabilities,
mean logit, whether the label is the top-1 word), computed from the full logits with autograd, so the gradients are
those of the same loss (tests compare both with TRL's kernel).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mmkd.training.cpu_speedups import LOGPROB_HEADS

_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class FullLogitsLogProb:
    """A drop-in for TRL's ``ChunkedLogProbFunction``: ``apply`` takes its arguments and returns its five outputs
    (``None`` for the optional ones not asked for), from logits built in one matrix product."""

    @staticmethod
    def apply(
        hidden: torch.Tensor,  # [N, H]
        weight: torch.Tensor,  # [V, H]
        bias: torch.Tensor | None,  # [V]
        targets: torch.Tensor,  # [N], every entry a valid word id (TRL clamps ignored positions to 0)
        temperature: float,
        chunk_size: int,  # the kernel's vocabulary tile; unused here
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = _OUTPUTS,
    ):
        del chunk_size
        bias = None if bias is None else bias.to(hidden.dtype)
        logits = torch.nn.functional.linear(hidden, weight.to(hidden.dtype), bias).float() * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        log_p = torch.log_softmax(logits, dim=-1)
        log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():  # the kernel marks these three non-differentiable
            log_sum_sq_probs = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
            mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
            # argmax takes the first of tied maxima, as the kernel does
            is_top1 = logits.argmax(-1) == targets if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1


@contextlib.contextmanager
def logprob_head(kind: str) -> Iterator[None]:
    """Train with TRL's chunked kernel (``chunked``: nothing changes) or with :class:`FullLogitsLogProb` (``full``),
    restored on exit. TRL's fused forward looks the kernel up in ``trl.trainer.utils`` on every call, so the swap
    covers every trainer built and run inside the block."""
    if kind not in LOGPROB_HEADS:
        raise ValueError(f"logprob_head must be one of {LOGPROB_HEADS}, got {kind!r}")
    if kind == "chunked":
        yield
        return
    from trl.trainer import utils as trl_utils

    name = "_ChunkedLogProbFunction"
    if not hasattr(trl_utils, name):
        import trl

        raise RuntimeError(
            f"logprob_head: full needs trl.trainer.utils.{name} (TRL 1.x's fused LM head), which TRL "
            f"{trl.__version__} does not have; set logprob_head: chunked"
        )
    original = getattr(trl_utils, name)
    setattr(trl_utils, name, FullLogitsLogProb)
    try:
        yield
    finally:
        setattr(trl_utils, name, original)
