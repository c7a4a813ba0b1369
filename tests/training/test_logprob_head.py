"""``logprob_head: full`` computes what TRL's chunked kernel computes (values and gradients), is really the one used
while training when asked for, and gives the same SFT and DPO training as the kernel on a tiny model."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from trl.kernels import ChunkedLogProbFunction
from trl.trainer import utils as trl_utils

from mmkd.training import trainers
from mmkd.training.config import DPOSettings, TrainSettings
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.cpu_speedups.logprob_head import FullLogitsLogProb, logprob_head

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.mark.parametrize(
    "softcap, logit_scale, temperature, with_bias",
    [(None, 1.0, 1.0, False), (None, 1.0, 0.7, True), (5.0, 0.5, 1.3, True)],
)
def test_full_logits_matches_trls_kernel_values_and_gradients(softcap, logit_scale, temperature, with_bias):
    torch.manual_seed(0)
    n, h, v = 37, 16, 50
    base = (torch.randn(n, h), torch.randn(v, h), torch.randn(v) if with_bias else None)
    targets = torch.randint(0, v, (n,))
    targets[::2] = (base[0] @ base[1].t()).argmax(-1)[::2]  # so that is_top1 is true for some
    weights = (torch.randn(n), torch.randn(n))  # a loss that uses log_probs and entropy both

    def run(fn):
        leaves = [None if t is None else t.clone().requires_grad_() for t in base]
        out = fn.apply(*leaves, targets, temperature, 32768, softcap, logit_scale, OUTPUTS)
        (out[0] * weights[0] + out[1] * weights[1]).sum().backward()
        return out, [None if t is None else t.grad for t in leaves]

    (ours, our_grads), (theirs, their_grads) = run(FullLogitsLogProb), run(ChunkedLogProbFunction)
    for name, a, b in zip(OUTPUTS, ours, theirs, strict=True):
        if name == "is_top1":
            assert torch.equal(a, b) and a.any(), name
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    for a, b in zip(our_grads, their_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # float32, two summation orders


def test_is_top1_counts_a_tie_with_an_earlier_word_as_a_miss_like_the_kernel():
    hidden = torch.ones(2, 1)
    weight = torch.tensor([[2.0], [2.0], [1.0]])  # words 0 and 1 tie for the top logit
    targets = torch.tensor([0, 1])
    for fn in (FullLogitsLogProb, ChunkedLogProbFunction):
        is_top1 = fn.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0, ("is_top1",))[4]
        assert is_top1.tolist() == [True, False], fn


def test_only_the_outputs_asked_for_are_computed():
    out = FullLogitsLogProb.apply(torch.randn(3, 4), torch.randn(5, 4), None, torch.tensor([0, 1, 2]), 1.0, 8)[:5]
    assert all(x is not None for x in out)
    some = FullLogitsLogProb.apply(
        torch.randn(3, 4), torch.randn(5, 4), None, torch.tensor([0, 1, 2]), 1.0, 8, None, 1.0, ("log_probs",)
    )
    assert some[0] is not None and all(x is None for x in some[1:])


def test_the_swap_lasts_for_the_block_only_and_bad_values_are_refused():
    original = trl_utils._ChunkedLogProbFunction
    with logprob_head("chunked"):
        assert trl_utils._ChunkedLogProbFunction is original
    with pytest.raises(RuntimeError, match="boom"), logprob_head("full"):
        assert trl_utils._ChunkedLogProbFunction is FullLogitsLogProb
        raise RuntimeError("boom")
    assert trl_utils._ChunkedLogProbFunction is original
    with pytest.raises(ValueError, match=r"logprob_head must be one of \('chunked', 'full'\), got 'fast'"):
        CpuSpeedups(logprob_head="fast")
    with pytest.raises(ValueError, match=r"logprob_head must be one of \('chunked', 'full'\), got 'fast'"):
        with logprob_head("fast"):
            pass


def test_a_trl_without_the_kernel_gets_a_message_that_names_the_fix(monkeypatch):
    monkeypatch.delattr(trl_utils, "_ChunkedLogProbFunction")
    with pytest.raises(RuntimeError, match="set logprob_head: chunked"), logprob_head("full"):
        pass


def _train(kind: str, model_dir, rows: pl.DataFrame, pairs: pl.DataFrame, tmp_path, calls: list[str]):
    """SFT 3 steps then DPO 2 steps of the tiny model, in float32 from one seed; returns the weights and the calls."""
    sft = TrainSettings(max_steps=3, batch_size=4, learning_rate=1e-2, logging_steps=1)
    dpo = DPOSettings(max_steps=2, batch_size=4, learning_rate=1e-2, logging_steps=1)
    speedups = CpuSpeedups(logprob_head=kind)
    torch.manual_seed(0)
    model, processor = trainers.load_model(model_dir, device="cpu")
    model = trainers.train_sft(
        model, processor, rows, sft, lora=None, seed=0, live_dir=tmp_path / kind / "sft", speedups=speedups
    )
    model = trainers.train_dpo(
        model, processor, pairs, dpo, seed=0, live_dir=tmp_path / kind / "dpo", speedups=speedups
    )
    return {n: p.detach().clone() for n, p in model.named_parameters()}, list(calls)


def test_full_head_trains_sft_and_dpo_as_the_kernel_does(tiny_models, stage2_data, tmp_path, monkeypatch):
    """Real TRL SFT and DPO steps on the tiny LLaVA: with ``full`` our function is the one called, and the weights
    after training match the kernel's run to float32 rounding."""
    calls: list[str] = []
    original_apply = FullLogitsLogProb.apply

    def counting_apply(*args, **kwargs):
        calls.append("full")
        return original_apply(*args, **kwargs)

    monkeypatch.setattr(FullLogitsLogProb, "apply", staticmethod(counting_apply))
    rows, pairs = stage2_data
    chunked, chunked_calls = _train("chunked", tiny_models["llava"], rows, pairs, tmp_path, calls)
    assert chunked_calls == []
    full, full_calls = _train("full", tiny_models["llava"], rows, pairs, tmp_path, calls)
    # 3 SFT steps, then 2 DPO steps of a policy and a reference forward each
    assert len(full_calls) >= 3 + 2 * 2, full_calls
    initial = trainers.load_model(tiny_models["llava"], device="cpu")[0].state_dict()
    moved = [n for n in full if not torch.allclose(full[n], initial[n])]
    assert moved, "training changed nothing"
    for name in full:
        torch.testing.assert_close(full[name], chunked[name], atol=2e-4, rtol=1e-3, msg=name)
