"""``cache_collated``: batches built from the per-example cache are TRL's batches, tensor by tensor, on every model
family; SFT trains to the same weights with and without it; misuse is refused with a message."""

from __future__ import annotations

import random
import tempfile

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from mmkd.demo.tiny import ARCHITECTURES
from mmkd.modeling import load_model
from mmkd.training import trainers
from mmkd.training.config import TrainSettings
from mmkd.training.cpu_speedups import CpuSpeedups
from mmkd.training.cpu_speedups.collate import CachedCollator


def _trl_collator(model, processor, rows):
    """The collator TRL's SFTTrainer builds for our dataset (it also sets the tokenizer's pad token)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp, report_to=[], remove_unused_columns=False, completion_only_loss=True, bf16=False
        )
        return SFTTrainer(
            model=model, args=args, train_dataset=trainers.sft_dataset(rows), processing_class=processor
        ).data_collator


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_batches_are_trls_batches(arch, tiny_models, sft_rows):
    model, processor = load_model(tiny_models[arch], device="cpu")
    trl_collate = _trl_collator(model, processor, sft_rows)
    plain, index = trainers.sft_dataset(sft_rows), trainers.row_index_dataset(sft_rows)
    cached = CachedCollator(trl_collate, processor.tokenizer.pad_token_id, examples=trainers.sft_dataset(sft_rows))
    rng = random.Random(0)
    # Three epochs of shuffled batches of uneven size: later batches come from the cache only.
    for _ in range(3):
        order = list(range(len(sft_rows)))
        rng.shuffle(order)
        for start, size in ((0, 5), (5, 1), (6, 8), (14, len(order) - 14)):
            idx = order[start : start + size]
            want = trl_collate([plain[i] for i in idx])
            got = cached(index.__getitems__(idx))  # as the DataLoader fetches a batch
            assert sorted(got) == sorted(want), arch
            for key in want:
                assert got[key].dtype == want[key].dtype, (arch, key)
                assert torch.equal(got[key], want[key]), (arch, key, idx)
    assert len(cached.cache) == len(sft_rows)
    assert {"input_ids", "labels", "pixel_values"} <= set(want)
    assert (want["labels"] == -100).any() and (want["labels"] != -100).any()  # prompt masked, completion kept


def test_sft_trains_to_the_same_weights_with_the_cache(tiny_models, sft_rows, tmp_path):
    """Real SFT on the tiny Qwen2-VL (mm_token_type_ids, flattened patches), over three epochs, so most batches come
    from the cache: the weights are the same as with TRL's collator."""
    weights = {}
    for cached in (False, True):
        settings = TrainSettings(max_steps=16, batch_size=5, learning_rate=1e-2, logging_steps=4)
        torch.manual_seed(0)
        model, processor = load_model(tiny_models["qwen2_vl"], device="cpu")
        model = trainers.train_sft(
            model,
            processor,
            sft_rows,
            settings,
            lora=None,
            seed=0,
            live_dir=tmp_path / str(cached),
            speedups=CpuSpeedups(cache_collated=cached),
        )
        weights[cached] = {n: p.detach().clone() for n, p in model.named_parameters()}
    initial = load_model(tiny_models["qwen2_vl"], device="cpu")[0].state_dict()
    assert any(not torch.equal(weights[True][n], initial[n]) for n in weights[True]), "training changed nothing"
    for name, value in weights[False].items():
        assert torch.equal(weights[True][name], value), name


def test_misuse_is_refused_with_a_message():
    with pytest.raises(ValueError, match="cache_collated must be true or false, got 'yes'"):
        CpuSpeedups(cache_collated="yes")
    with pytest.raises(KeyError, match="needs a '_row' column"):
        CachedCollator(lambda batch: batch, pad_token_id=0, examples=[])([{"prompt": [], "images": []}])
